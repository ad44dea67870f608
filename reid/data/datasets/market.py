"""Market-1501 folder layout: Market-1501, DukeMTMC-reID and any folder in that layout."""

import re
from pathlib import Path

from reid.data.datasets.base import DatasetError, Record, ReidDataset, find_dataset_dir
from reid.data.datasets.registry import DATASETS
from reid.data.layout import MARKET_SPLIT_DIRS as SPLIT_DIRS
from reid.protocol import JUNK_PID, NO_CAMERA

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# Identity then camera: "0002_c1s1_000451_03.jpg" (Market), "0001_c2_f0046182.jpg" (Duke);
# or an identity without a camera, followed by "_" or ".": "0002_000451.jpg", "0002.jpg".
_NAME = re.compile(r"^(-?\d+)(?:_c(\d+)|(?=[_.]))")


def parse_market_name(name: str) -> tuple[int, int] | None:
    """The pid and 0-based camera id of a Market-style image name.

    ``PID_cCAMERA...`` names carry a camera (``0002_c1s1_000451_03.jpg`` -> ``(2, 0)``);
    a pid followed by ``_`` or ``.`` without ``c<digits>`` right after the first ``_``
    has none (``0002_000451.jpg``, ``0002.jpg`` -> ``(2, NO_CAMERA)``).

    Returns:
        ``(pid, camid)``, or None for any other name, a pid below -1 or camera 0.
    """
    match = _NAME.match(name)
    if match is None or int(match[1]) < JUNK_PID:
        return None
    if match[2] is None:
        return int(match[1]), NO_CAMERA
    camera = int(match[2])
    return (int(match[1]), camera - 1) if camera >= 1 else None


def parse_market_dir(folder: Path) -> list[Record]:
    """Parses one split folder of Market-style image names into records.

    Names follow :func:`parse_market_name`. Junk images (pid -1) are dropped;
    distractors (pid 0) are kept; cameras become 0-based, and names without one get
    ``NO_CAMERA``; files that are not images (``Thumbs.db``, notes) are ignored.

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
        labels = parse_market_name(path.name)
        if labels is None:
            raise DatasetError(
                f"cannot parse image name {path}: expected PID_cCAMERA..., e.g. "
                "0002_c1s1_000451_03.jpg, or PID_... or PID.jpg without a camera, e.g. "
                "0002_000451.jpg (pid >= -1, camera >= 1)"
            )
        if labels[0] != JUNK_PID:
            records.append(Record(str(path), *labels))
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
    """Any folder in Market-1501 layout (bounding_box_train/, query/, bounding_box_test/).

    Evaluated under the ``"market"`` protocol when every query and gallery name has a
    camera, ``"no_cameras"`` when none has (:class:`ReidDataset` raises on a mix)."""
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
