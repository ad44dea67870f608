"""MOTChallenge tracking ground truth turned into a Market-1501-style ReID folder.

Multi-object tracking sets (MOT17, MOT20, DanceTrack, SportsMOT) label every person in
every frame with a track id. Cropping those boxes gives identities seen many times,
which is what a ReID model trains on. This module reads the sequences, picks the
crops, splits the identities and writes the folder; ``tools/prepare_mot.py`` is its
command line.

A sequence is a folder holding ``seqinfo.ini`` (``[Sequence]`` with ``name``,
``imDir``, ``frameRate``, ``imWidth``, ``imHeight``, ``imExt``), the frames in
``imDir`` (``img1/000001.jpg``; any zero-padding) and ``gt/gt.txt``: CSV lines
``frame,id,left,top,width,height,flag,class,visibility``. Box coordinates are pixel
offsets from the frame's top-left corner. Sequences without ``gt/gt.txt`` (test splits)
are skipped. MOT17 ships each sequence once per public detector (``MOT17-02-DPM``,
``-FRCNN``, ``-SDP``) with the same frames and ground truth: one copy is kept, so a
person does not become three identities.

Kept crops: boxes with ``flag != 0``, ``class == 1`` (pedestrian) and ``visibility``
at least a threshold (DanceTrack and SportsMOT write ``1,1,1``, so every box passes),
on every N-th frame (``(frame - 1) % N == 0``), clipped to the frame and at least a
minimum height and width after clipping.

Identities: each ``(sequence, track id)`` is one pid, numbered from 1 in sorted order.
Identities are split into train and test within each sequence (or whole sequences
are held out, ``split_by="sequence"``), with a random stream of its own per sequence:
adding a dataset under the root does not reshuffle the others.

Time segments as cameras: each sequence is cut into segments of ``segment_seconds``
(``segment = (frame - 1) // round(segment_seconds * frameRate) + 1``) and the segment
is written as the camera (``c<segment>``). A test identity seen in two or more segments
gets one query segment (chosen with the seed) and one query image from it: the crop
farthest in time from its other segments, so that no gallery image is a near copy of
it across a segment boundary. All its crops from the other segments go to the gallery;
its other crops from the query segment are left out (they would be near-duplicate
matches). A test identity seen in one segment goes wholly to the gallery, as a wrong
match for every other query. So no identity has a query image and a gallery image from
the same segment; and since the Market protocol ignores gallery images of the query's
own pid and camera, the segment-as-camera id would exclude such pairs at evaluation
even if they were there. Segment numbers repeat across sequences, which is harmless
under that protocol because pids never do.

Example:
    >>> plan = plan_mot_dataset("datasets/MOT17/train")  # doctest: +SKIP
    >>> write_market_folder(plan, "datasets/mot17_reid")  # doctest: +SKIP
"""

import configparser
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from reid.data.datasets.base import DatasetError
from reid.data.layout import MARKET_SPLIT_DIRS
from reid.errors import InputError, ReidError

__all__ = [
    "MANIFEST",
    "Crop",
    "GtRow",
    "MotPlan",
    "PlannedImage",
    "SequenceInfo",
    "check_output_dir",
    "dedupe_detector_copies",
    "find_sequence_dirs",
    "frame_files",
    "plan_mot_dataset",
    "read_gt",
    "read_seqinfo",
    "segment_of",
    "select_crops",
    "sequence_key",
    "split_test_identity",
    "summary_table",
    "write_market_folder",
]

logger = logging.getLogger(__name__)

MANIFEST = "prepare_mot.json"  # also what lets ``overwrite`` replace a folder
JPEG_QUALITY = 95
PEDESTRIAN_CLASS = 1
# MOT17's public detectors: each sequence folder exists once per detector.
DETECTOR_SUFFIX = re.compile(r"-(DPM|FRCNN|SDP)$")
GT_COLUMNS = "frame,id,left,top,width,height,flag,class,visibility"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_TRAIN, _QUERY, _GALLERY = "train", "query", "gallery"


