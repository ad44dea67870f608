"""Records and the three-split dataset container every dataset class returns."""

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from reid.errors import ReidError


class DatasetError(ReidError):
    """A dataset folder or file that does not follow its expected layout."""


class Record(NamedTuple):
    """One image: its path, identity and 0-based camera id."""

    path: str
    pid: int
    camid: int


class ReidDataset:
    """Train / query / gallery records of one dataset.

    Training pids are relabelled to ``0..num_train_pids-1`` (sorted by original
    pid) so they index classifier logits; query and gallery keep original pids.

    Args:
        name: shown in the statistics table.
        train, query, gallery: records of each split; none may be empty.
    """

    def __init__(
        self, name: str, train: list[Record], query: list[Record], gallery: list[Record]
    ) -> None:
        for split, records in (("train", train), ("query", query), ("gallery", gallery)):
            if not records:
                raise DatasetError(f"{name}: the {split} split holds no images")
        self.name = name
        self.train = relabel(train)
        self.query = query
        self.gallery = gallery

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (classifier size)."""
        return len({r.pid for r in self.train})

    def stats_table(self) -> str:
        """A table of identities / images / cameras per split, for the start-up log."""
        rows = [f"{'subset':<8} | {'ids':>6} | {'images':>7} | {'cameras':>7}", "-" * 37]
        for split in ("train", "query", "gallery"):
            records = getattr(self, split)
            ids, cams = len({r.pid for r in records}), len({r.camid for r in records})
            rows.append(f"{split:<8} | {ids:>6} | {len(records):>7} | {cams:>7}")
        return f"dataset {self.name}\n" + "\n".join(rows)


def relabel(records: Sequence[Record]) -> list[Record]:
    """Maps pids to ``0..N-1`` in sorted order of the original pids."""
    label = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=label[r.pid]) for r in records]


def find_dataset_dir(root: str | Path, usual_names: Sequence[str], marker: str) -> Path:
    """Finds a dataset folder: ``root`` itself or ``root/<usual name>``.

    Args:
        root: the dataset folder, or a parent holding it under one of ``usual_names``.
        usual_names: folder names the dataset is distributed under.
        marker: a file or folder that only the dataset folder holds.

    Returns:
        The first candidate that contains ``marker``.
    """
    root = Path(root)
    candidates = [root, *(root / name for name in usual_names)]
    for candidate in candidates:
        if (candidate / marker).exists():
            return candidate
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist")
    names = ", ".join(usual_names)
    raise DatasetError(f"no {marker} in {root} nor in a subfolder named one of: {names}")
