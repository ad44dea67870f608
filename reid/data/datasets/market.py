"""Market-1501 folder layout: Market-1501, DukeMTMC-reID and any folder in that layout."""

import re
from pathlib import Path

from reid.data.datasets.base import DatasetError, Record, ReidDataset, find_dataset_dir
from reid.data.datasets.registry import DATASETS
from reid.data.layout import MARKET_SPLIT_DIRS as SPLIT_DIRS
from reid.protocol import JUNK_PID

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# Identity then camera: "0002_c1s1_000451_03.jpg" (Market), "0001_c2_f0046182.jpg" (Duke).
_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def parse_market_dir(folder: Path) -> list[Record]:
    """Parses one split folder of Market-style image names into records.

    Junk images (pid -1) are dropped; distractors (pid 0) are kept; cameras become
    0-based; files that are not images (``Thumbs.db``, notes) are ignored.

    Args:
        folder: e.g. ``Market-1501-v15.09.15/bounding_box_test``.

    Returns:
        Records sorted by file name.

    Raises:
        DatasetError: a missing folder, or an image whose name does not parse.
    """
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder}")
    records = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        match = _NAME.match(path.name)
        if match is None or int(match[2]) < 1 or int(match[1]) < JUNK_PID:
            raise DatasetError(
                f"cannot parse image name {path}: expected PID_cCAMERA..., "
                "e.g. 0002_c1s1_000451_03.jpg (pid >= -1, camera >= 1)"
            )
        pid, camera = int(match[1]), int(match[2])
        if pid != JUNK_PID:
            records.append(Record(str(path), pid, camera - 1))
    return records


def read_market_layout(
    name: str, folder: Path, split_dirs: dict[str, str] = SPLIT_DIRS
) -> ReidDataset:
    """Reads the three split folders of Market-style names under ``folder``.

    Args:
        name: the dataset's name, for the statistics table.
        folder: the dataset folder.
        split_dirs: ``{"train": ..., "query": ..., "gallery": ...}`` folder names;
            Market-1501's by default.
    """
    splits = {split: parse_market_dir(folder / sub) for split, sub in split_dirs.items()}
    return ReidDataset(name, **splits)


@DATASETS.register("market_folder")
def market_folder(root: str | Path) -> ReidDataset:
    """Any folder in Market-1501 layout (bounding_box_train/, query/, bounding_box_test/)."""
    return read_market_layout("market_folder", find_dataset_dir(root, (), SPLIT_DIRS["train"]))


@DATASETS.register("market1501")
def market1501(root: str | Path) -> ReidDataset:
    """Market-1501 (Zheng et al. 2015): 751 train / 750 test identities, 6 cameras."""
    usual = (
        "Market-1501-v15.09.15",
        "Market-1501",
        "market1501",
        "market1501/Market-1501-v15.09.15",
    )
    return read_market_layout("market1501", find_dataset_dir(root, usual, SPLIT_DIRS["train"]))


@DATASETS.register("dukemtmc")
def dukemtmc(root: str | Path) -> ReidDataset:
    """DukeMTMC-reID (Zheng et al. 2017): 702 train / 1110 gallery identities, 8 cameras."""
    usual = ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmc", "dukemtmcreid")
    return read_market_layout("dukemtmc", find_dataset_dir(root, usual, SPLIT_DIRS["train"]))
