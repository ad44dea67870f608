"""Exact ranking metrics for re-identification: CMC, mAP and mINP.

Everything here is a pure function of a query-by-gallery distance matrix and the
identity / camera labels; nothing is read or written.

How the fast path works
-----------------------
CMC, AP (both conventions) and INP of a query depend only on the 1-based ranks
``r_1 < r_2 < ... < r_n`` of its ``n`` correct matches in the filtered ranking:
precision at the ``i``-th hit is ``i / r_i``, the first hit is at ``r_1`` and the
last at ``r_n``. So no row is ever argsorted. For a chunk of queries we copy the
non-junk columns, sort the *values* of each row (numpy's vectorised sort, several
times faster than an argsort) and binary-search each correct match's distance in
its sorted row to count the items in front of it. The few items of the query's
own identity (its correct matches and its same-camera images) are ranked among
themselves directly, which removes the same-camera images from the count without
touching the rest of the row. Chunks run on a small thread pool; numpy releases
the GIL in the copy and the sort, which dominate.

:class:`MarketRanker` is that per-chunk step on its own, for callers that never hold
the whole distance matrix (``reid.evaluation.feature_ranking`` computes it from
features one block of queries at a time and feeds each block here).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reid.errors import InputError

logger = logging.getLogger(__name__)

AP_CONVENTIONS = ("standard", "official")
PROTOCOLS = ("market1501", "cuhk03")

JUNK_PID = -1
CUHK03_REPEATS = 10

# Per-worker budget for the copied block of rows; a handful of these is the whole
# extra memory of the fast path, far below the distance matrix itself.
_CHUNK_BYTES = 8 * 2**20


@dataclass
class _PerQuery:
    """Per-query statistics from which every metric is an average.

    All arrays have shape (num_query,). ``num_pos == 0`` marks a skipped query; its
    other entries are left at zero.
    """

    num_pos: np.ndarray  # int64, correct matches left after filtering
    first_rank: np.ndarray  # int64, 1-based rank of the first correct match
    last_rank: np.ndarray  # int64, 1-based rank of the last correct match
    ap_standard: np.ndarray  # float64
    ap_official: np.ndarray  # float64

    @classmethod
    def zeros(cls, num_query: int) -> _PerQuery:
        """All queries marked skipped until their rows are ranked."""
        return cls(
            num_pos=np.zeros(num_query, dtype=np.int64),
            first_rank=np.zeros(num_query, dtype=np.int64),
            last_rank=np.zeros(num_query, dtype=np.int64),
            ap_standard=np.zeros(num_query, dtype=np.float64),
            ap_official=np.zeros(num_query, dtype=np.float64),
        )

    def store(self, start: int, values: tuple[np.ndarray, ...]) -> None:
        """Writes the (n,) arrays of :func:`_chunk_stats` for queries ``start:start+n``."""
        outs = (self.num_pos, self.first_rank, self.last_rank, self.ap_standard, self.ap_official)
        for out, value in zip(outs, values, strict=True):
            out[start : start + value.shape[0]] = value


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
    ap: str = "standard",
    protocol: str = "market1501",
    *,
    chunk_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float, float]:
    """Computes CMC, mAP and mINP of a ranking under the Market-1501 or CUHK03 protocol.

    Filtering (both protocols): for each query, gallery items with pid -1 (junk)
    and items with the query's pid *and* camera are removed from its ranking;
    distractors (pid 0) stay and count as wrong matches. Correct matches are the
    remaining items with the query's pid. A query left with no correct match is
    skipped (the count is logged as a warning) and all averages are over the valid
    queries.

    Ties: the ranking is a stable sort by distance, so among equal distances the
    item that comes first in the gallery ranks first. The result is exactly what
    ``np.argsort(row, kind="stable")`` followed by filtering gives.

    AP conventions, with ``r_i`` the 1-based rank of the ``i``-th of ``n`` hits:

    - ``"standard"``: ``AP = (1/n) * sum_i i / r_i``, the mean precision at the hits.
      This is what Bag-of-Tricks, FastReID and Torchreid report, and equals
      scikit-learn's ``average_precision_score`` when there are no ties.
    - ``"official"``: the official Market-1501 MATLAB code (``compute_AP.m``)
      integrates the precision-recall curve with the trapezoid rule, so each hit
      contributes the mean of the precision at its rank and at the rank before:
      ``AP = (1/n) * sum_i (i / r_i + (i - 1) / (r_i - 1)) / 2``, with the second
      term taken as 1 when ``r_i == 1``. It is never above the standard AP and
      equals it only when no miss ranks above a hit; the gap is largest for
      queries with few correct matches (one hit at rank 2: 0.25 vs 0.5).

    mINP (Ye et al., "Deep Learning for Person Re-identification: A Survey and
    Outlook"): per query ``INP = n / r_n``, the precision at the hardest match.

    Protocol ``"cuhk03"``: single-gallery-shot CMC. After the same filtering, for
    each of 10 repeats one gallery image is drawn at random per identity (the
    query's own identity drawn among its correct matches; the generator is seeded
    by ``seed``, so the result is deterministic), and the CMC of that subsampled
    list, ties broken by gallery order as above, is averaged over repeats and
    queries. Distractors (pid 0) are not one identity, so all of them are kept in
    every repeat. mAP and mINP are computed on the full filtered list exactly as
    for Market-1501. The CMC part loops over queries in Python: slower than the
    Market-1501 path, but well under a second at CUHK03 size (1,400 x 5,332).

    Args:
        distmat: (num_query, num_gallery) distances, smaller = more similar. A
            numpy array or a torch tensor on any device; CUDA tensors are copied to
            the host one chunk of rows at a time. Must not contain NaN among the
            non-junk columns.
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 = junk, 0 = distractor.
        q_camids: (num_query,) query camera ids.
        g_camids: (num_gallery,) gallery camera ids.
        max_rank: length of the returned CMC curve. It may exceed the number of
            gallery items; the curve simply stays at its last value.
        ap: ``"standard"`` or ``"official"`` (see above).
        protocol: ``"market1501"`` or ``"cuhk03"``.
        chunk_size: queries processed at once per worker; by default chosen so that
            each worker copies about 8 MiB of distances. Peak extra memory is about
            ``num_workers * chunk_size * num_gallery * itemsize``, plus small
            per-query arrays.
        num_workers: threads for the chunks; defaults to the CPUs available to
            this process.
        seed: seed of the CUHK03 gallery subsampling; unused for Market-1501.

    Returns:
        ``(cmc, mAP, mINP)``: ``cmc`` is a float64 array of shape (max_rank,) with
        ``cmc[k-1]`` the fraction of valid queries whose first correct match is in
        the top ``k``; ``mAP`` and ``mINP`` are floats. All values lie in [0, 1].

    Raises:
        InputError (a ValueError): on mismatched shapes, an unknown ``ap`` or ``protocol``, a
            ``max_rank``, ``chunk_size`` or ``num_workers`` below 1, NaN distances,
            or when no query has a correct match.
    """
    _check_summary_options(max_rank, ap)
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    _check_chunking(chunk_size, num_workers)
    labels = _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids)
    q_pids_np, g_pids_np, q_cams_np, g_cams_np = labels

    ranker = MarketRanker(q_pids_np, g_pids_np, q_cams_np, g_cams_np)
    ranker.add_rows(0, distmat, chunk_size=chunk_size, num_workers=num_workers)
    stats = ranker.stats
    valid = _valid_queries(stats)
    if protocol == "market1501":
        cmc = _market_cmc(stats, valid, max_rank)
    else:
        cmc = _cuhk03_cmc(
            distmat, q_pids_np, g_pids_np, q_cams_np, g_cams_np, valid, max_rank, seed
        )
    return _summarize(stats, valid, cmc, ap)


def _check_summary_options(max_rank: int, ap: str) -> None:
    """Raises ValueError for an unknown ``ap`` or a ``max_rank`` below 1."""
    if ap not in AP_CONVENTIONS:
        raise InputError(f"unknown ap {ap!r}; valid: {', '.join(AP_CONVENTIONS)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise InputError(f"max_rank must be a positive integer, got {max_rank!r}")


def _check_chunking(chunk_size: int | None, num_workers: int | None) -> None:
    """Raises ValueError for a ``chunk_size`` or ``num_workers`` below 1."""
    for name, value in (("chunk_size", chunk_size), ("num_workers", num_workers)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1 or None, got {value}")


def _valid_queries(stats: _PerQuery) -> np.ndarray:
    """(num_query,) bool mask of the queries with a correct match; warns about the rest.

    Raises:
        InputError (a ValueError): when no query has a correct match.
    """
    valid = stats.num_pos > 0
    num_valid = int(valid.sum())
    num_query = valid.size
    if num_valid == 0:
        raise InputError(_no_match_message(num_query))
    if num_valid < num_query:
        logger.warning(
            "%d of %d queries have no correct match in the gallery and were skipped",
            num_query - num_valid,
            num_query,
        )
    return valid


def _no_match_message(num_query: int) -> str:
    return (
        f"no query has a correct match in the gallery (all {num_query} queries skipped): "
        "check that query and gallery pids/camids belong to the same dataset split"
    )


def check_gallery_matches(
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
) -> None:
    """Checks from the labels alone that evaluation will find a correct match.

    A query has one when the gallery holds an item of its pid from another camera
    (junk, pid -1, never matches), the filtering of :func:`evaluate_rank`. Cheap,
    so training can check it before its first epoch.

    Args:
        q_pids, q_camids: (num_query,) query labels.
        g_pids, g_camids: (num_gallery,) gallery labels.

    Raises:
        InputError (a ValueError): no query has a correct match.
    """
    q_pids, g_pids, q_camids, g_camids = (
        _label_array(name, value).tolist()
        for name, value in (
            ("q_pids", q_pids),
            ("g_pids", g_pids),
            ("q_camids", q_camids),
            ("g_camids", g_camids),
        )
    )
    items = [(pid, cam) for pid, cam in zip(g_pids, g_camids, strict=True) if pid != JUNK_PID]
    per_pid = Counter(pid for pid, _ in items)
    per_pid_and_camera = Counter(items)
    if not any(
        pid != JUNK_PID and per_pid[pid] > per_pid_and_camera[(pid, cam)]
        for pid, cam in zip(q_pids, q_camids, strict=True)
    ):
        raise InputError(_no_match_message(len(q_pids)))


def _market_cmc(stats: _PerQuery, valid: np.ndarray, max_rank: int) -> np.ndarray:
    """(max_rank,) CMC over the valid queries from their first-hit ranks."""
    first = stats.first_rank[valid]
    # Bucket first-hit ranks; everything beyond max_rank shares the last bucket.
    hist = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)
    return np.cumsum(hist[:max_rank]) / first.size


def _summarize(
    stats: _PerQuery, valid: np.ndarray, cmc: np.ndarray, ap: str
) -> tuple[np.ndarray, float, float]:
    """``(cmc as float64, mAP, mINP)`` averaged over the valid queries."""
    ap_per_query = stats.ap_standard if ap == "standard" else stats.ap_official
    mean_ap = float(ap_per_query[valid].mean())
    inp = stats.num_pos[valid] / stats.last_rank[valid]
    return cmc.astype(np.float64), mean_ap, float(inp.mean())


# ---------------------------------------------------------------------------
# Input handling


def _label_array(name: str, value: Any) -> np.ndarray:
    """Returns ``value`` as a 1-D numpy array, raising ValueError naming ``name``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    return array


def _check_inputs(
    distmat: Any, q_pids: Any, g_pids: Any, q_camids: Any, g_camids: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validates shapes and returns the four label arrays as numpy.

    Returns:
        ``(q_pids, g_pids, q_camids, g_camids)`` as 1-D numpy arrays of lengths
        num_query, num_gallery, num_query, num_gallery.
    """
    if not isinstance(distmat, (np.ndarray, torch.Tensor)):
        raise InputError(
            f"distmat must be a numpy array or torch tensor, got {type(distmat).__name__}"
        )
    if distmat.ndim != 2:
        raise InputError(
            f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(distmat.shape)}"
        )
    if isinstance(distmat, torch.Tensor):
        is_real = not (distmat.dtype == torch.bool or distmat.is_complex())
    else:
        is_real = np.issubdtype(distmat.dtype, np.integer) or np.issubdtype(
            distmat.dtype, np.floating
        )
    if not is_real:
        raise InputError(f"distmat must hold real numbers, got dtype {distmat.dtype}")
    num_query, num_gallery = (int(n) for n in distmat.shape)
    if num_query == 0 or num_gallery == 0:
        raise InputError(f"distmat is empty: shape ({num_query}, {num_gallery})")

    arrays = []
    for name, value, expected in (
        ("q_pids", q_pids, num_query),
        ("g_pids", g_pids, num_gallery),
        ("q_camids", q_camids, num_query),
        ("g_camids", g_camids, num_gallery),
    ):
        array = _label_array(name, value)
        if array.shape[0] != expected:
            raise InputError(
                f"{name} has shape {tuple(array.shape)} but distmat has shape "
                f"({num_query}, {num_gallery}): expected ({expected},)"
            )
        arrays.append(array)
    q_p, g_p, q_c, g_c = arrays
    return q_p, g_p, q_c, g_c


def _rows(distmat: np.ndarray | torch.Tensor, start: int, stop: int) -> np.ndarray:
    """Returns distmat[start:stop] as a float numpy array, copying only if needed.

    Returns:
        (stop - start, num_gallery) float32 or float64 array. Half precision is
        widened to float32 (exact); integers become float64.
    """
    return _float_block(distmat[start:stop])


def _float_block(block: np.ndarray | torch.Tensor) -> np.ndarray:
    """Returns a block of distances as a host float array (see :func:`_rows`)."""
    if isinstance(block, torch.Tensor):
        block = block.detach()
        if block.dtype in (torch.float16, torch.bfloat16):
            block = block.float()
        block = block.cpu().numpy()
    if block.dtype == np.float16:
        return block.astype(np.float32)
    if not np.issubdtype(block.dtype, np.floating):
        return block.astype(np.float64)
    return block


# ---------------------------------------------------------------------------
# Market-1501 protocol: ranks of the correct matches without sorting indices


@dataclass
class _SamePid:
    """Where each query's own identity sits in the gallery.

    ``order`` (num_gallery,) lists gallery columns sorted by pid, ascending within a
    pid; query ``q``'s same-pid columns are ``order[start[q] : start[q] + count[q]]``.
    """

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    def columns(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Same-pid columns of queries ``first:last``, padded to the widest row.

        Returns:
            ``(cols, count)``: (n, width) int64 columns in increasing gallery order,
            padding slots set to 0, and (n,) the number of real slots per row.
        """
        start, count = self.start[first:last], self.count[first:last]
        # Per chunk, so one query with a huge identity (e.g. a distractor query
        # matching every pid-0 item) widens only its own chunk.
        slot = np.arange(max(int(count.max()), 1))
        positions = np.minimum(start[:, None] + slot, self.order.size - 1)
        return np.where(slot < count[:, None], self.order[positions], 0), count


def _same_pid_items(q_pids: np.ndarray, g_pids: np.ndarray) -> _SamePid:
    """Indexes, per query, the gallery columns whose pid equals the query's pid."""
    order = np.argsort(g_pids, kind="stable")  # stable: columns ascend within a pid
    sorted_pids = g_pids[order]
    start = np.searchsorted(sorted_pids, q_pids, side="left")
    count = np.searchsorted(sorted_pids, q_pids, side="right") - start
    # A junk query pid matches only junk gallery items, which are removed anyway.
    count[q_pids == JUNK_PID] = 0
    return _SamePid(order=order, start=start, count=count.astype(np.int64))


def _count_below(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts the entries of ``sorted_rows[rows[i]]`` strictly smaller than ``values[i]``.

    A branch-free binary search run on all lookups at once (numpy's searchsorted
    handles one row per call).

    Args:
        sorted_rows: (n, m) C-contiguous array, each row ascending.
        rows: (k,) row of each lookup.
        values: (k,) values to look up.

    Returns:
        (k,) int64 counts in [0, m].
    """
    n_cols = sorted_rows.shape[1]
    flat = sorted_rows.reshape(-1)
    row_base = rows.astype(np.int64) * n_cols - 1  # flat index of "entry count - 1"
    count = np.zeros(values.shape, dtype=np.int64)
    step = 1 << (n_cols.bit_length() - 1)
    while step:
        candidate = np.minimum(count + step, n_cols)
        count = np.where(flat[row_base + candidate] < values, candidate, count)
        step >>= 1
    return count


def _chunk_stats(
    block: np.ndarray,
    keep_cols: np.ndarray | None,
    same_cols: np.ndarray,
    same_count: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    g_nonjunk: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Per-query statistics for one block of queries.

    Args:
        block: (n, num_gallery) distances of the block's queries.
        keep_cols: non-junk gallery columns, or None when there is no junk.
        same_cols: (n, width) gallery columns of each query's pid, ascending,
            padded (see :meth:`_SamePid.columns`).
        same_count: (n,) number of real entries in each row of ``same_cols``.
        q_cams: (n,) camera ids of the block's queries.
        g_cams: (num_gallery,) gallery camera ids.
        g_nonjunk: (num_gallery,) bool, False for junk gallery items.

    Returns:
        ``(num_pos, first_rank, last_rank, ap_standard, ap_official)``, each (n,).
    """
    n, width = same_cols.shape
    in_group = np.arange(width) < same_count[:, None]
    values = np.take_along_axis(block, same_cols, axis=1)
    # Padding slots sort last: +inf, and the stable sort keeps them after real +inf.
    values = np.where(in_group, values, np.inf)

    # Rank the same-pid items among themselves by (distance, gallery column); the
    # columns already ascend along each row, so a stable sort on distance does it.
    order = np.argsort(values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    cols = np.take_along_axis(same_cols, order, axis=1)
    in_group = np.take_along_axis(in_group, order, axis=1)
    same_cam = g_cams[cols] == q_cams[:, None]
    is_pos = in_group & ~same_cam
    is_removed = in_group & same_cam
    removed_before = np.cumsum(is_removed, axis=1) - is_removed
    hit_index = np.cumsum(is_pos, axis=1)

    sorted_rows = block.take(keep_cols, axis=1) if keep_cols is not None else block.copy()
    sorted_rows.sort(axis=1)
    # numpy sorts NaN last, so checking the last column finds any NaN in a row.
    if np.isnan(sorted_rows[:, -1]).any():
        raise InputError("distmat contains NaN among non-junk gallery items")

    # From here on only the correct matches matter: flat arrays, one entry per match,
    # in row-major order, so each query's matches come in ranking order.
    pos_rows, pos_slots = np.nonzero(is_pos)
    pos_values = values[pos_rows, pos_slots]
    below = _count_below(sorted_rows, pos_rows, pos_values)
    # A tie needs a second item equal to the match's own distance; only then does
    # gallery order matter. Ties are rare with real features, so a direct scan of
    # the row prefix is enough (heavily quantised distances cost ~1.5x overall).
    n_kept = sorted_rows.shape[1]
    after = sorted_rows.reshape(-1)[pos_rows * n_kept + np.minimum(below + 1, n_kept - 1)]
    tied = (below + 1 < n_kept) & (after == pos_values)
    for i in np.flatnonzero(tied):
        row, col = pos_rows[i], cols[pos_rows[i], pos_slots[i]]
        equal_before = block[row, :col] == pos_values[i]
        if keep_cols is not None:
            equal_before &= g_nonjunk[:col]
        below[i] += np.count_nonzero(equal_before)

    # Items in front that are the query's own same-camera images do not count.
    rank = (1 + below - removed_before[pos_rows, pos_slots]).astype(np.float64)
    hits = hit_index[pos_rows, pos_slots].astype(np.float64)
    num_pos = hit_index[:, -1]
    precision = hits / rank
    # Precision one position before the hit; the official code starts it at 1.
    precision_before = np.where(rank > 1, (hits - 1) / np.maximum(rank - 1, 1), 1.0)
    denom = np.maximum(num_pos, 1)
    ap_standard = np.bincount(pos_rows, weights=precision, minlength=n) / denom
    trapezoid = (precision + precision_before) / 2
    ap_official = np.bincount(pos_rows, weights=trapezoid, minlength=n) / denom
    first_rank = np.zeros(n, dtype=np.int64)
    last_rank = np.zeros(n, dtype=np.int64)
    is_first = hits == 1
    first_rank[pos_rows[is_first]] = rank[is_first]
    is_last = hits == num_pos[pos_rows]
    last_rank[pos_rows[is_last]] = rank[is_last]
    return num_pos, first_rank, last_rank, ap_standard, ap_official


class MarketRanker:
    """Exact Market-1501 statistics of a ranking, fed one block of query rows at a time.

    The per-chunk primitive of :func:`evaluate_rank`, for callers that never hold the
    whole (num_query, num_gallery) distance matrix: create it from the labels, pass
    every query's row of distances exactly once through :meth:`add_block` or
    :meth:`add_rows` (in any order; from several threads if their row ranges are
    disjoint), then call :meth:`result`. The outcome is bitwise what
    ``evaluate_rank(distmat, ...)`` returns for the stacked rows (same filtering, same
    stable tie order, same averages), since it is the same code.

    Memory: (num_query,) statistics plus the labels; each block is ranked and
    dropped.

    Attributes:
        num_query, num_gallery: sizes given by the labels.
        num_kept: gallery items that are not junk (pid -1).
        stats: per-query statistics filled so far (unranked queries count as skipped).
    """

    def __init__(
        self,
        q_pids: np.ndarray | torch.Tensor,
        g_pids: np.ndarray | torch.Tensor,
        q_camids: np.ndarray | torch.Tensor,
        g_camids: np.ndarray | torch.Tensor,
    ) -> None:
        """Indexes the gallery by identity.

        Args:
            q_pids, q_camids: (num_query,) query identities and cameras.
            g_pids, g_camids: (num_gallery,) gallery identities (-1 = junk,
                0 = distractor) and cameras.

        Raises:
            InputError (a ValueError): when a label array is not 1-D or the query (gallery) pids
                and camids differ in length.
        """
        q_pids_np, g_pids_np = _label_array("q_pids", q_pids), _label_array("g_pids", g_pids)
        q_cams, g_cams = _label_array("q_camids", q_camids), _label_array("g_camids", g_camids)
        for pids_name, pids, cams_name, cams in (
            ("q_pids", q_pids_np, "q_camids", q_cams),
            ("g_pids", g_pids_np, "g_camids", g_cams),
        ):
            if pids.shape != cams.shape:
                raise InputError(
                    f"{pids_name} has shape {pids.shape} but {cams_name} has shape {cams.shape}"
                )
        self.num_query, self.num_gallery = q_pids_np.size, g_pids_np.size
        self._q_cams, self._g_cams = q_cams, g_cams
        self._g_nonjunk = g_pids_np != JUNK_PID
        self._keep_cols = None if self._g_nonjunk.all() else np.flatnonzero(self._g_nonjunk)
        self.num_kept = self.num_gallery if self._keep_cols is None else self._keep_cols.size
        self._same = _same_pid_items(q_pids_np, g_pids_np)
        self.stats = _PerQuery.zeros(self.num_query)

    def default_chunk_size(self, itemsize: int = 4) -> int:
        """Rows per chunk so that one chunk's copy of the kept columns is about 8 MiB."""
        return max(1, _CHUNK_BYTES // (max(self.num_kept, 1) * itemsize))

    def add_block(self, start: int, block: np.ndarray | torch.Tensor) -> None:
        """Ranks the gallery for queries ``start : start + n`` in one go.

        Args:
            start: index of the block's first query.
            block: (n, num_gallery) distances of those queries, smaller = more
                similar; numpy or torch (any device; copied to the host). Peak extra
                memory is about one copy of the block's kept columns.

        Raises:
            InputError (a ValueError): on a block of the wrong shape or outside the queries, or NaN
                among the non-junk columns.
        """
        rows = _float_block(block)
        n = rows.shape[0] if rows.ndim == 2 else -1
        if rows.ndim != 2 or rows.shape[1] != self.num_gallery:
            raise InputError(
                f"block must have shape (n, {self.num_gallery}), got {tuple(rows.shape)}"
            )
        if start < 0 or start + n > self.num_query:
            raise InputError(
                f"block rows {start}:{start + n} fall outside the {self.num_query} queries"
            )
        if n == 0 or self.num_kept == 0:
            return
        stop = start + n
        same_cols, same_count = self._same.columns(start, stop)
        stats = _chunk_stats(
            rows,
            self._keep_cols,
            same_cols,
            same_count,
            self._q_cams[start:stop],
            self._g_cams,
            self._g_nonjunk,
        )
        self.stats.store(start, stats)

    def add_rows(
        self,
        start: int,
        rows: np.ndarray | torch.Tensor,
        *,
        chunk_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        """Ranks queries ``start : start + n`` in chunks on a thread pool.

        Args:
            start: index of the first query in ``rows``.
            rows: (n, num_gallery) distances; numpy or torch on any device, each chunk
                copied to the host only when it is ranked.
            chunk_size: rows per :meth:`add_block` call; by default about 8 MiB of
                kept distances. Peak extra memory is about ``num_workers`` chunks.
            num_workers: threads; defaults to the CPUs available to this process.
        """
        _check_chunking(chunk_size, num_workers)
        num_rows = int(rows.shape[0])
        if self.num_kept == 0 or num_rows == 0:
            return
        if chunk_size is None:
            chunk_size = self.default_chunk_size(8 if _is_double(rows) else 4)
        if num_workers is None:
            num_workers = _available_cpus()
        offsets = range(0, num_rows, chunk_size)

        def work(offset: int) -> None:
            stop = min(offset + chunk_size, num_rows)
            self.add_block(start + offset, _rows(rows, offset, stop))

        if num_workers <= 1 or len(offsets) == 1:
            for offset in offsets:
                work(offset)
        else:
            with ThreadPoolExecutor(max_workers=min(num_workers, len(offsets))) as pool:
                # list() re-raises the first worker exception here.
                list(pool.map(work, offsets))

    def result(self, max_rank: int = 50, ap: str = "standard") -> tuple[np.ndarray, float, float]:
        """``(cmc, mAP, mINP)`` over the ranked queries, as :func:`evaluate_rank` returns.

        Raises:
            InputError (a ValueError): on a bad ``max_rank`` or ``ap``, or when no query has a
                correct match.
        """
        _check_summary_options(max_rank, ap)
        valid = _valid_queries(self.stats)
        return _summarize(self.stats, valid, _market_cmc(self.stats, valid, max_rank), ap)


def _is_double(distmat: np.ndarray | torch.Tensor) -> bool:
    """Whether the per-chunk copies of ``distmat`` will be 8 bytes per element."""
    if isinstance(distmat, torch.Tensor):
        return not distmat.is_floating_point() or distmat.dtype == torch.float64
    return not np.issubdtype(distmat.dtype, np.floating) or distmat.dtype.itemsize > 4


def _available_cpus() -> int:
    """CPUs this process may run on (honours affinity masks, e.g. in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------
# CUHK03 protocol: single-gallery-shot CMC


def _cuhk03_cmc(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    valid: np.ndarray,
    max_rank: int,
    seed: int,
) -> np.ndarray:
    """Single-gallery-shot CMC averaged over :data:`CUHK03_REPEATS` draws.

    Each draw keeps one random image per gallery identity (the query's own identity
    included, drawn among its correct matches) and every distractor. The rank of the
    drawn match is one plus the number of kept items that precede it in the stable
    ranking, i.e. that have a smaller (distance, gallery index) pair; so no row needs
    sorting.

    Args:
        distmat: (num_query, num_gallery) distances.
        q_pids, q_cams: (num_query,) query labels.
        g_pids, g_cams: (num_gallery,) gallery labels.
        valid: (num_query,) bool, queries with at least one correct match.
        max_rank: length of the curve.
        seed: seed of the subsampling generator.

    Returns:
        (max_rank,) float64 CMC over the valid queries.
    """
    rng = np.random.default_rng(seed)
    # Gallery identities as contiguous runs of columns, built once for all queries.
    is_identity = (g_pids != JUNK_PID) & (g_pids != 0)
    identity_cols = np.flatnonzero(is_identity)
    identity_cols = identity_cols[np.argsort(g_pids[identity_cols], kind="stable")]
    identities, starts, sizes = np.unique(
        g_pids[identity_cols], return_index=True, return_counts=True
    )
    distractor_cols = np.flatnonzero(g_pids == 0)

    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    for q in np.flatnonzero(valid):
        row = _rows(distmat, int(q), int(q) + 1)[0]
        same_pid = g_pids == q_pids[q]
        match_cols = np.flatnonzero(same_pid & (g_cams != q_cams[q]))
        others = identities != q_pids[q]
        # (repeats, groups): the column drawn for every other identity.
        picks = rng.integers(0, sizes[others], size=(CUHK03_REPEATS, int(others.sum())))
        drawn_cols = identity_cols[starts[others] + picks]
        if q_pids[q] != 0:  # a distractor query's matches are the distractors
            kept = np.tile(distractor_cols, (CUHK03_REPEATS, 1))
            drawn_cols = np.concatenate([drawn_cols, kept], axis=1)
        match = match_cols[rng.integers(0, match_cols.size, size=(CUHK03_REPEATS, 1))]
        drawn_dist, match_dist = row[drawn_cols], row[match]
        in_front = (drawn_dist < match_dist) | ((drawn_dist == match_dist) & (drawn_cols < match))
        first_hit = np.count_nonzero(in_front, axis=1)  # 0-based rank of the drawn match
        counts = np.bincount(np.minimum(first_hit, max_rank), minlength=max_rank + 1)
        cmc_sum += np.cumsum(counts[:max_rank])
    return cmc_sum / (CUHK03_REPEATS * int(valid.sum()))
