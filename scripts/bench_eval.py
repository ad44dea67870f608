"""Times ``evaluate_rank`` on random problems the size of Market-1501 (and MSMT17).

Usage (with the package installed, ``pip install -e .``, or ``PYTHONPATH=.``):
    python scripts/bench_eval.py                 # Market-1501 size, 3,368 x 15,913
    python scripts/bench_eval.py --msmt          # also MSMT17 size, 11,659 x 82,161 (~3.8 GB)
    python scripts/bench_eval.py --reference-queries 0   # skip the per-query baseline

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
import os
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from reid.evaluation.metrics import evaluate_rank


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
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    special = rng.permutation(num_gallery)[: num_distractors + num_junk]
    g_pids[special[:num_distractors]] = 0
    g_pids[special[num_distractors:]] = -1
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    # Drawn straight in float32: a float64 draw would double the peak memory for MSMT.
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    return Problem(name, distmat, q_pids, g_pids, q_camids, g_camids)


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
    args = parser.parse_args()

    print(f"CPUs available: {len(os.sched_getaffinity(0))}")
    market = make_problem("Market-1501 size", 3368, 15913, 750, 6, 2793, 800, args.seed)
    bench(market, args)
    del market
    if args.msmt:
        msmt = make_problem("MSMT17 size", 11659, 82161, 3060, 15, 0, 0, args.seed)
        bench(msmt, args)


if __name__ == "__main__":
    main()
