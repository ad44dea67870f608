"""Times ``evaluate_rank`` on random problems the size of Market-1501 (and MSMT17).

Usage (with the package installed, ``pip install -e .``, or ``PYTHONPATH=.``):
    python scripts/bench_eval.py                 # Market-1501 size, 3,368 x 15,913
    python scripts/bench_eval.py --msmt          # also MSMT17 size, 11,659 x 82,161 (~3.8 GB)
    python scripts/bench_eval.py --reference-queries 0   # skip the per-query baseline
    python scripts/bench_eval.py --features      # evaluate_features from 2048-d features
    python scripts/bench_eval.py --features --msmt --check   # also MSMT17 size; verify

Features mode: each size runs in a fresh Python subprocess, so its peak RSS
(``ru_maxrss``: the process high-water mark, the features, torch and numpy included)
belongs to that size alone. Features are clustered by identity, shifted per camera
and L2-normalised (see :func:`make_features`); the ranking is realistic (rank-1 ~0.98,
mAP 0.6-0.7) rather than the uniform worst case. ``--check`` then compares with
``evaluate_rank(pairwise_distance(...))`` on the full matrix (Market) or on the first
``--check-queries`` queries (MSMT17, whose full matrix would be 3.8 GB); it runs after
the peak RSS is read, so it does not inflate it.

Labels are drawn like the real test splits (identities, cameras, distractors with
pid 0, junk with pid -1) and distances are uniform float32, which puts correct
matches anywhere in the ranking: the worst case for the ranking code.

Extra memory is the ``tracemalloc`` peak during one call, with the inputs already
built. numpy reports its buffers to tracemalloc, so this counts every array the
evaluation allocates (chunk copies included, on every thread); it is measured in a
separate call because tracing slows the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from reid.evaluation.metrics import evaluate_rank

# Label layouts of the two test splits: (num_query, num_gallery, num_ids, num_cams,
# num_distractors, num_junk).
SIZES = {
    "market": ("Market-1501 size", (3368, 15913, 750, 6, 2793, 800)),
    "msmt": ("MSMT17 size", (11659, 82161, 3060, 15, 0, 0)),
}


@dataclass
class Problem:
    """A random ranking problem; distmat is (num_query, num_gallery) float32."""

    name: str
    distmat: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


def make_problem(
    name: str,
    num_query: int,
    num_gallery: int,
    num_ids: int,
    num_cams: int,
    num_distractors: int,
    num_junk: int,
    seed: int,
) -> Problem:
    """Draws labels like a ReID test split and uniform float32 distances."""
    rng = np.random.default_rng(seed)
    labels = draw_labels(rng, num_query, num_gallery, num_ids, num_cams, num_distractors, num_junk)
    # Drawn straight in float32: a float64 draw would double the peak memory for MSMT.
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    return Problem(name, distmat, *labels)


def draw_labels(
    rng: np.random.Generator,
    num_query: int,
    num_gallery: int,
    num_ids: int,
    num_cams: int,
    num_distractors: int,
    num_junk: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Identities (distractors 0, junk -1) and cameras like a ReID test split.

    Returns:
        ``(q_pids (num_query,), g_pids (num_gallery,), q_camids, g_camids)``.
    """
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    special = rng.permutation(num_gallery)[: num_distractors + num_junk]
    g_pids[special[:num_distractors]] = 0
    g_pids[special[num_distractors:]] = -1
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    return q_pids, g_pids, q_camids, g_camids


def make_features(
    rng: np.random.Generator,
    pids: np.ndarray,
    camids: np.ndarray,
    centers: np.ndarray,
    cam_shifts: np.ndarray,
    noise: float,
) -> np.ndarray:
    """Unit-length float32 features: identity center + camera shift + Gaussian noise.

    Distractors and junk (pid <= 0) each get a center of their own, i.e. look like a
    random other person. Built a few thousand rows at a time, so the only large
    allocation is the (N, dim) result.

    Args:
        pids, camids: (N,) labels.
        centers: (num_ids + 1, dim) identity centers, indexed by pid.
        cam_shifts: (num_cams, dim) per-camera offsets.
        noise: standard deviation of the per-image noise, per dimension.

    Returns:
        (N, dim) float32, each row L2-normalised.
    """
    dim = centers.shape[1]
    out = np.empty((pids.size, dim), dtype=np.float32)
    for start in range(0, pids.size, 4096):
        p, c = pids[start : start + 4096], camids[start : start + 4096]
        block = rng.standard_normal((p.size, dim), dtype=np.float32)
        block *= noise
        known = p > 0
        block[known] += centers[p[known]]
        block[~known] += rng.standard_normal((int((~known).sum()), dim), dtype=np.float32)
        block += cam_shifts[c]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + p.size] = block
    return out


