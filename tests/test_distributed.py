"""torchrun on the CPU (gloo, 2 processes): the same training as one process, rank 0 owns
the files, resume works, and failures end the job with a message instead of a hang."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_run import ROOT, SCHEDULE, TRAIN, run, run_tool, tiny, torchrun

from reid.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
CONFIG = ["--config", "configs/demo.yml"]
# The 2-process run of the fixture trains without SyncBN: each rank's BatchNorm statistics
# then drift apart, which evaluation must not see (SyncBN itself is in the float64 test).
NO_SYNC_BN = ["DISTRIBUTED.SYNC_BN", "false"]
TESTS = ROOT / "tests"


def step_losses(run_dir: Path) -> list[float]:
    """The total loss of every training step, from the run's TensorBoard events."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.value for event in events.Scalars("train_iter/total")]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(trained: Path) -> Path:
    """The `trained` fixture's run, under torchrun with 2 processes, without SyncBN."""
    out = trained.parent / "torchrun"
    result = run(torchrun(TRAIN, *CONFIG, *tiny(trained.parent, out), *SCHEDULE, *NO_SYNC_BN))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("mINP") == 1  # one table, from rank 0
    return out


@pytest.mark.parametrize(
    "loading",
    [[], ["DATALOADER.CACHE", "ram", "INPUT.BATCH_AUGMENT", "True"]],
    ids=["per-image", "cache-and-batch-augment"],
)
def test_two_processes_train_the_same_model_as_one(trained: Path, loading: list[str]) -> None:
    """In float64 (see tests/float64_train.py) every step's loss and the final metrics
    of 1 and 2 processes agree: global batch, SyncBN, global mining and DDP together
    compute what one process computes; so do the decoded-image cache, which rank 0
    builds and both map, and the batch augmentation on each rank's device."""
    runs = {}
    for processes in (1, 2):
        out = trained.parent / f"float64_w{processes}_{len(loading)}"
        args = [*CONFIG, *tiny(trained.parent, out), "SOLVER.MAX_EPOCHS", "1"]
        args += ["SOLVER.LOG_PERIOD", "1", *loading]  # every step's loss in TensorBoard
        script = TESTS / "float64_train.py"
        command = torchrun(script, *args) if processes == 2 else [sys.executable, script, *args]
        result = run([str(part) for part in command])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[processes] = out
    one, two = step_losses(runs[1]), step_losses(runs[2])
    assert len(one) == len(two) > 0
    worst = max(abs(a - b) / abs(a) for a, b in zip(one, two, strict=True))
    assert worst <= 1e-4, worst
    assert abs(metrics(runs[1])["mAP"] - metrics(runs[2])["mAP"]) <= 1e-3


