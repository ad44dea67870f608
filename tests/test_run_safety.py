"""The tools under faults, run as a user runs them: preemption, a broken evaluation, a re-run
into a finished run, an unsafe checkpoint. Each ends in one line and loses nothing."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_file_safety import write_payload_checkpoint
from tiny_run import ROOT, SCHEDULE, error_line, run, run_tool, tiny

from reid.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
CONFIG = ["--config", "configs/demo.yml"]


def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_metrics(trained: Path) -> None:
    out = trained.parent / "preempted"
    # The stop comes at the end of the signal's logging period: mid-epoch with 2.
    args = [*CONFIG, *tiny(trained.parent, out), *SCHEDULE, "SOLVER.LOG_PERIOD", "2"]
    stopped = run([sys.executable, str(ROOT / "tests" / "stopping_train.py"), "15", *args])
    assert stopped.returncode == 128 + signal.SIGTERM
    line = error_line(stopped)
    position = re.fullmatch(
        r"error: stopped by SIGTERM at epoch (\d+), iteration (\d+)/\d+; saved (.+); "
        r"continue with --resume",
        line,
    )
    assert position, line
    state = load_checkpoint(out / "last.pth")
    assert (state["epoch"] + 1, state["iteration"]) == (int(position[1]), int(position[2]))
    assert state["iteration"] > 0  # mid-epoch
    assert not (out / "metrics.json").exists()

    resumed = run_tool("train.py", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert f"after epoch {state['epoch']}, iteration {state['iteration']}" in log
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (trained / "metrics.json").read_text()
    )


def test_evaluation_error_keeps_the_epoch_and_resume_finishes_it(trained: Path) -> None:
    tmp = trained.parent / "broken_query"
    shutil.copytree(trained.parent / "data", tmp / "data")
    query = next((tmp / "data").glob("synthetic-*/query/*.jpg"))
    original = query.read_bytes()
    query.write_bytes(b"not a jpeg")
    args = [*CONFIG, *tiny(tmp, tmp / "run"), "SOLVER.MAX_EPOCHS", "1"]
    failed = run_tool("train.py", *args)
    assert failed.returncode == 2
    line = error_line(failed)
    last = tmp / "run" / "last.pth"
    assert f"evaluation failed after epoch 1; its weights are saved in {last}" in line
    assert f"cannot read image {query}" in line
    assert load_checkpoint(last)["pending_eval"] is True

    query.write_bytes(original)
    resumed = run_tool("train.py", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rank1" in resumed.stdout and (tmp / "run" / "best.pth").is_file()


def test_rerun_into_a_finished_run_is_refused_and_overwrite_replaces_it(trained: Path) -> None:
    best = (trained / "best.pth").read_bytes()
    again = run_tool("train.py", *CONFIG, *tiny(trained.parent, trained), *SCHEDULE)
    assert again.returncode == 2
    assert error_line(again) == (
        f"error: {trained} already holds a run (last.pth, best.pth, metrics.json); continue it "
        "with --resume, choose another OUTPUT_DIR, or replace it with --overwrite"
    )
    assert (trained / "best.pth").read_bytes() == best

    copy = trained.parent / "overwritten"
    shutil.copytree(trained, copy)
    opts = [*tiny(trained.parent, copy), "SOLVER.MAX_EPOCHS", "1"]
    replaced = run_tool("train.py", "--overwrite", *CONFIG, *opts)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert load_checkpoint(copy / "best.pth")["epoch"] == 1
    assert "resumed" not in (copy / "log.txt").read_text()  # a fresh log


def test_no_matchable_query_is_found_before_the_first_epoch(market_tree: Path, tmp_path) -> None:
    for path in (market_tree / "bounding_box_test").glob("0003_*"):
        path.unlink()
    for path in (market_tree / "bounding_box_test").glob("0005_*"):
        path.unlink()
    opts = ["DATASETS.NAMES", "[market_folder]", "DATASETS.ROOT", str(market_tree),
            "OUTPUT_DIR", str(tmp_path / "run"), "SOLVER.IMS_PER_BATCH", "4",
            "DATALOADER.NUM_INSTANCES", "2", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    result = run_tool("train.py", *CONFIG, *opts)
    assert result.returncode == 2
    assert "no query has a correct match in the gallery (all 2 queries skipped)" in error_line(
        result
    )
    assert not (tmp_path / "run" / "last.pth").exists()


def test_unsafe_checkpoints_are_refused_by_the_tools(trained: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((trained / "config.yaml").read_text())
    write_payload_checkpoint(run / "last.pth", marker)
    opts = tiny(trained.parent, run)
    tested = run_tool("test.py", *CONFIG, *opts, "TEST.WEIGHT", str(run / "last.pth"))
    resumed = run_tool("train.py", "--resume", *CONFIG, *opts, *SCHEDULE)
    for result in (tested, resumed):
        assert result.returncode == 2
        assert "may be unsafe" in error_line(result)
    assert not marker.exists()


def test_ctrl_c_to_the_whole_process_group_with_workers_stops_cleanly(trained: Path) -> None:
    """A terminal's Ctrl-C reaches the loader workers too; the run still saves and stops."""
    out = trained.parent / "ctrl_c"
    opts = [*tiny(trained.parent, out), "DATALOADER.NUM_WORKERS", "1", "SOLVER.MAX_EPOCHS", "50"]
    command = [sys.executable, str(ROOT / "tools" / "train.py"), *CONFIG, *opts]
    process = subprocess.Popen(
        command, cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not (out / "last.pth").exists():  # the first epoch is over: training is under way
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGINT ")
    assert load_checkpoint(out / "last.pth")["epoch"] < 50
