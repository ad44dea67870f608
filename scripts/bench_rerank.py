"""Times ``re_ranking`` on random features the size of Market-1501 or MSMT17.

Usage (with the package installed, ``pip install -e .``, or ``PYTHONPATH=.``):
    python scripts/bench_rerank.py --size market              # 3,368 + 15,913 images
    python scripts/bench_rerank.py --size market --reference  # also the dense reference
    python scripts/bench_rerank.py --size msmt                # 11,659 + 82,161 images
    python scripts/bench_rerank.py --size small --reference   # 300 + 1,200, a quick check

Features are clustered like a real test split: every identity is a random direction,
each image of it that direction plus gaussian noise (cosine to the centre about 0.8),
L2-normalised; a share of the gallery are distractors with an identity of their own.

Every measurement runs in a fresh subprocess, so that peaks do not mix: it builds the
features, then times one call. Reported: wall time, CPU time of the process (all
threads; CPU / wall above 1 means both cores worked), peak resident memory
(``ru_maxrss``, the whole process: Python, torch, the inputs and the output included)
and the resident memory just before the call, plus the load average, because the
machine may be shared. With ``--reference`` the dense reference of
``tests/test_rerank.py`` (full N x N matrices, per-sample loops, float32) is timed the
same way and the two results are compared; it needs about 30 * N^2 bytes
(~11 GB at Market size, 8 GB measured) and is refused when less memory is available.
At Market size a few samples have a near-tie at a neighbour-list cut (below float32
rounding), which the two float32 GEMMs resolve differently: the rows they touch then
differ by up to ~1e-2 (see "Precision" in ``reid/evaluation/rerank.py``), so the
comparison reports how many entries and query rows differ by more than 1e-4.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {
    # name: (queries, gallery images, identities)
    "small": (300, 1_200, 100),
    "market": (3_368, 15_913, 750),
    "msmt": (11_659, 82_161, 3_060),
}
DISTRACTOR_SHARE = 0.15
NOISE = 0.75  # per-dimension std relative to the centre's: cosine ~ 1 / sqrt(1 + NOISE^2)
REPO = Path(__file__).resolve().parents[1]


def make_features(
    num_query: int, num_gallery: int, num_ids: int, dim: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered, L2-normalised float32 features: (Q, D) queries and (G, D) gallery."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    q_ids = rng.integers(0, num_ids, num_query)
    g_ids = rng.integers(0, num_ids, num_gallery)
    distractor = rng.random(num_gallery) < DISTRACTOR_SHARE
    feats = []
    # In chunks and straight in float32: MSMT size is 770 MB of features.
    for ids, is_distractor in ((q_ids, np.zeros(num_query, bool)), (g_ids, distractor)):
        out = np.empty((len(ids), dim), dtype=np.float32)
        for s in range(0, len(ids), 4096):
            sel = slice(s, s + 4096)
            chunk = NOISE * rng.standard_normal((len(ids[sel]), dim), dtype=np.float32)
            own = ~is_distractor[sel]
            chunk[own] += centres[ids[sel][own]]
            # A distractor is a lone identity: its own centre, drawn fresh.
            chunk[~own] += rng.standard_normal((int((~own).sum()), dim), dtype=np.float32)
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            out[sel] = chunk
        feats.append(out)
    return feats[0], feats[1]


def load_reference():
    """The dense reference implementation from tests/test_rerank.py."""
    spec = importlib.util.spec_from_file_location("test_rerank", REPO / "tests" / "test_rerank.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_re_ranking


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line last."""
    import torch

    from reid.evaluation.rerank import re_ranking

    logging.basicConfig(level=logging.DEBUG, format="    %(message)s", stream=sys.stderr)
    logging.getLogger("reid.evaluation.rerank").setLevel(logging.DEBUG)
    num_query, num_gallery, num_ids = SIZES[args.size]
    query, gallery = make_features(num_query, num_gallery, num_ids, args.dim)
    if args.worker == "reference":
        reference = load_reference()

        def run() -> np.ndarray:
            return reference(query, gallery, args.k1, args.k2, args.lambda_value)
    else:

        def run() -> np.ndarray:
            return re_ranking(
                query, gallery, args.k1, args.k2, args.lambda_value, device=args.device
            )

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.save:
        np.save(args.save, result)
    record = {
        "impl": args.worker,
        "size": args.size,
        "num_query": num_query,
        "num_gallery": num_gallery,
        "dim": args.dim,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_gb": round(peak, 3),
        "rss_before_call_gb": round(rss_before, 3),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
        "device": args.device,
    }
    print(json.dumps(record), flush=True)


def measure(impl: str, args: argparse.Namespace, save: str) -> dict:
    """Runs one measurement in a fresh interpreter and returns its record."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        impl,
        "--size",
        args.size,
        "--dim",
        str(args.dim),
        "--k1",
        str(args.k1),
        "--k2",
        str(args.k2),
        "--lambda-value",
        str(args.lambda_value),
        "--device",
        args.device,
        "--save",
        save,
    ]
    python_path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in python_path if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{impl} run failed:\n{proc.stderr}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{impl:>9}: wall {record['wall_s']:8.2f} s  cpu {record['cpu_s']:8.2f} s  "
        f"peak RSS {record['peak_rss_gb']:6.2f} GB  (RSS before call "
        f"{record['rss_before_call_gb']:.2f} GB; load {record['load_before']:.2f} -> "
        f"{record['load_after']:.2f}; {record['threads']} torch threads, {record['device']})",
        flush=True,
    )
    print(proc.stderr, end="", flush=True)  # the stage timings logged by re_ranking
    return record


def available_gb() -> float:
    """MemAvailable from /proc/meminfo, in GiB (inf where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="market")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--reference", action="store_true", help="also time the dense reference (~30 N^2 bytes)"
    )
    parser.add_argument("--worker", choices=["fast", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    num_query, num_gallery, _ = SIZES[args.size]
    num_all = num_query + num_gallery
    print(
        f"re_ranking at {args.size} size: {num_query:,} queries + {num_gallery:,} gallery, "
        f"{args.dim}-d, k1={args.k1} k2={args.k2} lambda={args.lambda_value}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        fast = measure("fast", args, os.path.join(tmp, "fast.npy"))
        if not args.reference:
            return
        need_gb = 30 * num_all**2 / 2**30
        if need_gb > available_gb():
            print(f"reference skipped: needs ~{need_gb:.1f} GB, {available_gb():.1f} GB available")
            return
        ref = measure("reference", args, os.path.join(tmp, "reference.npy"))
        fast_out = np.load(os.path.join(tmp, "fast.npy"))
        diff = np.abs(fast_out - np.load(os.path.join(tmp, "reference.npy")))
        off = diff > 1e-4
        print(
            f"speed-up {ref['wall_s'] / fast['wall_s']:.1f}x wall, "
            f"{ref['cpu_s'] / fast['cpu_s']:.1f}x CPU; peak memory "
            f"{fast['peak_rss_gb'] / ref['peak_rss_gb']:.2f} of the reference's\n"
            f"max |fast - reference| = {diff.max():.2e}; entries off by > 1e-4: "
            f"{off.sum():,} of {off.size:,} ({off.mean():.1e}), in {off.any(axis=1).sum():,} "
            f"of {len(off):,} query rows; median |diff| {np.median(diff):.1e}"
        )


if __name__ == "__main__":
    main()
