"""Real training steps of any recipe, and where their time goes:

    python scripts/bench_train.py --config FILE [KEY VALUE ...] [--iters 30] [--warmup 5]
        [--variants per-image fast]

Each variant is the recipe with a few keys set, measured in a process of its own:

- per-image: DATALOADER.CACHE none, INPUT.BATCH_AUGMENT False, SOLVER.LOG_PERIOD 1: every
  image decoded and augmented one by one at every epoch, every logged value read back
  at every step (the training path before these keys existed);
- fast: DATALOADER.CACHE ram, INPUT.BATCH_AUGMENT True, SOLVER.LOG_PERIOD 20;
- as-is: the recipe as given.

After --warmup iterations (workers started, the cache built), --iters iterations of the
Trainer's own loop are timed. Printed per variant: training images per second (per
process), the fraction of the time spent waiting for the loader, the rest per iteration
(forward, backward, optimizer step and logging), and peak memory: the CUDA allocator's
on a GPU, the process's resident memory on the CPU (loader workers not included).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from reid.config import load_cfg
from reid.data import build_run_data
from reid.engine.build import build_trainer
from reid.utils import distributed
from reid.utils.env import resolve_device, seed_everything

VARIANTS = {
    "per-image": [
        "DATALOADER.CACHE", "none", "INPUT.BATCH_AUGMENT", "False", "SOLVER.LOG_PERIOD", "1",
    ],
    "fast": ["DATALOADER.CACHE", "ram", "INPUT.BATCH_AUGMENT", "True", "SOLVER.LOG_PERIOD", "20"],
    "as-is": [],
}  # fmt: skip


class TimedBatches:
    """The first ``limit`` batches of a training loader, with the time spent waiting for
    them; what the Trainer needs of a loader."""

    def __init__(self, loader, limit: int) -> None:
        self.loader, self.limit, self.wait = loader, limit, 0.0
        self.batch_sampler = loader.batch_sampler

    def __len__(self) -> int:
        return min(self.limit, len(self.loader))

    def __iter__(self):
        batches = iter(self.loader)
        for _ in range(len(self)):
            start = time.perf_counter()
            batch = next(batches)
            self.wait += time.perf_counter() - start
            yield batch


def measure(config: str, opts: list[str], iters: int, warmup: int) -> dict:
    """One variant's figures, in this process."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_cfg(config, [*opts, "OUTPUT_DIR", out])
        device = resolve_device(cfg.MODEL.DEVICE)
        seed_everything(cfg.SEED)
        start = time.perf_counter()
        data = build_run_data(cfg)
        trainer = build_trainer(cfg, data, device, out)
        loader = trainer.train_loader
        trainer.train_loader = TimedBatches(loader, warmup)
        trainer.train_one_epoch(0)
        setup = time.perf_counter() - start
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timed = trainer.train_loader = TimedBatches(loader, iters)
        start = time.perf_counter()
        trainer.train_one_epoch(1)
        if on_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        iterations = len(timed)
        if on_cuda:
            peak = torch.cuda.max_memory_allocated()
        else:  # kilobytes on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "device": str(device),
            "images/s": iterations * cfg.SOLVER.IMS_PER_BATCH / distributed.world_size() / elapsed,
            "data wait": timed.wait / elapsed,
            "step ms": 1000 * (elapsed - timed.wait) / iterations,
            "peak MB": peak / 2**20,
            "setup s": setup,
            "iterations": iterations,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides of the recipe")
    parser.add_argument("--iters", type=int, default=30, help="iterations timed")
    parser.add_argument("--warmup", type=int, default=5, help="iterations before the timing")
    parser.add_argument("--variants", nargs="+", default=["per-image", "fast"], choices=VARIANTS)
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # a child's variant
    args = parser.parse_args()
    if args.one:
        opts = [*args.opts, *VARIANTS[args.one]]
        print(json.dumps(measure(args.config, opts, args.iters, args.warmup)))
        return

    rows = []
    for variant in args.variants:
        command = [sys.executable, str(Path(__file__).resolve()), "--config", args.config]
        command += [*args.opts, "--iters", str(args.iters), "--warmup", str(args.warmup)]
        child = subprocess.run([*command, "--one", variant], capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"{variant}: {child.stderr.strip().splitlines()[-1]}")
        rows.append((variant, json.loads(child.stdout.strip().splitlines()[-1])))
    overrides = " ".join(args.opts)
    print(f"{args.config} {overrides} on {rows[0][1]['device']}, {torch.get_num_threads()} threads")
    print("| variant | images/s | data wait | step ms | peak MB | setup s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, row in rows:
        print(
            f"| {variant} | {row['images/s']:.1f} | {100 * row['data wait']:.0f}% | "
            f"{row['step ms']:.0f} | {row['peak MB']:.0f} | {row['setup s']:.1f} |"
        )


if __name__ == "__main__":
    main()