def test_the_worker_count_does_not_change_training(trained: Path) -> None:
    """Augmentation is seeded per sample, not by worker: 0 and 2 workers see the same images."""
    out = trained.parent / "two_workers"
    opts = [*tiny(trained.parent, out), "SOLVER.MAX_EPOCHS", "1", "DATALOADER.NUM_WORKERS", "2"]
    result = run_tool("train.py", *CONFIG, *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    first_epoch = step_losses(out)
    assert first_epoch == step_losses(trained)[: len(first_epoch)]


def test_rank0_writes_one_set_of_files_that_load_in_one_process(two_process_run: Path) -> None:
    """One set of files, loadable in one process, whose evaluation gives the metrics of
    training's: without SyncBN too, every rank evaluated with the saved BatchNorm
    statistics (rank 0's), not its own."""
    out = two_process_run
    for name in ("config.yaml", "metrics.json", "last.pth", "best.pth", "log.txt"):
        assert len(list(out.rglob(name))) == 1, name
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file
    state = load_checkpoint(out / "last.pth")
    assert not any(key.startswith("module.") for key in state["model"])

    tested = run_tool(
        "test.py", *CONFIG, *tiny(out.parent, out), "TEST.WEIGHT", str(out / "best.pth")
    )
    assert tested.returncode == 0, tested.stderr[-2000:]
    at_training = load_checkpoint(out / "best.pth")["metrics"]
    for name, value in json.loads((out / "test" / "metrics.json").read_text()).items():
        if name in at_training:
            assert value == pytest.approx(at_training[name], abs=1e-6), name


def test_preempted_torchrun_resumes_to_the_same_metrics(two_process_run: Path) -> None:
    """SIGTERM reaches rank 0 only; the ranks agree to stop at the same step, and
    --resume under torchrun finishes as the uninterrupted 2-process run did."""
    out = two_process_run.parent / "torchrun_preempted"
    # The stop comes at the end of the signal's logging period: mid-epoch with 2.
    args = [*CONFIG, *tiny(out.parent, out), *SCHEDULE, *NO_SYNC_BN, "SOLVER.LOG_PERIOD", "2"]
    stopped = run(torchrun(TESTS / "stopping_train.py", "15", *args))
    assert stopped.returncode != 0
    # Each rank prints it, unless torchrun ends it first (once rank 0 has exited).
    lines = {line for line in stopped.stderr.splitlines() if line.startswith("error: stopped")}
    assert len(lines) == 1, lines  # the ranks stopped at the same step
    position = load_checkpoint(out / "last.pth")
    assert position["iteration"] > 0

    resumed = run(torchrun(TRAIN, "--resume", *args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics(out) == metrics(two_process_run)


def test_a_batch_that_cannot_be_split_is_one_line_on_every_rank(trained: Path) -> None:
    out = trained.parent / "unsplittable"
    opts = [*tiny(trained.parent, out), "SOLVER.IMS_PER_BATCH", "6"]  # P = 3 identities
    result = run(torchrun(TRAIN, *CONFIG, *opts))
    assert result.returncode != 0
    expected = (
        "error: a global batch of P = 3 identities x K = 2 cannot be split over 2 processes: "
        "each needs a whole number of identities, at least 2; use a batch size "
        "(SOLVER.IMS_PER_BATCH) of 8, or another number of processes"
    )
    assert result.stderr.count(expected) == 2


def test_a_killed_rank_ends_the_job_instead_of_hanging(trained: Path) -> None:
    out = trained.parent / "killed_rank"
    opts = [*tiny(trained.parent, out), "SOLVER.MAX_EPOCHS", "200"]
    job = subprocess.Popen(
        torchrun(TRAIN, *CONFIG, *opts), cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (out / "last.pth").exists():  # training is under way
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True)
    os.kill(int(workers.stdout.split()[-1]), signal.SIGKILL)
    started = time.monotonic()
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    assert time.monotonic() - started < 60
    assert "Signal 9 (SIGKILL) received by PID" in stderr
    assert torch.load(out / "last.pth")["epoch"] < 200


def test_loss_parameters_are_rank_0s_on_every_rank(tmp_path: Path) -> None:
    """Center-loss centers and margin-classifier weights are broadcast when the Trainer is
    built, not left to equal seeding."""
    result = run(torchrun(TESTS / "distributed_checks.py", "loss_parameters", str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "equal True, changed False"  # its own
    assert (tmp_path / "rank1.txt").read_text() == "equal True, changed True"  # had others


def test_any_exception_on_rank_0_alone_ends_every_rank_with_a_message(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run(torchrun(TESTS / "distributed_checks.py", "rank0_error", str(tmp_path)))
    assert result.returncode != 0
    assert "ZeroDivisionError: a bug in rank 0's section" in result.stderr  # rank 0's own
    assert (
        "[rank1]: reid.errors.ReidError: rank 0 failed (ZeroDivisionError: a bug in rank 0's "
        "section); see its output" in result.stderr
    )
    assert time.monotonic() - started < 120  # the collective timeout is 5 minutes
