"""The entry points, run as a user runs them, on a tiny synthetic set."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_datasets import write_cuhk03_np
from tiny_run import ROOT, SCHEDULE, run_tool, tiny

from reid.config import load_cfg
from reid.data import build_dataset, build_test_loader
from reid.engine.checkpoint import build_trained_model
from reid.evaluation import AqeOptions, EvalOptions, Ranking, extract_features

pytestmark = pytest.mark.slow


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


def test_evaluating_the_best_checkpoint_leaves_the_run_untouched(trained: Path) -> None:
    """tools/test.py on the training's own OUTPUT_DIR writes only under test/."""
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    opts = [*tiny(trained.parent, trained), "TEST.WEIGHT", str(trained / "best.pth")]
    result = run_tool("test.py", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before
    tested = json.loads((trained / "test" / "metrics.json").read_text())
    at_training = torch.load(trained / "best.pth")["metrics"]
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
    result = run_tool("train.py", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr


def test_checkpoint_of_another_model_is_one_line(trained: Path) -> None:
    weight = str(trained / "best.pth")
    opts = [*tiny(trained.parent, trained / "bad"), "TEST.WEIGHT", weight]
    other_model = ["MODEL.BACKBONE", "resnet34"]
    result = run_tool("test.py", "--config", "configs/demo.yml", *opts, *other_model)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "does not fit this model" in last_line


def test_killed_run_resumes_to_the_same_metrics(trained: Path) -> None:
    """SIGKILL after the first checkpoint, resume, and finish as if never stopped."""
    out = trained.parent / "killed"
    opts = [*tiny(trained.parent, out), *SCHEDULE]
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--config", "configs/demo.yml"]
    process = subprocess.Popen([*command, *opts], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "last.pth").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()

    result = run_tool("train.py", "--resume", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in (out / "log.txt").read_text()
    resumed = json.loads((out / "metrics.json").read_text())
    uninterrupted = json.loads((trained / "metrics.json").read_text())
    assert resumed == uninterrupted


def test_resume_with_a_changed_config_says_what_changed(trained: Path) -> None:
    opts = [*tiny(trained.parent, trained), "SOLVER.MAX_EPOCHS", "3", "SOLVER.BASE_LR", "0.01"]
    result = run_tool("train.py", "--resume", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 2
    assert "SOLVER.BASE_LR: 0.001 -> 0.01" in result.stderr.strip().splitlines()[-1]
    assert "BASE_LR: 0.001" in (trained / "config.yaml").read_text()  # left as it was


def test_test_time_options_and_visual_results(trained: Path) -> None:
    out = trained / "visual_test"
    options = ["TEST.FLIP", "true", "TEST.RE_RANKING", "true", "TEST.VISUALIZE_QUERIES", "3",
               "TEST.EMBEDDING_PLOT", "4"]  # fmt: skip
    opts = [*tiny(trained.parent, out), "TEST.WEIGHT", str(trained / "best.pth"), *options]
    result = run_tool("test.py", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and len(metrics["cmc"]) == 50
    assert len(list((out / "visual" / "ranked").glob("*.png"))) == 3
    assert (out / "visual" / "cmc.png").is_file()
    with Image.open(out / "visual" / "embedding.png") as picture:
        assert picture.size == (800, 800) and len(picture.getcolors(2**16)) > 4  # drawn points
    projector = out / "test" / "tensorboard" / "projector_config.pbtxt"
    assert "test_features" in projector.read_text()
    (tensors,) = (out / "test" / "tensorboard").glob("*/test_features/tensors.tsv")
    assert len(tensors.read_text().splitlines()) > 4  # 4 identities, query and gallery


def test_cuhk03_and_every_protocol_switch_through_test_py(trained: Path, tmp_path: Path) -> None:
    """CUHK03-NP (labeled crops), the official AP and alpha-QE, chosen from the config,
    reach the ranking: tools/test.py gives what the evaluation functions give."""
    write_cuhk03_np(tmp_path / "cuhk03-np")
    switches = ["DATASETS.NAMES", "[cuhk03]", "DATASETS.ROOT", str(tmp_path),
                "DATASETS.CUHK03_LABELED", "true", "TEST.AP", "official",
                "TEST.AQE", "true", "TEST.AQE_K", "3"]  # fmt: skip
    opts = [
        *tiny(trained.parent, tmp_path / "out"),
        *switches,
        "TEST.WEIGHT",
        str(trained / "best.pth"),
    ]
    result = run_tool("test.py", "--config", "configs/demo.yml", *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    tested = json.loads((tmp_path / "out" / "test" / "metrics.json").read_text())

    cfg = load_cfg("configs/demo.yml", opts)
    dataset = build_dataset(cfg, "cuhk03")
    assert "/labeled/" in dataset.query[0].path
    loader, num_query = build_test_loader(cfg, dataset)
    model = build_trained_model(cfg, cfg.TEST.WEIGHT)
    feats, pids, camids = extract_features(model, loader, torch.device("cpu"))
    for ap in ("official", "standard"):
        options = EvalOptions(ap=ap, aqe=AqeOptions(k=3, alpha=3.0))
        cmc, mean_ap, mean_inp = Ranking(feats, pids, camids, num_query, options).metrics()
        assert (tested["mAP"] == pytest.approx(mean_ap, abs=1e-6)) is (ap == "official")
    assert tested["rank1"] == pytest.approx(cmc[0], abs=1e-6)
