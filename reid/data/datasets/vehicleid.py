"""VehicleID (Liu et al., "Deep Relative Distance Learning: Tell the Difference Between
Similar Vehicles", CVPR 2016): vehicles without camera ids, list files naming each image
and its vehicle."""

import re
from pathlib import Path

from reid.data.datasets.base import (
    DatasetError,
    Record,
    ReidDataset,
    find_dataset_dir,
    read_list_file,
)
from reid.data.datasets.registry import DATASETS
from reid.protocol import NO_CAMERA

USUAL_NAMES = ("VehicleID_V1.0", "VehicleID", "vehicleid")
# The paper's small, medium and large test sets (test_list_<vehicles>.txt).
TEST_SIZES = (800, 1600, 2400)
# "<image id> <vehicle id>": "0000001 2" names image/0000001.jpg, vehicle 2.
_LINE = re.compile(r"\s*(\S+)\s+(\d+)\s*", re.ASCII)


def parse_vehicleid_list(list_file: Path, image_dir: Path) -> list[Record]:
    """Parses lines ``0000001 2`` (an image name without ``.jpg``, its vehicle id) into
    records ``(image_dir/0000001.jpg, 2, NO_CAMERA)``, in the list's order.

    Raises:
        DatasetError: a missing list file, a malformed line or a listed image that does
            not exist, named with the list file and line.
    """
    records = []
    for line_no, line in read_list_file(list_file):
        match = _LINE.fullmatch(line)
        if match is None:
            raise DatasetError(
                f"{list_file}:{line_no}: expected '<image> <vehicle id>', e.g. "
                f"'0000001 2' (vehicle id >= 0), got {line!r}"
            )
        path = image_dir / f"{match[1]}.jpg"
        if not path.is_file():
            raise DatasetError(f"{list_file}:{line_no}: image {path} does not exist")
        records.append(Record(str(path), int(match[2]), NO_CAMERA))
    return records


def split_first_image_gallery(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """A fixed query/gallery split of test records: each vehicle's first image by name
    (the release's 7-digit image ids sort numerically) is its gallery image, the other
    images are queries; both keep the records' order.

    Returns:
        ``(query, gallery)``.
    """
    names = [Path(r.path).name for r in records]
    first: dict[int, int] = {}  # vehicle -> index of its first image
    for index, record in enumerate(records):
        if record.pid not in first or names[index] < names[first[record.pid]]:
            first[record.pid] = index
    chosen = set(first.values())
    query = [r for index, r in enumerate(records) if index not in chosen]
    gallery = [r for index, r in enumerate(records) if index in chosen]
    return query, gallery


@DATASETS.register("vehicleid")
def vehicleid(root: str | Path, test_size: int = 800) -> ReidDataset:
    """VehicleID: 13,164 training vehicles; test sets of 800, 1,600 or 2,400 vehicles.

    The release holds ``image/<image id>.jpg`` and ``train_test_split/`` lists
    (``train_list.txt``, ``test_list_<test_size>.txt``) of lines ``<image id> <vehicle
    id>``. There are no cameras: every camera id is ``NO_CAMERA``. The ``"vehicleid"``
    protocol draws its own random galleries from query and gallery records together;
    the split stored here (:func:`split_first_image_gallery`) is a fixed one for the
    tools that need one (statistics, ranked-list pictures).

    Args:
        root: the VehicleID folder, or a parent holding it under one of
            :data:`USUAL_NAMES`.
        test_size: the test list's number of vehicles, one of :data:`TEST_SIZES`.
    """
    if test_size not in TEST_SIZES:
        choices = ", ".join(map(str, TEST_SIZES))
        raise DatasetError(f"vehicleid: unknown test_size {test_size!r}; choose one of {choices}")
    folder = find_dataset_dir(root, USUAL_NAMES, "train_test_split")
    lists, image_dir = folder / "train_test_split", folder / "image"
    train = parse_vehicleid_list(lists / "train_list.txt", image_dir)
    test = parse_vehicleid_list(lists / f"test_list_{test_size}.txt", image_dir)
    query, gallery = split_first_image_gallery(test)
    return ReidDataset(f"vehicleid ({test_size})", train, query, gallery, protocol="vehicleid")
