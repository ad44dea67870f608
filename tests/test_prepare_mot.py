"""MOTChallenge sequences to a Market-style folder (reid/data/mot.py, tools/prepare_mot.py).

The fake tree is hand-made so every count is known: 160x120 frames, 20 frames at
2 fps, so 5-second segments are frames 1-10 (c1) and 11-20 (c2), and ``every=2``
keeps the odd frames. Synthetic pedestrians are pasted at the ground-truth boxes.
"""

import functools
import json
import logging
import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_run import TINY, error_line, run, run_tool

from reid.data import DATASETS
from reid.data.mot import (
    MANIFEST,
    Crop,
    check_output_dir,
    plan_mot_dataset,
    read_gt,
    read_seqinfo,
    select_crops,
    split_test_identity,
    summary_table,
    write_market_folder,
)
from reid.data.synthetic import draw_pedestrians
from reid.errors import ReidError
from reid.tools import prepare_mot

WIDTH, HEIGHT, FRAMES, FPS = 160, 120, 20, 2
OPTIONS = {"every": 2, "segment_seconds": 5.0}  # 10 frames a segment, odd frames kept
ODD = set(range(1, FRAMES + 1, 2))
NAME = re.compile(r"^(\d+)_c(\d+)_(.+)_(\d{6})\.jpg$")


@dataclass(frozen=True)
class Track:
    track_id: int
    box: tuple[int, int, int, int]  # left, top, width, height
    frames: frozenset[int] = frozenset(range(1, FRAMES + 1))
    flag: int = 1
    class_id: int = 1
    low_visibility_until: int = 0  # visibility 0.3 up to this frame, 0.9 after
    person: int = 0  # which drawn pedestrian is pasted


# What each MOT17-02 track tests; the comment says which crops are kept with OPTIONS.
MOT17_TRACKS = (
    Track(1, (40, 10, 30, 60), person=0),  # every odd frame, both segments
    Track(2, (80, 10, 30, 60), low_visibility_until=10, person=1),  # 11-19: segment 2 only
    Track(3, (120, 10, 30, 60), class_id=7, person=2),  # a static person: none
    Track(4, (40, 75, 30, 40), flag=0, person=3),  # ignored: none
    Track(5, (-10, 50, 40, 60), person=4),  # cut by the left border to (0, 50, 30, 110)
    Track(6, (80, 75, 30, 40), frames=frozenset(range(2, FRAMES + 1, 2)), person=5),  # even
    Track(7, (120, 80, 20, 20), person=6),  # 20 px tall, under min_height: none
)
DANCE_TRACKS = (Track(1, (20, 20, 30, 60), person=8), Track(2, (90, 20, 30, 60), person=9))
# pid -> (sequence, track, kept frames): sorted by sequence name, then track.
EXPECTED = {
    1: ("MOT17-02", 1, ODD),
    2: ("MOT17-02", 2, {f for f in ODD if f > 10}),
    3: ("MOT17-02", 5, ODD),
    4: ("dancetrack0001", 1, ODD),
    5: ("dancetrack0001", 2, ODD),
}


@functools.cache
def _pedestrians() -> tuple[Image.Image, ...]:
    return tuple(image for _, image in draw_pedestrians(16, 1, seed=0))


def _person(track: Track) -> Image.Image:
    """The pedestrian pasted for a track, resized to its box."""
    return _pedestrians()[track.person].resize(track.box[2:], Image.Resampling.BILINEAR)


