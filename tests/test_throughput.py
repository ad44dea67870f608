"""The training-throughput options change how fast training runs, never what it computes:
the decoded-image cache, batch augmentation on the device and the logging period give
the same metrics as the per-image path read back at every step; the loader keys reach
the DataLoader; scripts/bench_train.py measures any recipe."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tiny_run import ROOT, SCHEDULE, TINY, run_tool, tiny

from reid.config import load_cfg
from reid.data import Record, build_train_loader


@pytest.mark.slow
def test_cache_batch_augment_and_log_period_leave_training_unchanged(trained: Path) -> None:
    """``trained`` reads its logged values every 20 iterations and loads per image."""
    expected = (trained / "metrics.json").read_text()
    variants = {
        "every_step": ["SOLVER.LOG_PERIOD", "1"],
        "fast": ["DATALOADER.CACHE", "ram", "INPUT.BATCH_AUGMENT", "True"],  # LOG_PERIOD 20
    }
    for name, opts in variants.items():
        out = trained.parent / name
        args = ["--config", "configs/demo.yml", *tiny(trained.parent, out), *SCHEDULE, *opts]
        result = run_tool("train.py", *args)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / "metrics.json").read_text() == expected, name
    cache = list((trained.parent / "data" / ".reid_cache").glob("decoded-*.npy"))
    assert len(cache) == 1  # built beside the dataset


def test_the_loader_keys_reach_the_dataloader(tmp_path: Path) -> None:
    path = tmp_path / "person.png"
    Image.new("RGB", (16, 32)).save(path)
    records = [Record(str(path), pid, 0) for pid in (0, 0, 1, 1)]
    opts = ["SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "2"]
    with_workers = opts + ["DATALOADER.NUM_WORKERS", "2", "DATALOADER.PREFETCH_FACTOR", "3"]
    loader = build_train_loader(load_cfg(opts=with_workers), records)
    assert loader.persistent_workers and loader.prefetch_factor == 3
    # Page-locked memory only serves copies to a GPU.
    assert not loader.pin_memory  # no CUDA here, whatever the key says
    off = with_workers + ["DATALOADER.PERSISTENT_WORKERS", "False"]
    assert not build_train_loader(load_cfg(opts=off), records).persistent_workers
    # Without workers there is nothing to keep or prefetch.
    main_process = build_train_loader(
        load_cfg(opts=[*opts, "DATALOADER.NUM_WORKERS", "0"]), records
    )
    assert not main_process.persistent_workers and main_process.prefetch_factor is None


@pytest.mark.slow
def test_bench_train_prints_each_variant(tmp_path: Path) -> None:
    opts = [*TINY, "DATASETS.ROOT", str(tmp_path / "data"), "DATALOADER.NUM_WORKERS", "0"]
    command = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--config"]
    command += ["configs/demo.yml", *opts, "--iters", "2", "--warmup", "1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row[1].strip() for row in rows[2:]] == ["per-image", "fast"]  # after the header
    for row in rows[2:]:
        images_per_second, wait = float(row[2]), float(row[3].strip().rstrip("%"))
        assert images_per_second > 0 and 0 <= wait <= 100