@dataclass(frozen=True)
class SequenceInfo:
    """One sequence's ``seqinfo.ini``.

    Attributes:
        name: ``[Sequence] name`` (the folder's name when missing).
        folder: the sequence folder.
        image_dir: the frames' folder (``imDir``, default ``img1``).
        image_ext: the frames' suffix with its dot (``imExt``, default ``.jpg``).
        frame_rate: frames per second.
        width, height: frame size in pixels.
    """

    name: str
    folder: Path
    image_dir: Path
    image_ext: str
    frame_rate: float
    width: int
    height: int

    @property
    def gt_path(self) -> Path:
        return self.folder / "gt" / "gt.txt"


class GtRow(NamedTuple):
    """One ground-truth box; ``line`` is its 1-based line in ``gt.txt``."""

    line: int
    frame: int
    track_id: int
    left: float
    top: float
    width: float
    height: float
    flag: int
    class_id: int
    visibility: float


class Crop(NamedTuple):
    """A box kept for cropping: ``box`` is ``(left, top, right, bottom)`` in pixels,
    clipped to the frame, right and bottom exclusive."""

    track_id: int
    frame: int
    box: tuple[int, int, int, int]
    line: int


class PlannedImage(NamedTuple):
    """One image to write: its split (``train``, ``query``, ``gallery``), pid, segment
    (the camera) and the crop of ``sequence`` it comes from."""

    split: str
    pid: int
    segment: int
    sequence: str
    crop: Crop

    @property
    def file_name(self) -> str:
        """``{pid:05d}_c{segment}_{sequence}_{frame:06d}.jpg``, Market-parsable."""
        return f"{self.pid:05d}_c{self.segment}_{self.sequence}_{self.crop.frame:06d}.jpg"


@dataclass
class SequenceCounts:
    """What one sequence gave: identities per split and images per folder."""

    segments: int = 0
    train_ids: int = 0
    test_ids: int = 0
    train_images: int = 0
    query_images: int = 0
    gallery_images: int = 0
    left_out: int = 0


@dataclass
class MotPlan:
    """Everything :func:`write_market_folder` writes, decided before any pixel is read.

    Attributes:
        root: the folder searched for sequences.
        sequences: kept sequences by key (:func:`sequence_key`), sorted.
        images: the images to write.
        counts: per sequence key.
        without_gt: sequence folders skipped for lack of ``gt/gt.txt``.
        copies: ``(skipped folder, kept folder)`` of duplicate sequences.
        options: the selection and split arguments, for the manifest.
    """

    root: Path
    sequences: dict[str, SequenceInfo]
    images: list[PlannedImage]
    counts: dict[str, SequenceCounts]
    without_gt: list[Path] = field(default_factory=list)
    copies: list[tuple[Path, Path]] = field(default_factory=list)
    options: dict = field(default_factory=dict)


