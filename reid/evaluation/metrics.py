"""Exact ranking metrics for re-identification: CMC, mAP and mINP (Market-1501 protocol).

Everything here is a pure function of query-by-gallery distances and the identity /
camera labels; nothing is read or written.

How it is fast: CMC, AP and INP of a query depend only on the 1-based ranks
``r_1 < ... < r_n`` of its ``n`` correct matches in the filtered ranking, so no row is
ever argsorted. For a chunk of queries the non-junk columns are copied and each row's
*values* sorted (numpy's vectorised sort); ``searchsorted`` then counts the items in
front of each correct match. The few items of the query's own identity (its matches
and its same-camera images) are ranked among themselves directly, which takes the
same-camera images out of the count without touching the rest of the row. Chunks run
on a thread pool; numpy and torch release the GIL in the copy, sort and search.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from reid.errors import InputError
from reid.protocol import JUNK_PID, correct_matches, ignored

logger = logging.getLogger(__name__)

AP_CONVENTIONS = ("standard", "official")
# Per-worker budget for the copied block of rows.
_CHUNK_BYTES = 8 * 2**20


def as_tensor(name: str, value: Any, ndim: int) -> torch.Tensor:
    """Features, distances or labels as a real ``ndim``-D torch tensor, sharing memory
    where it can; anything else (lists, complex, boolean, empty) raises InputError."""
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise InputError(f"{name} must hold real numbers, got dtype {value.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(value))  # no negative strides
    elif isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise InputError(f"{name} must hold real numbers, got dtype {value.dtype}")
        tensor = value.detach()
    else:
        raise InputError(
            f"{name} must be a numpy array or torch tensor, got {type(value).__name__}"
        )
    shape = {1: "1-D", 2: "2-D (num_items, dim)"}[ndim]
    if tensor.ndim != ndim:
        raise InputError(f"{name} must be {shape}, got shape {tuple(tensor.shape)}")
    if ndim == 2 and 0 in tensor.shape:
        raise InputError(f"{name} is empty: shape {tuple(tensor.shape)}")
    return tensor


def as_labels(name: str, value: Any) -> np.ndarray:
    """pids or camids as a 1-D numpy array (lists accepted)."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return as_tensor(name, array, 1).numpy()


LABELS = ("q_pids", "g_pids", "q_camids", "g_camids")


