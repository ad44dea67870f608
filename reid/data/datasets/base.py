"""Records and the three-split dataset container every dataset class returns."""

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from reid.errors import ReidError
from reid.protocol import NO_CAMERA


class DatasetError(ReidError):
    """A dataset folder or file that does not follow its expected layout."""


class Record(NamedTuple):
    """One image: its path, identity and 0-based camera id (``NO_CAMERA``, -1, in a
    dataset without camera ids)."""

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
        protocol: the name in :data:`reid.protocol.PROTOCOLS` of how query and gallery
            are evaluated. By default ``"market"`` when every query and gallery record
            has a camera id, ``"no_cameras"`` when none has (``NO_CAMERA``).

    Raises:
        DatasetError: an empty split, or query and gallery records of which some have
            camera ids and some do not (the first without one is named).
    """

    def __init__(
        self,
        name: str,
        train: list[Record],
        query: list[Record],
        gallery: list[Record],
        protocol: str | None = None,
    ) -> None:
        for split, records in (("train", train), ("query", query), ("gallery", gallery)):
            if not records:
                raise DatasetError(f"{name}: the {split} split holds no images")
        self.name = name
        self.train = relabel(train)
        self.query = query
        self.gallery = gallery
        self.protocol = protocol or _camera_protocol(name, query + gallery)

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (classifier size)."""
        return len({r.pid for r in self.train})

    def stats_table(self) -> str:
        """A table of identities / images / cameras per split, for the start-up log."""
        rows = [f"{'subset':<8} | {'ids':>6} | {'images':>7} | {'cameras':>7}", "-" * 37]
        for split in ("train", "query", "gallery"):
            records = getattr(self, split)
            ids = len({r.pid for r in records})
            cams = len({r.camid for r in records} - {NO_CAMERA}) or "-"
            rows.append(f"{split:<8} | {ids:>6} | {len(records):>7} | {cams:>7}")
        return f"dataset {self.name} (protocol {self.protocol})\n" + "\n".join(rows)


def _camera_protocol(name: str, records: list[Record]) -> str:
    """``"market"`` when every record has a camera id, ``"no_cameras"`` when none has."""
    without = [r for r in records if r.camid == NO_CAMERA]
    if not without:
        return "market"
    if len(without) == len(records):
        return "no_cameras"
    raise DatasetError(
        f"{name}: {without[0].path} has no camera id but other query or gallery images "
        "have one; expected camera ids on every query and gallery image or on none"
    )


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


def read_list_file(list_file: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a dataset's list file, with their 1-based line numbers.

    Raises:
        DatasetError: a missing file, or one that cannot be read as UTF-8 text.
    """
    if not list_file.is_file():
        raise DatasetError(f"missing list file {list_file}")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read list file {list_file}: {err}") from None
    return [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