def find_sequence_dirs(root: str | Path) -> list[Path]:
    """Finds every folder holding a ``seqinfo.ini`` under ``root``, at any depth.

    ``root`` may be one sequence, a split (``MOT17/train``), a dataset or a parent of
    several. A sequence's own subfolders are not searched; hidden folders are skipped;
    symbolic links are followed once.

    Returns:
        Sequence folders, sorted.

    Raises:
        DatasetError: ``root`` is missing, or holds no sequence.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"MOT root {root} does not exist or is not a folder")
    found, seen = [], set()
    for folder, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or "seqinfo.ini" in files:  # a link loop, or a sequence's own folders
            if real not in seen:
                found.append(Path(folder))
            seen.add(real)
            subdirs.clear()
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    if not found:
        raise DatasetError(
            f"no MOTChallenge sequence under {root}: expected folders holding seqinfo.ini, "
            "img1/ and gt/gt.txt at any depth (e.g. MOT17/train/MOT17-02-FRCNN)"
        )
    return sorted(found)


def read_seqinfo(folder: str | Path) -> SequenceInfo:
    """Reads ``folder/seqinfo.ini``.

    Raises:
        DatasetError: the file is unreadable, or a required key (``frameRate``,
            ``imWidth``, ``imHeight``) is missing or not a positive number; the message
            names the file and the key.
    """
    folder = Path(folder)
    path = folder / "seqinfo.ini"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8-sig") as file:
            parser.read_file(file)
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        reason = " ".join(reason.split())
        raise DatasetError(f"cannot read {path}: {reason}") from None
    if not parser.has_section("Sequence"):
        raise DatasetError(f"{path}: no [Sequence] section; expected MOTChallenge's seqinfo.ini")
    section = parser["Sequence"]

    def number(key: str) -> float:
        text = section.get(key)
        if text is None:
            raise DatasetError(f"{path}: [Sequence] has no {key}")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise DatasetError(f"{path}: {key} = {text!r}; expected a positive number")
        return value

    ext = section.get("imExt", ".jpg").strip()
    return SequenceInfo(
        name=section.get("name", folder.name).strip() or folder.name,
        folder=folder,
        image_dir=folder / section.get("imDir", "img1").strip(),
        image_ext=ext if ext.startswith(".") else f".{ext}",
        frame_rate=number("frameRate"),
        width=round(number("imWidth")),
        height=round(number("imHeight")),
    )


def read_gt(path: str | Path) -> Iterator[GtRow]:
    """Reads ``gt.txt`` lazily, one row per box (blank lines skipped).

    Raises:
        DatasetError: an unreadable file, or a line without the nine numbers
            ``frame,id,left,top,width,height,flag,class,visibility`` (``FILE:LINE``).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            for number, text in enumerate(file, start=1):
                if text.strip():
                    yield _parse_gt_line(text, path, number)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise DatasetError(f"cannot read {path}: {reason}") from None


def _parse_gt_line(text: str, path: Path, number: int) -> GtRow:
    fields = text.split(",")  # float() itself allows the spaces around a number
    try:
        if len(fields) < 9:
            raise ValueError
        frame, track_id, left, top, width, height, flag, class_id, visibility = map(
            float, fields[:9]
        )
        # A nan or an infinity anywhere makes the sum non-finite.
        finite = math.isfinite(frame + track_id + left + top + width + height + visibility)
        whole = frame.is_integer() and track_id.is_integer() and flag.is_integer()
        if not (finite and whole and class_id.is_integer()):
            raise ValueError
    except ValueError:
        shown = text.strip()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise DatasetError(
            f"{path}:{number}: expected {GT_COLUMNS} (9 numbers; frame, id, flag and class "
            f"whole), got {shown!r}"
        ) from None
    if frame < 1:
        raise DatasetError(f"{path}:{number}: frame {int(frame)}; frames are numbered from 1")
    return GtRow(
        number, int(frame), int(track_id), left, top, width, height, int(flag), int(class_id),
        visibility,
    )  # fmt: skip


def sequence_key(name: str) -> str:
    """The sequence's name without a MOT17 detector suffix, made safe for file names:
    ``MOT17-02-FRCNN`` -> ``MOT17-02``."""
    return _SAFE_NAME.sub("-", DETECTOR_SUFFIX.sub("", name)).strip("-") or "sequence"


def dedupe_detector_copies(
    sequences: Iterable[SequenceInfo],
) -> tuple[dict[str, SequenceInfo], list[tuple[Path, Path]]]:
    """Keeps one sequence per :func:`sequence_key`: the first in sorted folder order.

    MOT17's detector copies share frames and ground truth; a copy whose ``gt.txt``
    differs from the kept one's is still skipped, with a warning.

    Returns:
        ``({key: kept sequence}, [(skipped folder, kept folder)])``.
    """
    kept: dict[str, SequenceInfo] = {}
    copies = []
    for info in sorted(sequences, key=lambda s: (sequence_key(s.name), str(s.folder))):
        key = sequence_key(info.name)
        if key not in kept:
            kept[key] = info
            continue
        copies.append((info.folder, kept[key].folder))
        if _file_digest(info.gt_path) != _file_digest(kept[key].gt_path):
            logger.warning(
                "%s and %s are copies of sequence %s but their gt/gt.txt differ; kept %s",
                kept[key].folder, info.folder, key, kept[key].folder,
            )  # fmt: skip
    return kept, copies


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None


