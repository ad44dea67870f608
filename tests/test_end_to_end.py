"""The entry points, run as a user runs them, on a tiny synthetic set."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
TINY = [
    "DATASETS.NAME", "synthetic", "DATASETS.SYNTHETIC.NUM_IDENTITIES", "12",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "MODEL.BACKBONE", "resnet18",
    "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
    "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCES", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.BASE_LR", "0.001",
    "TEST.IMS_PER_BATCH", "64",
]  # fmt: skip


def _tiny(tmp: Path, output_dir: Path) -> list[str]:
    """Overrides for a tiny run with data under ``tmp/data``."""
    return [*TINY, "DATASETS.ROOT", str(tmp / "data"), "OUTPUT_DIR", str(output_dir)]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "run"
    opts = [*_tiny(tmp, out), "SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "2"]
    result = _run("train.py", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank1" in result.stdout and "mAP" in result.stdout
    return out


def test_training_writes_metrics_checkpoints_and_config(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    for name in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"]
    for name in ("last.pth", "best.pth", "config.yaml", "log.txt"):
        assert (trained / name).is_file()
    assert "resnet18" in (trained / "config.yaml").read_text()
    log = (trained / "log.txt").read_text()
    losses = [float(line.split(" total ")[1].split()[0]) for line in log.splitlines()
              if " total " in line]  # fmt: skip
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_evaluating_the_best_checkpoint(trained: Path) -> None:
    weight = str(trained / "best.pth")
    opts = [*_tiny(trained.parent, trained / "test"), "TEST.WEIGHT", weight]
    result = _run("test.py", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    tested = json.loads((trained / "test" / "metrics.json").read_text())
    at_training = torch.load(trained / "best.pth", weights_only=False)["metrics"]
    for name in ("rank1", "mAP", "mINP"):
        assert tested[name] == pytest.approx(at_training[name], abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "configs/missing.yml"], "config file not found: configs/missing.yml"),
        (["--config", "configs/demo.yml", "SOLVER.BASE_LRR", "1"], "did you mean SOLVER.BASE_LR"),
    ],
)
def test_bad_input_is_one_line_and_nonzero_exit(args: list[str], message: str) -> None:
    result = _run("train.py", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr


def test_checkpoint_of_another_model_is_one_line(trained: Path) -> None:
    weight = str(trained / "best.pth")
    opts = [*_tiny(trained.parent, trained / "bad"), "TEST.WEIGHT", weight]
    result = _run("test.py", "--config", "configs/demo.yml", *opts, "MODEL.BACKBONE", "resnet34")
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "does not fit this model" in last_line


def test_killed_run_resumes_to_the_same_metrics(trained: Path) -> None:
    """SIGKILL after the first checkpoint, resume, and finish as if never stopped."""
    out = trained.parent / "killed"
    opts = [*_tiny(trained.parent, out), "SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "2"]
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--config", "configs/demo.yml"]
    process = subprocess.Popen([*command, *opts], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "last.pth").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()

    result = _run("train.py", "--resume", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in (out / "log.txt").read_text()
    resumed = json.loads((out / "metrics.json").read_text())
    uninterrupted = json.loads((trained / "metrics.json").read_text())
    assert resumed == uninterrupted


def test_resume_with_a_changed_config_says_what_changed(trained: Path) -> None:
    opts = [*_tiny(trained.parent, trained), "SOLVER.MAX_EPOCHS", "3", "SOLVER.BASE_LR", "0.01"]
    result = _run("train.py", "--resume", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 2
    assert "SOLVER.BASE_LR: 0.001 -> 0.01" in result.stderr.strip().splitlines()[-1]
    assert "BASE_LR: 0.001" in (trained / "config.yaml").read_text()  # left as it was


def test_test_time_options_and_visual_results(trained: Path) -> None:
    out = trained / "visual_test"
    options = ["TEST.FLIP", "true", "TEST.RE_RANKING", "true", "TEST.VISUALIZE_QUERIES", "3"]
    opts = [*_tiny(trained.parent, out), "TEST.WEIGHT", str(trained / "best.pth"), *options]
    result = _run("test.py", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and len(metrics["cmc"]) == 50
    assert len(list((out / "visual" / "ranked").glob("*.png"))) == 3
    assert (out / "visual" / "cmc.png").is_file()