def as_label_set(
    labels: Sequence[Any], sizes: Sequence[int] | None = None, source: str = ""
) -> list[np.ndarray]:
    """``(q_pids, g_pids, q_camids, g_camids)`` as 1-D arrays, each side as long as
    ``sizes`` (num_query, num_gallery) of ``source``, by default as its pids."""
    arrays = [as_labels(name, value) for name, value in zip(LABELS, labels, strict=True)]
    if sizes is None:
        sizes = (arrays[0].size, arrays[1].size)
        source = f"q_pids and g_pids have {sizes[0]} and {sizes[1]} items"
    for name, array, size in zip(LABELS, arrays, (*sizes, *sizes), strict=True):
        if array.size != size:
            raise InputError(f"{name} has shape {array.shape} but {source}: expected ({size},)")
    return arrays


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
    ap: str = "standard",
    *,
    chunk_size: int | None = None,
    num_workers: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP of a ranking under the Market-1501 protocol.

    Filtering (:func:`reid.protocol.ignored`): for each query, gallery items with pid
    -1 (junk) and items with the query's pid *and* camera are removed; distractors
    (pid 0) stay as wrong matches. A query left with no correct match is skipped (with
    a warning). Ties: a stable sort by distance, so among equal distances the earlier
    gallery item ranks first.

    AP, with ``r_i`` the rank of the ``i``-th of ``n`` hits: ``"standard"`` is
    ``(1/n) sum_i i / r_i`` (Bag-of-Tricks, FastReID, Torchreid, scikit-learn without
    ties); ``"official"`` is the Market-1501 MATLAB code's trapezoid
    ``(1/n) sum_i (i / r_i + (i - 1) / (r_i - 1)) / 2`` (second term 1 when ``r_i == 1``).
    mINP (Ye et al.): per query ``n / r_n``, the precision at the hardest match.

    Args:
        distmat: (num_query, num_gallery) distances, smaller = more similar; numpy or
            torch on any device; no NaN among the non-junk columns.
        q_pids, g_pids, q_camids, g_camids: identities (-1 junk, 0 distractor), cameras.
        max_rank: length of the CMC curve (may exceed the gallery size).
        chunk_size: queries ranked at once per thread (default: about 8 MiB).
        num_workers: threads (default: the CPUs available to this process).

    Returns:
        ``(cmc (max_rank,) float64, mAP, mINP)``, in [0, 1].

    Raises:
        InputError (a ValueError): mismatched shapes, a bad option, NaN distances, or
            no query with a correct match.
    """
    check_options(max_rank, ap)
    distmat = as_tensor("distmat", distmat, 2)
    labels = (q_pids, g_pids, q_camids, g_camids)
    shape = tuple(distmat.shape)
    ranker = MarketRanker(*as_label_set(labels, shape, f"distmat has shape {shape}"))
    ranker.add_rows(0, distmat, chunk_size=chunk_size, num_workers=num_workers)
    return ranker.result(max_rank, ap)


class MarketRanker:
    """Exact Market-1501 statistics, fed one block of query rows at a time: pass every
    query's row once to :meth:`add_rows` (in any order), then call :meth:`result`; the
    outcome is bitwise :func:`evaluate_rank`'s on the stacked rows."""

    def __init__(
        self,
        q_pids: np.ndarray | torch.Tensor,
        g_pids: np.ndarray | torch.Tensor,
        q_camids: np.ndarray | torch.Tensor,
        g_camids: np.ndarray | torch.Tensor,
    ) -> None:
        q_pids, g_pids, q_cams, g_cams = as_label_set((q_pids, g_pids, q_camids, g_camids))
        self.num_query, self.num_gallery = q_pids.size, g_pids.size
        self._q_pids, self._g_pids = q_pids, g_pids
        self._q_cams, self._g_cams = q_cams, g_cams
        # Junk is what the protocol leaves out of every ranking, whatever the query.
        self._g_nonjunk = g_pids != JUNK_PID
        self._keep_cols = None if self._g_nonjunk.all() else np.flatnonzero(self._g_nonjunk)
        self.num_kept = int(self._g_nonjunk.sum())
        # Each query's own-identity columns: order[start : start + count], ascending.
        # Besides junk, the protocol leaves out or counts as matches only columns of the
        # query's own identity (reid.protocol.ignored), so only these need its rule.
        self._order = np.argsort(g_pids, kind="stable")
        sorted_pids = g_pids[self._order]
        self._start = np.searchsorted(sorted_pids, q_pids, side="left")
        self._count = np.searchsorted(sorted_pids, q_pids, side="right") - self._start
        self._count[q_pids == JUNK_PID] = 0  # its own-identity columns are junk, all left out
        # Per query: correct matches, first and last hit rank, AP (both conventions).
        self.num_pos = np.zeros(self.num_query, dtype=np.int64)
        self.first_rank = np.zeros(self.num_query, dtype=np.int64)
        self.last_rank = np.zeros(self.num_query, dtype=np.int64)
        self.ap = {name: np.zeros(self.num_query) for name in AP_CONVENTIONS}

    def add_rows(
        self,
        start: int,
        rows: np.ndarray | torch.Tensor,
        *,
        chunk_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        """Ranks queries ``start : start + n`` from their (n, num_gallery) distances,
        with :func:`evaluate_rank`'s ``chunk_size`` and ``num_workers``."""
        for name, value in (("chunk_size", chunk_size), ("num_workers", num_workers)):
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1 or None, got {value}")
        rows = as_tensor("block", rows, 2)
        if rows.shape[1] != self.num_gallery:
            raise InputError(
                f"block must have shape (n, {self.num_gallery}), got {tuple(rows.shape)}"
            )
        stop = start + rows.shape[0]
        if start < 0 or stop > self.num_query:
            raise InputError(f"block rows {start}:{stop} fall outside the {self.num_query} queries")
        if self.num_kept == 0 or rows.shape[0] == 0:
            return
        itemsize = 8 if rows.dtype == torch.float64 or not rows.is_floating_point() else 4
        chunk = chunk_size or max(1, _CHUNK_BYTES // (self.num_kept * itemsize))
        offsets = range(0, rows.shape[0], chunk)
        workers = min(num_workers or _available_cpus(), len(offsets))

        def work(offset: int) -> None:
            self._add_block(start + offset, _host_floats(rows[offset : offset + chunk]))

        if workers <= 1:
            for offset in offsets:
                work(offset)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, offsets))  # list() re-raises a worker's exception

    def result(self, max_rank: int = 50, ap: str = "standard") -> tuple[np.ndarray, float, float]:
        """``(cmc, mAP, mINP)`` over the ranked queries, as :func:`evaluate_rank` returns."""
        check_options(max_rank, ap)
        valid = self.num_pos > 0
        if not valid.any():
            raise InputError(_no_match_message(self.num_query))
        if not valid.all():
            skipped = int((~valid).sum())
            logger.warning(
                "%d of %d queries have no correct match in the gallery and were skipped",
                skipped, self.num_query,
            )  # fmt: skip
        first = self.first_rank[valid]
        # Bucket first-hit ranks; everything beyond max_rank shares the last bucket.
        hist = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)
        cmc = np.cumsum(hist[:max_rank]) / first.size
        inp = self.num_pos[valid] / self.last_rank[valid]
        return cmc.astype(np.float64), float(self.ap[ap][valid].mean()), float(inp.mean())

    def _add_block(self, start: int, block: np.ndarray) -> None:
        """Ranks one chunk of queries: ``block`` is (n, num_gallery) host floats."""
        stop = start + block.shape[0]
        count = self._count[start:stop]
        # Own-identity columns, padded to the widest row (0 in the padding slots).
        slot = np.arange(max(int(count.max()), 1))
        positions = np.minimum(self._start[start:stop, None] + slot, self._order.size - 1)
        same_cols = np.where(slot < count[:, None], self._order[positions], 0)
        in_group = slot < count[:, None]
        values = np.take_along_axis(block, same_cols, axis=1)
        # Padding slots sort last: +inf, and the stable sort keeps them after real +inf.
        values = np.where(in_group, values, np.inf)
        # Rank the own-identity items among themselves by (distance, gallery column): the
        # columns already ascend along each row, so a stable sort on distance does it.
        order = np.argsort(values, axis=1, kind="stable")
        values = np.take_along_axis(values, order, axis=1)
        cols = np.take_along_axis(same_cols, order, axis=1)
        in_group = np.take_along_axis(in_group, order, axis=1)
        query = (self._q_pids[start:stop], self._q_cams[start:stop])
        labels = (*query, self._g_pids[cols], self._g_cams[cols])
        is_pos = in_group & correct_matches(*labels)
        is_removed = in_group & ignored(*labels)
        removed_before = np.cumsum(is_removed, axis=1) - is_removed
        hit_index = np.cumsum(is_pos, axis=1)

        kept = block.copy() if self._keep_cols is None else block.take(self._keep_cols, axis=1)
        kept.sort(axis=1)  # in place: one copy of the chunk
        if np.isnan(kept[:, -1]).any():  # numpy sorts NaN last
            raise InputError("distmat contains NaN among non-junk gallery items")
        below = torch.searchsorted(torch.from_numpy(kept), torch.from_numpy(values)).numpy()
        pos_rows, pos_slots = np.nonzero(is_pos)
        below = below[pos_rows, pos_slots]
        self._count_ties(
            block, kept, pos_rows, cols[pos_rows, pos_slots], values[pos_rows, pos_slots], below
        )
        # Items in front that are the query's own same-camera images do not count.
        rank = (1 + below - removed_before[pos_rows, pos_slots]).astype(np.float64)
        self._store(
            start,
            pos_rows,
            rank,
            hit_index[pos_rows, pos_slots].astype(np.float64),
            hit_index[:, -1],
        )

    def _count_ties(
        self, block: np.ndarray, kept: np.ndarray, rows: np.ndarray, cols: np.ndarray,
        values: np.ndarray, below: np.ndarray,
    ) -> None:  # fmt: skip
        """Adds to ``below`` the items tied with a match that come before it in the gallery.

        A tie needs a second kept item equal to the match's distance; only then does
        gallery order matter. Ties are rare with real features, so a direct scan of the
        row prefix is enough.
        """
        n_kept = kept.shape[1]
        after = kept.reshape(-1)[rows * n_kept + np.minimum(below + 1, n_kept - 1)]
        for i in np.flatnonzero((below + 1 < n_kept) & (after == values)):
            equal_before = block[rows[i], : cols[i]] == values[i]
            if self._keep_cols is not None:
                equal_before &= self._g_nonjunk[: cols[i]]
            below[i] += np.count_nonzero(equal_before)

    def _store(
        self, start: int, rows: np.ndarray, rank: np.ndarray, hits: np.ndarray, num_pos: np.ndarray
    ) -> None:
        """Per-query statistics of one chunk from its matches' ranks (in ranking order)."""
        n = num_pos.size
        precision = hits / rank
        # Precision one position before the hit; the official code starts it at 1.
        precision_before = np.where(rank > 1, (hits - 1) / np.maximum(rank - 1, 1), 1.0)
        denom = np.maximum(num_pos, 1)
        chunk = slice(start, start + n)
        self.num_pos[chunk] = num_pos
        self.ap["standard"][chunk] = np.bincount(rows, weights=precision, minlength=n) / denom
        trapezoid = (precision + precision_before) / 2
        self.ap["official"][chunk] = np.bincount(rows, weights=trapezoid, minlength=n) / denom
        is_first, is_last = hits == 1, hits == num_pos[rows]
        self.first_rank[chunk][rows[is_first]] = rank[is_first]
        self.last_rank[chunk][rows[is_last]] = rank[is_last]