def select_crops(
    info: SequenceInfo,
    rows: Iterable[GtRow],
    *,
    every: int = 5,
    min_visibility: float = 0.5,
    min_height: int = 32,
    min_width: int = 12,
) -> list[Crop]:
    """The boxes worth cropping, clipped to the frame.

    Kept: ``flag != 0``, ``class_id == 1``, ``visibility >= min_visibility``, frames with
    ``(frame - 1) % every == 0``, and a clipped box of at least ``min_height`` x
    ``min_width`` pixels. A second box of one track in one frame is dropped (warned).

    Args:
        info: the sequence (its frame size clips the boxes).
        rows: its ground truth (:func:`read_gt`).

    Returns:
        Crops in ground-truth order.
    """
    crops, seen, repeated = [], set(), 0
    for row in rows:
        if row.flag == 0 or row.class_id != PEDESTRIAN_CLASS or row.visibility < min_visibility:
            continue
        if (row.frame - 1) % every:
            continue
        left, top = max(0, math.floor(row.left)), max(0, math.floor(row.top))
        right = min(info.width, math.ceil(row.left + row.width))
        bottom = min(info.height, math.ceil(row.top + row.height))
        if bottom - top < min_height or right - left < min_width:
            continue
        if (row.frame, row.track_id) in seen:
            repeated += 1
            continue
        seen.add((row.frame, row.track_id))
        crops.append(Crop(row.track_id, row.frame, (left, top, right, bottom), row.line))
    if repeated:
        logger.warning(
            "%s: %d repeated boxes (a track twice in one frame) dropped", info.gt_path, repeated
        )
    return crops


def segment_of(frame: int, *, frame_rate: float, segment_seconds: float) -> int:
    """The 1-based time segment of a 1-based frame: ``(frame - 1) // L + 1`` with
    ``L = max(1, round(segment_seconds * frame_rate))`` frames per segment."""
    return (frame - 1) // max(1, round(segment_seconds * frame_rate)) + 1


def frame_files(info: SequenceInfo) -> dict[int, Path]:
    """The sequence's frames by number: ``img1/000001.jpg`` or ``img1/00000001.jpg``.

    Raises:
        DatasetError: the image folder is missing.
    """
    try:
        names = os.listdir(info.image_dir)
    except OSError as err:
        raise DatasetError(
            f"cannot list the frames of {info.folder}: {info.image_dir}: "
            f"{err.strerror or err} (seqinfo.ini imDir)"
        ) from None
    frames = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() == info.image_ext.lower() and stem.isdigit():
            frames[int(stem)] = info.image_dir / name
    return frames


def split_test_identity(
    crops: list[tuple[int, Crop]], rng: np.random.Generator
) -> tuple[tuple[int, Crop] | None, list[tuple[int, Crop]], int]:
    """Query and gallery images of one test identity.

    Args:
        crops: ``(segment, crop)`` of the identity, in frame order.
        rng: picks the query segment.

    Returns:
        ``(query or None, gallery, left out)``: with one segment, no query and every
        crop in the gallery; otherwise the query segment's crop farthest in frames
        from the other segments' crops as the query, the other segments' crops as the
        gallery, and the number of the query segment's crops left out.
    """
    segments = sorted({segment for segment, _ in crops})
    if len(segments) < 2:
        return None, list(crops), 0
    chosen = segments[int(rng.integers(len(segments)))]
    own = [item for item in crops if item[0] == chosen]
    gallery = [item for item in crops if item[0] != chosen]
    others = np.array([crop.frame for _, crop in gallery])
    # max() keeps the first of equals: the earliest frame.
    query = max(own, key=lambda item: int(np.abs(others - item[1].frame).min()))
    return query, gallery, len(own) - 1