def reference_numpy(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> tuple[np.ndarray, float, float]:
    """A plain per-query evaluator: stable argsort of every row, then filter.

    The usual numpy loop of Bag-of-Tricks-style code, with junk removal and mINP.

    Returns:
        ``(cmc (max_rank,), mAP, mINP)`` over the queries with a correct match.
    """
    cmcs, aps, inps = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        pids, cams = g_pids[order], g_camids[order]
        keep = (pids != -1) & ~((pids == q_pids[q]) & (cams == q_camids[q]))
        matches = pids[keep] == q_pids[q]
        if not matches.any():
            continue
        hits = np.cumsum(matches)
        ranks = np.flatnonzero(matches) + 1
        cmc = (hits[:max_rank] > 0).astype(np.float64)
        if cmc.size < max_rank:
            cmc = np.pad(cmc, (0, max_rank - cmc.size), constant_values=1.0)
        cmcs.append(cmc)
        aps.append(np.mean(hits[matches] / ranks))
        inps.append(hits[-1] / ranks[-1])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


def time_best(fn, repeats: int) -> tuple[float, float, object]:
    """Best wall time over ``repeats`` calls, the CPU time of that call, the last result.

    CPU time sums all threads of this process; on a machine shared with other jobs it
    is the steadier figure, and wall time approaches CPU time / cores when idle.
    """
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if wall < best:
            best, best_cpu = wall, cpu
    return best, best_cpu, result


def bench(problem: Problem, args: argparse.Namespace) -> None:
    """Prints time, extra memory and (optionally) the speedup over the baseline."""
    labels = (problem.q_pids, problem.g_pids, problem.q_camids, problem.g_camids)
    kwargs = {"chunk_size": args.chunk_size, "num_workers": args.workers}
    mib = problem.distmat.nbytes / 2**20
    print(f"\n== {problem.name}: distmat {problem.distmat.shape} float32 ({mib:,.0f} MiB)")

    def run() -> tuple[np.ndarray, float, float]:
        return evaluate_rank(problem.distmat, *labels, max_rank=50, **kwargs)

    seconds, cpu, (cmc, mean_ap, minp) = time_best(run, args.repeats)
    print(f"evaluate_rank: {seconds:.3f} s wall (best of {args.repeats}), {cpu:.3f} s CPU")
    print(f"  rank-1 {cmc[0]:.5f}  rank-10 {cmc[9]:.5f}  mAP {mean_ap:.6f}  mINP {minp:.6f}")

    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_mib = peak / 2**20
    share = peak_mib / mib
    print(f"  peak extra memory (tracemalloc): {peak_mib:.1f} MiB ({share:.1%} of distmat)")

    if args.reference_queries > 0:
        n = min(args.reference_queries, problem.distmat.shape[0])
        subset = (problem.distmat[:n], problem.q_pids[:n], problem.g_pids)
        subset += (problem.q_camids[:n], problem.g_camids)
        ref_seconds, _, ref = time_best(lambda: reference_numpy(*subset, max_rank=50), 1)
        ours = evaluate_rank(*subset, max_rank=50, **kwargs)
        same = np.allclose(ref[0], ours[0], atol=1e-12) and np.allclose(
            ref[1:], ours[1:], atol=1e-9
        )
        full = ref_seconds * problem.distmat.shape[0] / n
        print(
            f"per-query numpy baseline: {ref_seconds:.2f} s on {n} queries -> ~{full:.1f} s "
            f"for all ({full / seconds:.0f}x slower); same numbers on the subset: {same}"
        )


def peak_rss_mib() -> float:
    """This process's high-water resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set size now, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def features_child(args: argparse.Namespace) -> None:
    """Runs one features-mode size in this (fresh) process; prints one JSON line."""
    import torch

    from reid.evaluation.feature_ranking import evaluate_features, pairwise_distance

    name, sizes = SIZES[args.features_child]
    rss_start = current_rss_mib()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    q_pids, g_pids, q_camids, g_camids = draw_labels(rng, *sizes)
    num_ids, num_cams = sizes[2], sizes[3]
    centers = rng.standard_normal((num_ids + 1, args.dim), dtype=np.float32)
    cam_shifts = args.cam_shift * rng.standard_normal((num_cams, args.dim), dtype=np.float32)
    query = make_features(rng, q_pids, q_camids, centers, cam_shifts, args.noise)
    gallery = make_features(rng, g_pids, g_camids, centers, cam_shifts, args.noise)
    build_seconds = time.perf_counter() - start
    labels = (q_pids, g_pids, q_camids, g_camids)
    rss_built = current_rss_mib()
    load_before = os.getloadavg()

    def run() -> tuple[np.ndarray, float, float]:
        return evaluate_features(
            query,
            gallery,
            *labels,
            metric=args.metric,
            device=args.device,
            chunk_size=args.chunk_size,
            num_workers=args.workers,
        )

    seconds, cpu, (cmc, mean_ap, minp) = time_best(run, args.repeats)
    report = {
        "name": name,
        "shape": [int(query.shape[0]), int(gallery.shape[0]), args.dim],
        "feature_mib": (query.nbytes + gallery.nbytes) / 2**20,
        "build_s": build_seconds,
        "wall_s": seconds,
        "cpu_s": cpu,
        "repeats": args.repeats,
        "rss_start_mib": rss_start,
        "rss_built_mib": rss_built,
        "peak_rss_mib": peak_rss_mib(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "rank1": float(cmc[0]),
        "rank10": float(cmc[9]),
        "mAP": mean_ap,
        "mINP": minp,
    }
    if args.check:
        n = min(args.check_queries, query.shape[0]) if query.shape[0] > 5000 else query.shape[0]
        sub = (query[:n], gallery, q_pids[:n], g_pids, q_camids[:n], g_camids)
        distmat = pairwise_distance(sub[0], gallery, args.metric, device=args.device)
        expected = evaluate_rank(distmat, *sub[2:])
        del distmat
        got = evaluate_features(*sub, metric=args.metric, device=args.device)
        same = np.array_equal(got[0], expected[0]) and got[1:] == expected[1:]
        report["check"] = f"{'identical' if same else 'DIFFERENT'} on {n} queries"
    print(json.dumps(report))


def bench_features(size: str, repeats: int, args: argparse.Namespace) -> None:
    """Runs ``features_child`` for one size in a fresh interpreter and prints its figures."""
    command = [sys.executable, os.path.abspath(__file__), "--features-child", size]
    command += ["--repeats", str(repeats), "--seed", str(args.seed), "--dim", str(args.dim)]
    command += ["--metric", args.metric, "--noise", str(args.noise)]
    command += ["--cam-shift", str(args.cam_shift)]
    command += ["--check-queries", str(args.check_queries)]
    for flag, value in (("--device", args.device), ("--chunk-size", args.chunk_size)):
        if value is not None:
            command += [flag, str(value)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.check:
        command.append("--check")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"features run for {size} failed:\n{done.stderr}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    q, g, dim = r["shape"]
    print(
        f"\n== {r['name']} from features: {q:,} x {g:,}, {dim}-d float32 "
        f"({r['feature_mib']:,.0f} MiB of features), metric {args.metric}, "
        f"device {args.device or 'default'}"
    )
    print(
        f"evaluate_features: {r['wall_s']:.2f} s wall (best of {r['repeats']}), "
        f"{r['cpu_s']:.2f} s CPU, torch threads {r['torch_threads']}"
    )
    scores = f"rank-1 {r['rank1']:.4f}  rank-10 {r['rank10']:.4f}  mAP {r['mAP']:.4f}"
    print(f"  {scores}  mINP {r['mINP']:.4f}")
    print(
        f"  RSS: {r['rss_start_mib']:,.0f} MiB after imports, {r['rss_built_mib']:,.0f} MiB "
        f"with features built ({r['build_s']:.1f} s), peak {r['peak_rss_mib']:,.0f} MiB "
        "(process max RSS)"
    )
    before, after = (" ".join(f"{x:.2f}" for x in r[k]) for k in ("load_before", "load_after"))
    print(f"  load average before: {before}; after: {after}")
    if "check" in r:
        print(f"  vs evaluate_rank(pairwise_distance(...)): {r['check']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--msmt", action="store_true", help="also run the MSMT17-size problem")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the best is shown")
    parser.add_argument("--chunk-size", type=int, default=None, help="queries per chunk")
    parser.add_argument("--workers", type=int, default=None, help="threads (default: all CPUs)")
    parser.add_argument(
        "--reference-queries",
        type=int,
        default=300,
        help="queries for the per-query numpy baseline (0 = skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    features = parser.add_argument_group("features mode")
    features.add_argument(
        "--features", action="store_true", help="time evaluate_features, one subprocess per size"
    )
    features.add_argument("--features-child", choices=sorted(SIZES), help=argparse.SUPPRESS)
    features.add_argument("--dim", type=int, default=2048, help="feature dimension")
    features.add_argument("--metric", default="cosine", help="cosine or euclidean")
    features.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    features.add_argument("--noise", type=float, default=3.2, help="per-image noise scale")
    features.add_argument("--cam-shift", type=float, default=0.4, help="per-camera shift scale")
    features.add_argument("--check", action="store_true", help="verify against the full matrix")
    features.add_argument(
        "--check-queries", type=int, default=1000, help="MSMT17 queries checked by --check"
    )
    args = parser.parse_args()

    if args.features_child:
        features_child(args)
        return
    print(f"CPUs available: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()}")
    if args.features:
        bench_features("market", args.repeats, args)
        if args.msmt:
            bench_features("msmt", 1, args)  # about a minute on 2 cores; one run is enough
        return
    market = make_problem(SIZES["market"][0], *SIZES["market"][1], args.seed)
    bench(market, args)
    del market
    if args.msmt:
        msmt = make_problem(SIZES["msmt"][0], *SIZES["msmt"][1], args.seed)
        bench(msmt, args)


if __name__ == "__main__":
    main()