def write_sequence(
    folder: Path,
    tracks: tuple[Track, ...],
    *,
    dance: bool = False,
    with_gt: bool = True,
    frames: int = FRAMES,
    size: tuple[int, int] = (WIDTH, HEIGHT),
) -> Path:
    """A MOTChallenge sequence; DanceTrack style writes 8-digit frames and ``1,1,1``."""
    width, height = size
    (folder / "img1").mkdir(parents=True)
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={folder.name}\nimDir=img1\nframeRate={FPS}\nseqLength={frames}\n"
        f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n"
    )
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 255 // width, y * 255 // height, 128 + 0 * x], -1)
    lines = []
    for frame in range(1, frames + 1):
        image = Image.fromarray(background.astype(np.uint8))
        for track in tracks:
            if frame not in track.frames:
                continue
            image.paste(_person(track), track.box[:2])
            visibility = 0.3 if frame <= track.low_visibility_until else 0.9
            tail = "1,1,1" if dance else f"{track.flag},{track.class_id},{visibility}"
            lines.append(f"{frame},{track.track_id},{','.join(map(str, track.box))},{tail}")
        name = f"{frame:08d}.jpg" if dance else f"{frame:06d}.jpg"
        image.save(folder / "img1" / name, quality=95)
    if with_gt:
        (folder / "gt").mkdir()
        (folder / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def mot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MOT17-02 in three detector copies, a test sequence without gt, a DanceTrack one."""
    root = tmp_path_factory.mktemp("mot")
    first = write_sequence(root / "MOT17" / "train" / "MOT17-02-DPM", MOT17_TRACKS)
    for detector in ("FRCNN", "SDP"):
        shutil.copytree(first, first.with_name(f"MOT17-02-{detector}"))
    write_sequence(root / "MOT17" / "test" / "MOT17-01-DPM", MOT17_TRACKS[:1], with_gt=False)
    write_sequence(root / "DanceTrack" / "train" / "dancetrack0001", DANCE_TRACKS, dance=True)
    return root


@pytest.fixture(scope="module")
def written(mot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "mot_reid"
    write_market_folder(plan_mot_dataset(mot_root, **OPTIONS), out)
    return out


def _files(out: Path) -> dict[str, list[tuple[int, int, str, int]]]:
    """``{split folder: [(pid, segment, sequence, frame)]}`` from the file names."""
    found = {}
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(p.name for p in (out / split).iterdir())
        parsed = [NAME.match(name) for name in names]
        assert all(parsed), names
        found[split] = [(int(m[1]), int(m[2]), m[3], int(m[4])) for m in parsed]
    return found


def test_select_crops_applies_flag_class_visibility_every_and_size(mot_root: Path) -> None:
    folder = mot_root / "MOT17" / "train" / "MOT17-02-DPM"
    info = read_seqinfo(folder)
    assert (info.width, info.height, info.frame_rate) == (WIDTH, HEIGHT, FPS)

    def kept(**options) -> dict[int, list[int]]:
        tracks = defaultdict(list)
        for crop in select_crops(info, read_gt(info.gt_path), **options):
            tracks[crop.track_id].append(crop.frame)
        return dict(tracks)

    odd, late = sorted(ODD), [11, 13, 15, 17, 19]
    assert kept(every=2) == {1: odd, 2: late, 5: odd}
    # Every 5th frame is 1, 6, 11, 16: track 6 (even frames) now has two.
    assert kept(every=5) == {1: [1, 6, 11, 16], 2: [11, 16], 5: [1, 6, 11, 16], 6: [6, 16]}
    assert kept(every=2, min_visibility=0.25)[2] == odd
    assert kept(every=2, min_height=16)[7] == odd  # the 20-px track, once allowed
    clipped = [c for c in select_crops(info, read_gt(info.gt_path), every=2) if c.track_id == 5]
    assert {c.box for c in clipped} == {(0, 50, 30, 110)}


def test_written_files_are_the_hand_computed_crops(written: Path) -> None:
    """Each identity's frames across train, query and gallery, and which folder has them."""
    files = _files(written)
    by_pid = defaultdict(lambda: defaultdict(set))
    for split, items in files.items():
        for pid, segment, sequence, frame in items:
            by_pid[pid][split].add((segment, sequence, frame))
    assert set(by_pid) == set(EXPECTED)
    train_ids = test_ids = 0
    for pid, (sequence, _, frames) in EXPECTED.items():
        splits = by_pid[pid]
        expected = {((f - 1) // 10 + 1, sequence, f) for f in frames}
        if "bounding_box_train" in splits:
            train_ids += 1
            assert splits == {"bounding_box_train": expected}
            continue
        test_ids += 1
        segments = {s for s, _, _ in expected}
        if len(segments) == 1:  # seen in one segment: gallery only
            assert splits == {"bounding_box_test": expected}
            continue
        ((query_segment, _, query_frame),) = splits["query"]
        assert splits["bounding_box_test"] == {e for e in expected if e[0] != query_segment}
        # The query segment's crop farthest in time from the gallery's: frame 1 (10
        # frames before 11) in segment 1, frame 19 (10 frames after 9) in segment 2.
        assert query_frame == {1: 1, 2: 19}[query_segment]
    # Half of each sequence's identities, rounded up: 2 of 3 and 1 of 2.
    assert (train_ids, test_ids) == (2, 3)
    manifest = json.loads((written / MANIFEST).read_text())
    totals = {k: sum(c[k] for c in manifest["counts"].values()) for k in ("left_out", "test_ids")}
    queries = len(files["query"])
    assert totals == {"left_out": 4 * queries, "test_ids": 3}  # 5 crops a segment, 1 query


def test_detector_copies_are_one_sequence(mot_root: Path, tmp_path: Path, caplog) -> None:
    plan = plan_mot_dataset(mot_root, **OPTIONS)
    assert list(plan.sequences) == ["MOT17-02", "dancetrack0001"]
    assert plan.sequences["MOT17-02"].folder.name == "MOT17-02-DPM"
    assert sorted(s.name for s, _ in plan.copies) == ["MOT17-02-FRCNN", "MOT17-02-SDP"]
    assert [p.name for p in plan.without_gt] == ["MOT17-01-DPM"]
    assert len({image.pid for image in plan.images}) == 5  # not 3 x 3 + 2
    table = summary_table(plan, tmp_path / "out")
    assert "skipped 2 duplicate copies" in table and "skipped 1 sequences without" in table
    assert "total" in table and 'DATASETS.NAMES "[market_folder]"' in table.splitlines()[-1]

    # A copy whose ground truth differs is still skipped, with a warning naming it.
    root = tmp_path / "mot"
    shutil.copytree(mot_root / "MOT17", root / "MOT17")
    gt = root / "MOT17" / "train" / "MOT17-02-SDP" / "gt" / "gt.txt"
    gt.write_text(gt.read_text().replace("1,1,40,10", "1,1,41,10"))
    with caplog.at_level(logging.WARNING, logger="reid.data.mot"):
        assert len(plan_mot_dataset(root, **OPTIONS).copies) == 2
    assert "MOT17-02-SDP" in caplog.text and "differ" in caplog.text


@pytest.mark.parametrize("seed", range(6))
def test_no_test_identity_has_query_and_gallery_in_one_segment(mot_root: Path, seed) -> None:
    plan = plan_mot_dataset(mot_root, **OPTIONS, seed=seed)
    segments = defaultdict(lambda: defaultdict(set))
    for image in plan.images:
        segments[image.pid][image.split].add(image.segment)
    for pid, splits in segments.items():
        query, gallery = splits.get("query", set()), splits.get("gallery", set())
        assert not query & gallery, pid
        assert "train" not in splits or set(splits) == {"train"}  # no identity in both
        assert len(query) <= 1 and (not query or gallery)  # a query has a match


def test_the_written_folder_parses_with_every_query_matchable(written: Path) -> None:
    """The Market parser reads it; under its protocol (same pid and camera ignored)
    every query keeps a correct match, and none shares its segment."""
    dataset = DATASETS.get("market_folder")(written)
    assert dataset.protocol == "market" and dataset.num_train_pids == 2
    gallery = defaultdict(set)
    for record in dataset.gallery:
        gallery[record.pid].add(record.camid)
    for record in dataset.query:
        assert record.pid >= 1 and gallery[record.pid]
        assert record.camid not in gallery[record.pid]


def test_pids_are_one_per_sequence_and_track(written: Path, mot_root: Path) -> None:
    plan = plan_mot_dataset(mot_root, **OPTIONS)
    identity = defaultdict(set)
    for image in plan.images:
        identity[image.pid].add((image.sequence, image.crop.track_id))
    assert identity == {pid: {(sequence, track)} for pid, (sequence, track, _) in EXPECTED.items()}
    sequences = defaultdict(set)
    for items in _files(written).values():
        for pid, _, sequence, _ in items:
            sequences[pid].add(sequence)
    assert all(len(names) == 1 for names in sequences.values()) and min(sequences) == 1


@pytest.mark.parametrize("pid", [1, 3, 4])  # MOT17-02 tracks 1 and 5 (clipped), a dancer
def test_crops_are_the_boxes_pixels(written: Path, pid: int) -> None:
    sequence, track_id, _ = EXPECTED[pid]
    tracks = MOT17_TRACKS if sequence == "MOT17-02" else DANCE_TRACKS
    track = next(t for t in tracks if t.track_id == track_id)
    person = np.asarray(_person(track), dtype=np.float32)
    visible = person[:, -track.box[0] :] if track.box[0] < 0 else person  # cut at x = 0
    paths = sorted(written.glob(f"*/{pid:05d}_c*.jpg"))
    assert paths
    for path in paths:
        crop = np.asarray(Image.open(path), dtype=np.float32)
        assert crop.shape == visible.shape
        assert np.abs(crop - visible).mean() < 6  # two JPEG encodings at quality 95


def test_non_empty_out_is_refused_and_overwrite_replaces_only_ours(
    mot_root: Path, tmp_path: Path
) -> None:
    plan = plan_mot_dataset(mot_root, **OPTIONS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my data")
    for overwrite in (False, True):
        with pytest.raises(ReidError, match="mine is not empty"):
            write_market_folder(plan, mine, overwrite=overwrite)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    out = write_market_folder(plan, tmp_path / "empty_ok")
    with pytest.raises(ReidError, match="pass --overwrite"):
        check_output_dir(out)
    (out / "query" / "stale.jpg").write_bytes(b"")
    write_market_folder(plan, out, overwrite=True)
    assert not (out / "query" / "stale.jpg").exists() and (out / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_ok", "mine"]  # no temp left


def test_a_failed_write_leaves_no_folder(mot_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "mot"
    shutil.copytree(mot_root / "DanceTrack", root / "DanceTrack")
    plan = plan_mot_dataset(root, **OPTIONS)
    frame = root / "DanceTrack" / "train" / "dancetrack0001" / "img1" / "00000011.jpg"
    frame.write_bytes(b"not a jpeg")
    with pytest.raises(ReidError, match=f"cannot read frame {re.escape(str(frame))}"):
        write_market_folder(plan, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mot"]


def test_split_by_sequence_holds_out_whole_sequences(mot_root: Path) -> None:
    plan = plan_mot_dataset(mot_root, **OPTIONS, split_by="sequence")
    splits = defaultdict(set)
    for image in plan.images:
        splits[image.sequence].add("train" if image.split == "train" else "test")
    assert sorted(map(frozenset, splits.values()), key=sorted) == [{"test"}, {"train"}]


def test_root_may_be_one_sequence_or_any_parent(mot_root: Path) -> None:
    dance = mot_root / "DanceTrack" / "train" / "dancetrack0001"
    for root in (dance, dance.parent, mot_root / "DanceTrack"):
        assert list(plan_mot_dataset(root, **OPTIONS).sequences) == ["dancetrack0001"]


def test_a_one_segment_identity_is_all_gallery() -> None:
    crops = [(2, Crop(1, frame, (0, 0, 10, 40), frame)) for frame in (11, 13)]
    assert split_test_identity(crops, np.random.default_rng(0)) == (None, crops, 0)


def _cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["prepare_mot.py", *argv])
    code = prepare_mot.cli()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_the_table_and_refuses_a_second_run(
    mot_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out dir"
    argv = ["--mot", str(mot_root), "--out", str(out), "--every", "2", "--segment-seconds", "5"]
    code, stdout, _ = _cli(monkeypatch, capsys, *argv)
    assert code == 0
    assert stdout.strip() == summary_table(plan_mot_dataset(mot_root, **OPTIONS), out)
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["sequence", "segments"]
    _, train_ids, test_ids, train, query, gallery = next(
        line for line in lines if line.startswith("total")
    ).split()
    assert (train_ids, test_ids) == ("2", "3")
    # 45 crops (10 + 5 + 10 + 10 + 10); each query's segment leaves 4 others out.
    assert int(train) + 5 * int(query) + int(gallery) == 45
    assert lines[-1] == (
        "train on it: python tools/train.py --config configs/market_triplet.yml "
        f"DATASETS.NAMES \"[market_folder]\" DATASETS.ROOT '{out}'"
    )
    code, _, stderr = _cli(monkeypatch, capsys, *argv)
    assert code == 2 and stderr.strip().splitlines()[-1] == (
        f"error: --out {out} is not empty; choose a new folder, or pass --overwrite to replace "
        "a dataset prepare_mot wrote there"
    )


def test_cli_bad_input_is_one_line(mot_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = _cli(monkeypatch, capsys, "--mot", str(empty), "--out", str(tmp_path / "o"))
    assert code == 2
    assert stderr.strip().splitlines()[-1] == (
        f"error: no MOTChallenge sequence under {empty}: expected folders holding seqinfo.ini, "
        "img1/ and gt/gt.txt at any depth (e.g. MOT17/train/MOT17-02-FRCNN)"
    )
    root = tmp_path / "mot"
    shutil.copytree(mot_root / "DanceTrack", root)
    sequence = root / "train" / "dancetrack0001"
    for frame in (3, 5):
        (sequence / "img1" / f"{frame:08d}.jpg").unlink()
    argv = ["--mot", str(root), "--out", str(tmp_path / "o"), "--every", "2"]
    code, _, stderr = _cli(monkeypatch, capsys, *argv)
    last = stderr.strip().splitlines()[-1]
    gt = sequence / "gt" / "gt.txt"
    assert last.startswith(f"error: {gt}:5: frame 3 has no image in {sequence / 'img1'}")
    (sequence / "seqinfo.ini").write_text("[Sequence]\nname=x\nframeRate=fast\n")
    code, _, stderr = _cli(monkeypatch, capsys, *argv)
    assert stderr.strip().splitlines()[-1] == (
        f"error: {sequence / 'seqinfo.ini'}: frameRate = 'fast'; expected a positive number"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # a subprocess: the one-line error as the shell sees it
def test_tool_names_the_malformed_gt_line(mot_root: Path, tmp_path: Path) -> None:
    """The launcher, as a user runs it: one error line naming FILE:LINE."""
    root = tmp_path / "mot"
    shutil.copytree(mot_root / "DanceTrack", root)
    gt = root / "train" / "dancetrack0001" / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "3,1,20,20,30"
    gt.write_text("\n".join(lines) + "\n")
    result = run_tool("prepare_mot.py", "--mot", str(root), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert error_line(result) == (
        f"error: {gt}:3: expected frame,id,left,top,width,height,flag,class,visibility "
        "(9 numbers; frame, id, flag and class whole), got '3,1,20,20,30'"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_training_on_the_output_reports_map(tmp_path: Path) -> None:
    """Prepare a two-sequence set, then train and evaluate on it with the tools."""
    for index, name in enumerate(("MOT17-02-SDP", "MOT17-04-SDP")):
        tracks = tuple(
            Track(t + 1, (8 + 38 * t, 10, 30, 80), person=t + 8 * index) for t in range(8)
        )
        write_sequence(tmp_path / "mot" / name, tracks, size=(320, 120))
    data = tmp_path / "data"
    result = run_tool(
        "prepare_mot.py", "--mot", str(tmp_path / "mot"), "--out", str(data),
        "--every", "2", "--segment-seconds", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    opts = list(TINY)
    at = opts.index("DATASETS.NAMES")
    opts[at : at + 2] = ["DATASETS.NAMES", "[market_folder]"]
    opts += ["DATASETS.ROOT", str(data), "OUTPUT_DIR", str(tmp_path / "run")]
    opts += ["SOLVER.MAX_EPOCHS", "1", "TEST.EVAL_PERIOD", "1"]
    result = run([sys.executable, "tools/train.py", "--config", "configs/demo.yml", *opts])
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