def _stream(seed: int, *keys: str | int) -> np.random.Generator:
    """A random stream of its own per ``(seed, keys)``, whatever else is being split."""
    words = [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng([seed, *words])


def _check_options(
    every: int, min_visibility: float, min_height: int, min_width: int,
    segment_seconds: float, test_fraction: float, split_by: str, seed: int,
) -> None:  # fmt: skip
    checks = [
        (every >= 1, f"every={every} (expected an integer >= 1)"),
        (0 <= min_visibility <= 1, f"min_visibility={min_visibility} (expected 0..1)"),
        (min_height >= 1, f"min_height={min_height} (expected >= 1)"),
        (min_width >= 1, f"min_width={min_width} (expected >= 1)"),
        (segment_seconds > 0, f"segment_seconds={segment_seconds} (expected > 0)"),
        (0 < test_fraction < 1, f"test_fraction={test_fraction} (expected > 0 and < 1)"),
        (
            split_by in ("identity", "sequence"),
            f"split_by={split_by!r} (expected 'identity' or 'sequence')",
        ),
        (seed >= 0, f"seed={seed} (expected >= 0)"),
    ]
    if bad := [message for ok, message in checks if not ok]:
        raise InputError("prepare_mot: bad " + "; ".join(bad))


def plan_mot_dataset(
    root: str | Path,
    *,
    every: int = 5,
    min_visibility: float = 0.5,
    min_height: int = 32,
    min_width: int = 12,
    segment_seconds: float = 10.0,
    test_fraction: float = 0.5,
    split_by: str = "identity",
    seed: int = 0,
) -> MotPlan:
    """Reads the sequences under ``root`` and decides every image to write.

    Args:
        root: searched at any depth (:func:`find_sequence_dirs`).
        every, min_visibility, min_height, min_width: :func:`select_crops`.
        segment_seconds: length of a time segment, the camera id.
        test_fraction: the share of identities (or, with ``split_by="sequence"``, of
            sequences) that test, rounded half up per sequence (per root).
        split_by: ``"identity"`` (default) or ``"sequence"`` (held-out scenes).
        seed: the split and the query segments depend only on it.

    Returns:
        The plan; nothing is written.

    Raises:
        ReidError: bad arguments, no sequence with ground truth, unreadable or
            malformed files, missing frames, or a split that leaves train or query empty.
    """
    _check_options(
        every, min_visibility, min_height, min_width, segment_seconds, test_fraction,
        split_by, seed,
    )  # fmt: skip
    root = Path(root)
    infos, without_gt = [], []
    for folder in find_sequence_dirs(root):
        if (folder / "gt" / "gt.txt").is_file():
            infos.append(read_seqinfo(folder))
        else:
            without_gt.append(folder)
    if not infos:
        raise DatasetError(
            f"no sequence under {root} has gt/gt.txt (found {len(without_gt)} without, "
            f"e.g. {without_gt[0]}): test splits have no ground truth; point it at a train "
            "split, e.g. MOT17/train"
        )
    sequences, copies = dedupe_detector_copies(infos)
    sequences = dict(sorted(sequences.items()))

    # (sequence key, track id) -> [(segment, crop)], in sorted order: the pid order.
    tracks: dict[tuple[str, int], list[tuple[int, Crop]]] = defaultdict(list)
    counts = {key: SequenceCounts() for key in sequences}
    for key, info in tqdm(sequences.items(), desc="reading ground truth", unit="sequence"):
        frames = frame_files(info)
        if frames:
            counts[key].segments = segment_of(
                max(frames), frame_rate=info.frame_rate, segment_seconds=segment_seconds
            )
        for crop in select_crops(
            info, read_gt(info.gt_path), every=every, min_visibility=min_visibility,
            min_height=min_height, min_width=min_width,
        ):  # fmt: skip
            if crop.frame not in frames:
                raise DatasetError(
                    f"{info.gt_path}:{crop.line}: frame {crop.frame} has no image in "
                    f"{info.image_dir} (expected e.g. {crop.frame:06d}{info.image_ext})"
                )
            segment = segment_of(
                crop.frame, frame_rate=info.frame_rate, segment_seconds=segment_seconds
            )
            tracks[key, crop.track_id].append((segment, crop))
    identities = sorted(tracks)
    pids = {identity: pid for pid, identity in enumerate(identities, start=1)}
    test = _test_identities(identities, test_fraction, split_by, seed)

    images: list[PlannedImage] = []
    for identity in identities:
        key, track_id = identity
        crops = sorted(tracks[identity], key=lambda item: item[1].frame)
        count = counts[key]
        pid = pids[identity]
        if identity not in test:
            count.train_ids += 1
            count.train_images += len(crops)
            images += [PlannedImage(_TRAIN, pid, s, key, c) for s, c in crops]
            continue
        count.test_ids += 1
        query, gallery, left_out = split_test_identity(crops, _stream(seed, key, track_id))
        if query is not None:
            images.append(PlannedImage(_QUERY, pid, query[0], key, query[1]))
            count.query_images += 1
        images += [PlannedImage(_GALLERY, pid, s, key, c) for s, c in gallery]
        count.gallery_images += len(gallery)
        count.left_out += left_out

    if not any(c.train_images for c in counts.values()):
        raise DatasetError(
            f"no training image from {root}: {len(identities)} identities after the "
            "filters; lower min_visibility / min_height, or every"
        )
    if not any(c.query_images for c in counts.values()):
        raise DatasetError(
            f"no query image from {root}: no test identity is seen in two time segments "
            f"of {segment_seconds:g} s; use shorter segments or a larger test fraction"
        )
    options = {
        "every": every, "min_visibility": min_visibility, "min_height": min_height,
        "min_width": min_width, "segment_seconds": segment_seconds,
        "test_fraction": test_fraction, "split_by": split_by, "seed": seed,
    }  # fmt: skip
    return MotPlan(root, sequences, images, counts, without_gt, copies, options)


def _test_identities(
    identities: list[tuple[str, int]], fraction: float, split_by: str, seed: int
) -> set[tuple[str, int]]:
    """The test identities: a rounded ``fraction`` of each sequence's, or of the sequences."""
    by_sequence: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for identity in identities:
        by_sequence[identity[0]].append(identity)
    if split_by == "sequence":
        keys = sorted(by_sequence)
        if len(keys) < 2:
            raise InputError(
                f"split by sequence needs two sequences with identities or more; found "
                f"{len(keys)} ({', '.join(keys)}); split by identity instead"
            )
        count = min(len(keys) - 1, max(1, int(fraction * len(keys) + 0.5)))
        order = _stream(seed, "sequences").permutation(len(keys))
        return {i for k in order[:count] for i in by_sequence[keys[k]]}
    test = set()
    for key, members in by_sequence.items():
        order = _stream(seed, key).permutation(len(members))
        test.update(members[i] for i in order[: int(fraction * len(members) + 0.5)])
    return test


def check_output_dir(out: str | Path, *, overwrite: bool = False, key: str = "--out") -> None:
    """Refuses an output folder that holds anything, unless ``overwrite`` is set and the
    folder is one this module wrote (it holds :data:`MANIFEST`).

    Raises:
        ReidError: ``out`` is a file, or a folder that may not be replaced.
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise ReidError(f"{key} {out} is a file; expected a new or empty folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ReidError(
            f"{key} {out} is not empty; choose a new folder, or pass --overwrite to replace "
            "a dataset prepare_mot wrote there"
        )
    if not (out / MANIFEST).is_file():
        raise ReidError(
            f"{key} {out} is not empty and has no {MANIFEST}, so prepare_mot did not write it; "
            "--overwrite replaces only its own output: choose a new or empty folder"
        )


def write_market_folder(
    plan: MotPlan, out: str | Path, *, overwrite: bool = False, quality: int = JPEG_QUALITY
) -> Path:
    """Crops the planned images into a Market-1501 layout at ``out``.

    Written into a temporary sibling folder, with ``prepare_mot.json`` (the options,
    sources and counts) last, then renamed into place: an interrupted run leaves ``out``
    as it was.

    Args:
        plan: from :func:`plan_mot_dataset`.
        out: the dataset folder (:func:`check_output_dir` rules).
        overwrite: replace a folder this module wrote.
        quality: JPEG quality of the crops.

    Returns:
        ``out`` as a Path.

    Raises:
        ReidError: ``out`` may not be written or replaced, or a frame is unreadable or
            not the size its ``seqinfo.ini`` gives.
    """
    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    by_frame: dict[tuple[str, int], list[PlannedImage]] = defaultdict(list)
    for image in plan.images:
        by_frame[image.sequence, image.crop.frame].append(image)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise ReidError(f"cannot write {out}: {err.strerror or err}") from None
    try:
        for sub in MARKET_SPLIT_DIRS.values():
            (tmp / sub).mkdir()
        files = {key: frame_files(info) for key, info in plan.sequences.items()}
        for key, frame in tqdm(sorted(by_frame), desc="cropping frames", unit="frame"):
            info = plan.sequences[key]
            pixels = _read_frame(files[key][frame], info)
            for image in by_frame[key, frame]:
                target = tmp / MARKET_SPLIT_DIRS[image.split] / image.file_name
                pixels.crop(image.crop.box).save(target, format="JPEG", quality=quality)
        manifest = {
            "tool": "reid.data.mot",
            "root": str(plan.root),
            "options": plan.options,
            "sequences": {key: str(info.folder) for key, info in plan.sequences.items()},
            "counts": {key: vars(count) for key, count in plan.counts.items()},
            "skipped_without_gt": [str(p) for p in plan.without_gt],
            "skipped_copies": {str(skipped): str(kept) for skipped, kept in plan.copies},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace(tmp, out)
    except OSError as err:
        raise ReidError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Wrote %d crops to %s", len(plan.images), out)
    return out


def _read_frame(path: Path, info: SequenceInfo) -> Image.Image:
    try:
        with Image.open(path) as opened:
            pixels = opened.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read frame {path}: {err}") from None
    if pixels.size != (info.width, info.height):
        raise DatasetError(
            f"frame {path} is {pixels.width}x{pixels.height} but {info.folder / 'seqinfo.ini'} "
            f"gives imWidth x imHeight {info.width}x{info.height}"
        )
    return pixels


def _replace(tmp: Path, out: Path) -> None:
    """Puts ``tmp`` at ``out``; a previous ``out`` is removed only once ``tmp`` is there."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / out.name, out)
        raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


def summary_table(plan: MotPlan, out: str | Path) -> str:
    """What the plan writes, per sequence and in total, the skipped folders, and the
    command that trains on ``out``."""
    header = ("sequence", "segments", "train ids", "test ids", "train", "query", "gallery")
    rows = [
        (key, c.segments, c.train_ids, c.test_ids, c.train_images, c.query_images,
         c.gallery_images)
        for key, c in plan.counts.items()
    ]  # fmt: skip
    totals = [sum(row[i] for row in rows) for i in range(2, len(header))]
    rows.append(("total", "", *totals))
    width = max(len(header[0]), *(len(str(row[0])) for row in rows))
    lines = [f"{header[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in header[1:])]
    lines.append("-" * len(lines[0]))
    for row in rows:
        if row[0] == "total":
            lines.append("-" * len(lines[0]))
        lines.append(f"{row[0]:<{width}}  " + "  ".join(f"{v:>9}" for v in row[1:]))
    left_out = sum(c.left_out for c in plan.counts.values())
    lines.append(
        f"(images: train in bounding_box_train/, query in query/, gallery in "
        f"bounding_box_test/; {left_out} crops of query segments left out)"
    )
    if plan.without_gt:
        names = ", ".join(p.name for p in plan.without_gt)
        lines.append(f"skipped {len(plan.without_gt)} sequences without gt/gt.txt: {names}")
    if plan.copies:
        names = ", ".join(f"{s.name} (kept {k.name})" for s, k in plan.copies)
        lines.append(f"skipped {len(plan.copies)} duplicate copies (MOT17 detectors): {names}")
    lines.append(
        "train on it: python tools/train.py --config configs/market_triplet.yml "
        f'DATASETS.NAMES "[market_folder]" DATASETS.ROOT {shlex.quote(str(out))}'
    )
    return "\n".join(lines)
