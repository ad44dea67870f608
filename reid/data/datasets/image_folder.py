"""One folder per identity: ``train/<id>/``, ``query/<id>/`` and ``gallery/<id>/`` of
images, the layout most tutorials produce (e.g. the ``pytorch/`` folder that the
Person_reID_baseline_pytorch ``prepare.py`` script writes from Market-1501)."""

import re
from collections.abc import Iterable
from pathlib import Path

from reid.data.datasets.base import DatasetError, Record, ReidDataset, find_dataset_dir
from reid.data.datasets.market import IMAGE_SUFFIXES, parse_market_name
from reid.data.datasets.registry import DATASETS
from reid.protocol import JUNK_PID, NO_CAMERA

USUAL_NAMES = ("pytorch",)
# Identity folder names read as pids: non-negative integers ("0002", "0") and junk ("-1").
_PID_NAME = re.compile(r"-1|\d+", re.ASCII)


def read_identity_folders(folder: Path) -> dict[str, list[Path]]:
    """The images of each identity folder of one split folder.

    The split folder's subfolders are identity folders; the images in them (the suffixes
    of :data:`IMAGE_SUFFIXES`) are read, other files ignored. Entries whose name starts
    with ``.`` (``.DS_Store``, ``.ipynb_checkpoints``) are ignored at both levels, and
    so are files that are not images directly in the split folder. An identity folder
    without images is left out.

    Returns:
        ``{identity folder name: its image paths sorted by name}``, sorted by name.

    Raises:
        DatasetError: a missing split folder, an image directly in the split folder, or
            a folder inside an identity folder.
    """
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder}")
    identities = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                raise DatasetError(
                    f"image {entry} is not in an identity folder: expected "
                    f"{folder}/<identity>/{entry.name}"
                )
            continue
        images = []
        for path in sorted(entry.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                raise DatasetError(
                    f"unexpected folder {path}: expected images directly in identity folder {entry}"
                )
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
        if images:
            identities[entry.name] = images
    return identities


def identity_ids(names: Iterable[str]) -> dict[str, int]:
    """Identity folder name -> pid.

    When every name is a non-negative integer or ``-1``, the pid is that integer
    (``"0002"`` -> 2; ``"0"``, distractors, and ``"-1"``, junk, as in Market-1501).
    Otherwise the names are numbered ``1..N`` in sorted order.
    """
    names = sorted(set(names))
    if all(_PID_NAME.fullmatch(name) for name in names):
        return {name: int(name) for name in names}
    return {name: pid for pid, name in enumerate(names, start=1)}


def folder_camera(path: Path) -> int:
    """The 0-based camera id of a Market-style file name (``0002_c1s1_000451_03.jpg`` ->
    0, see :func:`parse_market_name`), or ``NO_CAMERA`` for any other name."""
    labels = parse_market_name(path.name)
    return NO_CAMERA if labels is None else labels[1]


def _records(splits: list[dict[str, list[Path]]]) -> list[list[Record]]:
    """Records of splits whose identity folder names share one name -> pid mapping;
    junk (pid -1) is dropped."""
    pids = identity_ids(name for split in splits for name in split)
    return [
        [
            Record(str(path), pids[name], folder_camera(path))
            for name, paths in split.items()
            if pids[name] != JUNK_PID
            for path in paths
        ]
        for split in splits
    ]


@DATASETS.register("image_folder")
def image_folder(root: str | Path) -> ReidDataset:
    """Identity folders: ``train/<id>/*.jpg``, ``query/<id>/*.jpg``, ``gallery/<id>/*.jpg``.

    Identities are the folder names (:func:`identity_ids`): integers when every query
    and gallery folder name is one (junk ``-1`` dropped, distractors ``0`` kept), else
    names numbered over query and gallery together, so that a name is one identity in
    both; training names are numbered on their own. Camera ids come from Market-style
    file names (:func:`folder_camera`); without them the dataset is evaluated under the
    ``"no_cameras"`` protocol, and a mix in query and gallery is an error.

    Args:
        root: the folder holding ``train/``, ``query/`` and ``gallery/``, or a parent
            holding it under one of :data:`USUAL_NAMES`.
    """
    folder = find_dataset_dir(root, USUAL_NAMES, "gallery")
    (train,) = _records([read_identity_folders(folder / "train")])
    query, gallery = _records(
        [read_identity_folders(folder / "query"), read_identity_folders(folder / "gallery")]
    )
    return ReidDataset("image_folder", train, query, gallery)