def check_gallery_matches(
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
) -> None:
    """Raises InputError unless some query has a correct match in the gallery
    (:func:`reid.protocol.correct_matches`): a cheap check from the labels alone, which
    training runs before its first epoch.

    Labels are (num_query,) and (num_gallery,). The rule is applied to distinct
    ``(pid, camera)`` pairs of the same pid only, so the cost is a sort of the labels.
    """
    labels = as_label_set((q_pids, g_pids, q_camids, g_camids))
    queries = np.unique(np.stack([labels[0], labels[2]], axis=1), axis=0)  # (pid, cam) rows
    items = np.unique(np.stack([labels[1], labels[3]], axis=1), axis=0)  # sorted by pid
    # A correct match has the query's pid: pair each query with its pid's gallery rows.
    first = np.searchsorted(items[:, 0], queries[:, 0], side="left")
    count = np.searchsorted(items[:, 0], queries[:, 0], side="right") - first
    query_rows = np.repeat(np.arange(len(queries)), count)
    item_rows = np.arange(count.sum()) + np.repeat(first - (np.cumsum(count) - count), count)
    query, item = queries[query_rows], items[item_rows, :, None]  # (P, 2), (P, 2, 1)
    if not correct_matches(query[:, 0], query[:, 1], item[:, 0], item[:, 1]).any():
        raise InputError(_no_match_message(labels[0].size))


def _no_match_message(num_query: int) -> str:
    return (
        f"no query has a correct match in the gallery (all {num_query} queries skipped): "
        "check that query and gallery pids/camids belong to the same dataset split"
    )


def check_options(max_rank: int, ap: str) -> None:
    """Raises InputError for an unknown ``ap`` or a ``max_rank`` below 1."""
    if ap not in AP_CONVENTIONS:
        raise InputError(f"unknown ap {ap!r}; valid: {', '.join(AP_CONVENTIONS)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or max_rank < 1:
        raise InputError(f"max_rank must be a positive integer, got {max_rank!r}")


def _host_floats(block: torch.Tensor) -> np.ndarray:
    """Distances as host floats (half to float32, integers to float64, shared if on CPU)."""
    if block.dtype in (torch.float16, torch.bfloat16):
        block = block.float()
    elif not block.is_floating_point():
        block = block.double()
    return block.cpu().numpy()


def _available_cpus() -> int:
    """CPUs this process may run on (honours affinity masks, e.g. in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
