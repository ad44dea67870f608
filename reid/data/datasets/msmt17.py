"""MSMT17 (Wei et al. 2018): list files naming each image and its identity."""

from pathlib import Path

from reid.data.datasets.base import (
    DatasetError,
    Record,
    ReidDataset,
    find_dataset_dir,
    read_list_file,
)
from reid.data.datasets.registry import DATASETS

# V1 keeps images in train/ and test/; V2 in mask_train_v2/ and mask_test_v2/.
_IMAGE_DIRS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))


def parse_msmt_list(list_file: Path, image_dir: Path) -> list[Record]:
    """Parses lines ``0000/0000_000_01_0303morning_0015_0.jpg 0`` into records.

    The camera is the third ``_`` field of the file name (1-based in the file,
    0-based in the record).

    Raises:
        DatasetError: a missing list file, a malformed line or a listed image that
            does not exist.
    """
    records = []
    for line_no, line in read_list_file(list_file):
        try:
            rel_path, pid_text = line.split()
            pid, camera = int(pid_text), int(Path(rel_path).name.split("_")[2])
        except (ValueError, IndexError):
            raise DatasetError(
                f"{list_file}:{line_no}: expected 'PID/PID_IDX_CAM_..._N.jpg PID', got {line!r}"
            ) from None
        path = image_dir / rel_path
        if not path.is_file():
            raise DatasetError(f"{list_file}:{line_no}: image {path} does not exist")
        records.append(Record(str(path), pid, camera - 1))
    return records


@DATASETS.register("msmt17")
def msmt17(root: str | Path) -> ReidDataset:
    """MSMT17 V1 or V2: 1,041 train identities (list_train + list_val), 3,060 test, 15 cameras."""
    usual = ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17")
    folder = find_dataset_dir(root, usual, "list_query.txt")
    train_dir, test_dir = next(
        ((folder / a, folder / b) for a, b in _IMAGE_DIRS if (folder / a).is_dir()),
        (folder / "train", folder / "test"),
    )
    train = parse_msmt_list(folder / "list_train.txt", train_dir)
    train += parse_msmt_list(folder / "list_val.txt", train_dir)
    query = parse_msmt_list(folder / "list_query.txt", test_dir)
    gallery = parse_msmt_list(folder / "list_gallery.txt", test_dir)
    return ReidDataset("msmt17", train, query, gallery)
