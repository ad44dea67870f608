"""Post-processing of a query x gallery ranking: k-reciprocal re-ranking and alpha-QE.

k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017) replaces the query x gallery distance by a mix of
the original distance and a Jaccard distance between k-reciprocal neighbourhoods
computed over all query + gallery images.

How the fast path works
-----------------------
The published code builds several dense N x N matrices (N = queries + gallery) and
loops over samples in Python. Only a small part of those matrices is ever read:

* the ``max(k1 + 1, k2)`` nearest neighbours of each sample, with their distances;
* the maximum of each row of the distance matrix (the normalisation);
* distances between a sample and the members of its expanded neighbourhood, most of
  which are already among its nearest neighbours (the rest are recomputed from the
  features);
* the query x gallery block of the distance matrix, which is the output's size anyway.

So the distance matrix is computed in square blocks, one GEMM each, and only the upper
triangle of blocks is computed because the matrix is symmetric: a block serves its
rows directly and the rows of the mirrored block through its transpose. The running
k nearest neighbours of a row are merged block by block; after the first block, a
row's current k-th distance is an upper bound on its final one, so a cheap comparison
keeps the few candidates below it and no full ``topk`` is needed. Neighbourhood
encodings ``V`` are sparse: an accepted candidate set has fewer than a third of its
``round(k1 / 2) + 1`` members outside ``R(i, k1)``, so a row has at most
``(k1 + 1) * ceil((round(k1 / 2) + 1) / 3)`` non-zeros (84 for k1 = 20, about 20 in
practice), and ``k2`` times that after query expansion. So the reciprocity
checks and the expansion are vectorised over index tables, ``V`` and its query
expansion are ``scipy.sparse`` matrices, and the Jaccard overlap of a query with every
gallery image is a sum of ``min`` over the columns they share, gathered through the
column (inverted) index of the gallery rows.

Precision
---------
Neighbour lists are cut at fixed ranks, so a near-tie at a cut (two distances closer
than the float32 rounding of the GEMM, about 1e-7 relative) may fall either way in any
two float32 implementations, the published one run with another BLAS included. Such a
flip changes the affected neighbourhoods and moves the re-ranked distances of the rows
they touch by up to about 1e-2. Away from such near-ties (in practice: small problems,
and all but a few samples of Market-size ones) results equal a float32 run of the
published algorithm to about 1e-6.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm import tqdm

from reid.errors import InputError

logger = logging.getLogger(__name__)

FeatureArray = np.ndarray | torch.Tensor
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

# Row chunk for the neighbourhood construction; its largest temporary is
# chunk * (k1 + 1)^2 * (k1 / 2 + 1) bytes (about 10 MB at k1 = 20).
_NEIGHBOURHOOD_CHUNK = 2048
# Feature pairs gathered at once when a distance is recomputed from the features; small
# enough for the allocator to reuse the memory (large fresh buffers cost page faults).
_PAIR_CHUNK = 1024
# Jaccard stage: (query, gallery) contributions and dense float64 cells per chunk.
_JACCARD_PAIRS = 4_000_000
_JACCARD_CELLS = 8_000_000
# alpha-QE: float32 entries per block of similarities (and of gathered neighbours).
_AQE_CELLS = 1 << 25


def re_ranking(
    query_feats: FeatureArray,
    gallery_feats: FeatureArray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    device: torch.device | str | None = None,
    block_size: int = 2048,
) -> np.ndarray:
    """k-reciprocal re-ranking of Zhong et al. (CVPR 2017), computed in float32.

    This is the published algorithm, step by step:

    1. ``d[i, j]`` is the squared Euclidean distance between all ``N = Q + G`` query and
       gallery features, computed as ``|x_i|^2 + |x_j|^2 - 2 x_i . x_j``.
    2. The authors normalise with ``(d / d.max(axis=0)).T``: column ``j`` is divided by
       its maximum and the result is transposed, so that (``d`` being symmetric) row
       ``i`` of the normalised distance ``o`` is ``d[i, :] / max_j d[i, j]``. Each row
       is scaled by its *own* maximum over all N samples, so ``o`` is not symmetric.
    3. ``N(i, k)`` are the ``k + 1`` nearest samples to ``i`` (itself included), and the
       k-reciprocal set ``R(i, k)`` keeps those ``j`` in ``N(i, k)`` with ``i`` in
       ``N(j, k)``.
    4. ``R*(i)`` is ``R(i, k1)`` joined with ``R(j, round(k1 / 2))`` for every ``j`` in
       ``R(i, k1)`` whose set has more than 2/3 of its members in ``R(i, k1)``
       (``round`` is numpy's, halves to even).
    5. ``V[i, j] = exp(-o[i, j]) / sum_{j' in R*(i)} exp(-o[i, j'])`` for ``j`` in
       ``R*(i)``, else 0.
    6. Local query expansion (when ``k2 != 1``): row ``i`` of ``V`` is replaced by the
       mean of the rows of its ``k2`` nearest samples (itself included).
    7. ``s[q, g] = sum_c min(V[q, c], V[g, c])``; Jaccard distance ``1 - s / (2 - s)``.
    8. Result: ``jaccard * (1 - lambda_value) + o * lambda_value`` for query rows and
       gallery columns.

    The authors' code stores ``V`` and the Jaccard distance in float16, which moves the
    result by up to about 3e-3; everything here is float32 (sums of ``min`` in float64),
    so results equal a float32 run of the published algorithm to about 1e-6, except
    around neighbour-list near-ties at float32 resolution (see the module docstring).
    Exactly equal distances may be ordered differently from ``np.argsort``.

    Memory is O(N * k1 + N * D) plus the (Q, G) output; time is dominated by the
    N x N x D distance GEMM, of which half is computed.

    Args:
        query_feats: (Q, D) query features (tensor or array; cast to float32).
        gallery_feats: (G, D) gallery features.
        k1: size of the k-reciprocal neighbourhoods.
        k2: size of the local query expansion (1 turns it off).
        lambda_value: weight of the original distance, in [0, 1].
        device: where the distances are computed (GEMM and neighbour search); the
            sparse stages run on the CPU. Defaults to the device of a tensor
            ``query_feats``, else the CPU.
        block_size: side of the square distance blocks (raised to at least
            ``max(k1 + 1, k2)``); peak extra memory is a few blocks of float32.

    Returns:
        (Q, G) float32 re-ranked distances (smaller is more similar).
    """
    if k1 < 1 or k2 < 1:
        raise InputError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise InputError(f"lambda_value must be in [0, 1], got {lambda_value}")
    query, gallery, device = _query_and_gallery(query_feats, gallery_feats, device)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    num_all = num_query + num_gallery
    out = np.empty((num_query, num_gallery), dtype=np.float32)
    if num_query == 0 or num_gallery == 0:
        return out

    start = time.perf_counter()
    feats = torch.cat([query, gallery]).to(device=device, dtype=torch.float32)
    num_neighbours = min(max(k1 + 1, k2), num_all)
    top_dist, top_index, row_max = _nearest_neighbours(
        feats, num_neighbours, max(block_size, num_neighbours), out, num_query
    )
    logger.debug("re_ranking: distances and %d-NN in %.2fs", num_neighbours, _since(start))

    start = time.perf_counter()
    rows, cols = _expanded_neighbourhoods(top_index, k1)
    dist = _pair_distances(rows, cols, top_index, top_dist, feats)
    weight = np.exp(-(dist / row_max[rows]))
    weight /= np.bincount(rows, weights=weight, minlength=num_all).astype(np.float32)[rows]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_all))])
    encoding = sp.csr_matrix((weight, cols, indptr), shape=(num_all, num_all))
    logger.debug(
        "re_ranking: k-reciprocal encoding, %.1f non-zeros a row, in %.2fs",
        encoding.nnz / num_all,
        _since(start),
    )

    start = time.perf_counter()
    if k2 != 1:
        encoding = _local_query_expansion(encoding, top_index[:, : min(k2, num_all)])
    logger.debug(
        "re_ranking: query expansion, %.1f non-zeros a row, in %.2fs",
        encoding.nnz / num_all,
        _since(start),
    )

    start = time.perf_counter()
    _combine_with_jaccard(
        out, encoding[:num_query], encoding[num_query:].tocsc(), row_max[:num_query], lambda_value
    )
    logger.debug("re_ranking: Jaccard distances in %.2fs", _since(start))
    return out


def alpha_query_expansion(
    query_feats: FeatureArray,
    gallery_feats: FeatureArray,
    k: int = 5,
    alpha: float = 3.0,
    *,
    expand_query: bool = True,
    expand_gallery: bool = True,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha query expansion (alpha-QE) and its gallery-side twin (Radenovic et al., 2018).

    Features are first L2-normalised, so similarity is the cosine ``s``. Then, in one
    pass each (no iteration):

    * gallery (when ``expand_gallery``, "database-side augmentation"): each gallery
      feature ``g`` becomes ``normalise(sum_n w_n g_n)`` over its ``k`` most similar
      gallery features ``g_n`` (``g`` itself, with ``s = 1``, is normally the first),
      all taken from the normalised gallery *before* expansion;
    * query (when ``expand_query``): each query ``q`` becomes
      ``normalise(q + sum_n w_n g_n)`` over its ``k - 1`` most similar features ``g_n``
      of the gallery *as returned* (expanded if ``expand_gallery``). Queries never use
      other queries.

    So in both cases a feature is replaced by the weighted sum of its ``k`` nearest
    neighbours among itself and the gallery. Weights are ``w = max(s, 0) ** alpha``
    (the feature itself has weight 1); clamping keeps odd or fractional powers of
    negative similarities out. ``alpha = 0`` gives plain average query expansion and
    ``k = 1`` only normalises.

    Args:
        query_feats: (Q, D) query features (tensor or array).
        gallery_feats: (G, D) gallery features.
        k: neighbours per feature, the feature itself included (``k >= 1``).
        alpha: exponent of the similarity weights.
        expand_query: expand the queries.
        expand_gallery: expand the gallery.
        device: where the similarities are computed (in blocks of about 32M entries);
            defaults to the device of a tensor ``query_feats``, else the CPU.

    Returns:
        ``(query (Q, D), gallery (G, D))``: L2-normalised float32 tensors on the CPU.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    query, gallery, device = _query_and_gallery(query_feats, gallery_feats, device)
    query = F.normalize(query.to(device=device, dtype=torch.float32), dim=1)
    gallery = F.normalize(gallery.to(device=device, dtype=torch.float32), dim=1)
    if expand_gallery and k > 1 and len(gallery) > 0:
        gallery = _weighted_neighbour_sum(gallery, gallery, k, alpha, add_self=False)
    if expand_query and k > 1 and len(gallery) > 0 and len(query) > 0:
        query = _weighted_neighbour_sum(query, gallery, k - 1, alpha, add_self=True)
    return query.cpu(), gallery.cpu()


# ---------------------------------------------------------------------------
# Stage 1: blocked distances, nearest neighbours, row maxima


@torch.no_grad()
def _nearest_neighbours(
    feats: torch.Tensor,
    k: int,
    block_size: int,
    qg_out: np.ndarray,
    num_query: int,
    numpy_passes: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest neighbours and row maxima of the squared-distance matrix of ``feats``.

    Also writes the raw query x gallery block of distances into ``qg_out`` (Q, G).

    Args:
        feats: (N, D) float32, queries first.
        k: neighbours per row, ``k <= N``; ``block_size >= k``.
        numpy_passes: scan blocks with numpy (default: when ``feats`` is on the CPU).

    Returns:
        ``(dist (N, k) float32, index (N, k) int64, row_max (N,) float32)``: the k
        smallest distances of each row in increasing order, their columns, and the
        largest distance of each row.
    """
    num_all = feats.shape[0]
    sq_norm = (feats * feats).sum(dim=1)
    if numpy_passes is None:
        numpy_passes = feats.device.type == "cpu"
    top = _RunningNearest(num_all, k, numpy_passes=numpy_passes)
    # One buffer for every block: fresh multi-megabyte allocations cost page faults.
    buffer = torch.empty(block_size * block_size, dtype=torch.float32, device=feats.device)
    starts = list(range(0, num_all, block_size))
    qg_view = torch.from_numpy(qg_out)
    pairs = [(bi, bj) for bi in range(len(starts)) for bj in range(bi, len(starts))]
    for bi, bj in tqdm(pairs, desc="re-ranking distances", leave=False, disable=None):
        r0, r1 = starts[bi], min(starts[bi] + block_size, num_all)
        c0, c1 = starts[bj], min(starts[bj] + block_size, num_all)
        block = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        torch.add(sq_norm[r0:r1, None], sq_norm[None, c0:c1], out=block)
        block.addmm_(feats[r0:r1], feats[c0:c1].T, alpha=-2)
        # The mirrored block (rows c0:c1, columns r0:r1) is this one transposed.
        top.merge(block, r0, c0, mirrored=bj != bi)
        # Query rows x gallery columns are all above the diagonal, so only the direct
        # side of a block can hold them.
        q_end, g_start = min(r1, num_query), max(c0, num_query)
        if r0 < q_end and g_start < c1:
            qg_view[r0:q_end, g_start - num_query : c1 - num_query].copy_(
                block[: q_end - r0, g_start - c0 :]
            )
    return top.dist, top.index, top.row_max


class _RunningNearest:
    """The k nearest columns and the largest distance of every row, merged block by block.

    A row's current k-th distance bounds its final one from above, so once a row has
    seen one block only the entries of later blocks below that bound can enter. One
    comparison pass finds them (a few dozen a row); the bookkeeping on those few is
    done with numpy. On the CPU the passes over a block are numpy too: single-threaded
    but free of the per-op thread synchronisation that dominates small torch ops when
    the cores are shared, and ``np.flatnonzero`` is ten times faster than
    ``torch.nonzero``.
    """

    def __init__(self, num_rows: int, k: int, *, numpy_passes: bool) -> None:
        self.k = k
        self.numpy_passes = numpy_passes
        self.dist = np.full((num_rows, k), np.inf, dtype=np.float32)  # increasing per row
        self.index = np.zeros((num_rows, k), dtype=np.int64)
        self.row_max = np.full(num_rows, -np.inf, dtype=np.float32)
        self.seen = np.zeros(num_rows, dtype=bool)

    def merge(self, block: torch.Tensor, row0: int, col0: int, *, mirrored: bool) -> None:
        """Merges a (R, C) block of distances: rows row0:row0+R, columns col0:col0+C.

        With ``mirrored``, also the transposed block (rows col0:col0+C, columns
        row0:row0+R). Blocks are aligned, so a row's first block is seen whole.
        """
        num_rows, num_cols = block.shape
        rows, cols = slice(row0, row0 + num_rows), slice(col0, col0 + num_cols)
        row_bound = self._bound(block, rows, col0)
        col_bound = self._bound(block.T, cols, row0) if mirrored else None
        if self.numpy_passes:
            values = block.cpu().numpy()
            row_max = values.max(axis=1)
            col_max = values.max(axis=0) if mirrored else None
            hit = _below_bounds(values, row_bound, col_bound, np.less, np.flatnonzero)
            hit_dist = values.ravel()[hit] if hit is not None else None
        else:
            row_max = block.amax(dim=1).cpu().numpy()
            col_max = block.amax(dim=0).cpu().numpy() if mirrored else None
            hit = _below_bounds(
                block,
                None if row_bound is None else torch.from_numpy(row_bound).to(block.device),
                None if col_bound is None else torch.from_numpy(col_bound).to(block.device),
                torch.lt,
                lambda mask: torch.nonzero(mask.view(-1)).squeeze(1),
            )
            hit_dist = block.view(-1)[hit].cpu().numpy() if hit is not None else None
            hit = hit.cpu().numpy() if hit is not None else None
        np.maximum(self.row_max[rows], row_max, out=self.row_max[rows])
        if col_max is not None:
            np.maximum(self.row_max[cols], col_max, out=self.row_max[cols])
        if hit is None:
            return
        hit_row, hit_col = np.divmod(hit, num_cols)
        if row_bound is not None:
            self._insert(row0 + hit_row, col0 + hit_col, hit_dist)
        if col_bound is not None:
            self._insert(col0 + hit_col, row0 + hit_row, hit_dist)

    def _bound(self, side: torch.Tensor, rows: slice, col0: int) -> np.ndarray | None:
        """The k-th distance of ``rows``, or None after seeding them from this (R, C) side."""
        if self.seen[rows.start]:
            return self.dist[rows, -1].copy()
        dist, index = torch.topk(side, self.k, dim=1, largest=False, sorted=True)
        self.dist[rows] = dist.cpu().numpy()
        self.index[rows] = index.cpu().numpy() + col0
        self.seen[rows] = True
        return None

    def _insert(self, rows: np.ndarray, cols: np.ndarray, dist: np.ndarray) -> None:
        """Offers (row, column, distance) candidates (P,) to the rows' k nearest."""
        keep = dist < self.dist[rows, -1]
        if not keep.any():
            return
        order = np.argsort(rows[keep], kind="stable")
        rows, cols, dist = rows[keep][order], cols[keep][order], dist[keep][order]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        counts = np.diff(np.r_[first, len(rows)])
        owners = rows[first]
        k = self.k
        cand_dist = np.full((len(owners), k + counts.max()), np.inf, dtype=np.float32)
        cand_index = np.zeros(cand_dist.shape, dtype=np.int64)
        cand_dist[:, :k] = self.dist[owners]
        cand_index[:, :k] = self.index[owners]
        local = np.repeat(np.arange(len(owners)), counts)
        slot = k + np.arange(len(rows)) - np.repeat(first, counts)
        cand_dist[local, slot] = dist
        cand_index[local, slot] = cols
        best = np.argpartition(cand_dist, k - 1, axis=1)[:, :k]
        best_dist = np.take_along_axis(cand_dist, best, axis=1)
        order = np.argsort(best_dist, axis=1, kind="stable")
        self.dist[owners] = np.take_along_axis(best_dist, order, axis=1)
        self.index[owners] = np.take_along_axis(
            np.take_along_axis(cand_index, best, axis=1), order, axis=1
        )


def _below_bounds(
    values: ArrayOrTensor,
    row_bound: ArrayOrTensor | None,
    col_bound: ArrayOrTensor | None,
    less: Callable[[ArrayOrTensor, ArrayOrTensor], ArrayOrTensor],
    flat_nonzero: Callable[[ArrayOrTensor], ArrayOrTensor],
) -> ArrayOrTensor | None:
    """Flat indices of the entries of a (R, C) block below their row's or column's bound.

    Works on numpy arrays or tensors alike (``less`` and ``flat_nonzero`` are the
    library's functions); a bound of None is not tested. Returns None if neither is.
    """
    if row_bound is None and col_bound is None:
        return None
    mask = None
    if row_bound is not None:
        mask = less(values, row_bound[:, None])
    if col_bound is not None:
        col_mask = less(values, col_bound[None, :])
        mask = col_mask if mask is None else mask | col_mask
    return flat_nonzero(mask)


# ---------------------------------------------------------------------------
# Stage 2: k-reciprocal neighbourhoods and their encoding


def _reciprocal_mask(neighbours: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Which of the first ``k + 1`` neighbours of each row have the row among theirs.

    Args:
        neighbours: (N, >= k + 1) nearest-neighbour table.
        rows: (R,) row ids.

    Returns:
        (R, k + 1) bool, aligned with ``neighbours[rows, : k + 1]``.
    """
    forward = neighbours[rows, : k + 1]
    backward = neighbours[forward, : k + 1]
    return (backward == rows[:, None, None]).any(axis=2)


def _expanded_neighbourhoods(neighbours: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal sets ``R*(i)`` of every sample as (row, column) pairs.

    Args:
        neighbours: (N, K) int64 nearest-neighbour table, K >= min(k1 + 1, N).

    Returns:
        ``(rows, cols)``, both (P,) int64, sorted by row then column, no duplicates.
    """
    num_all = neighbours.shape[0]
    k_full = min(k1, num_all - 1)
    # np.around rounds halves to even, and so does Python's round.
    k_half = min(int(round(k1 / 2)), num_all - 1)
    everyone = np.arange(num_all)
    half_mask = np.concatenate(
        [
            _reciprocal_mask(neighbours, everyone[s : s + _NEIGHBOURHOOD_CHUNK], k_half)
            for s in range(0, num_all, _NEIGHBOURHOOD_CHUNK)
        ]
    )
    all_rows, all_cols = [], []
    sentinel = num_all  # sorts after every real index
    for s in range(0, num_all, _NEIGHBOURHOOD_CHUNK):
        rows = everyone[s : s + _NEIGHBOURHOOD_CHUNK]
        forward = neighbours[rows, : k_full + 1]  # (R, F)
        in_set = _reciprocal_mask(neighbours, rows, k_full)  # R(i, k1) as a mask on forward
        candidate = neighbours[forward, : k_half + 1]  # (R, F, H): N(j, k1/2) of each j
        candidate_in = half_mask[forward]  # R(j, k1/2) as a mask on candidate
        members = np.where(in_set, forward, -1)
        overlap = (candidate[..., None] == members[:, None, None, :]).any(axis=3)
        shared = (overlap & candidate_in).sum(axis=2)
        # Same float comparison as the published code: len(intersection) > 2/3 * len(set).
        accept = in_set & (shared > 2 / 3 * candidate_in.sum(axis=2))
        joined = np.concatenate(
            [
                np.where(in_set, forward, sentinel),
                np.where(accept[..., None] & candidate_in, candidate, sentinel).reshape(
                    len(rows), -1
                ),
            ],
            axis=1,
        )
        joined.sort(axis=1)
        keep = joined != sentinel
        keep[:, 1:] &= joined[:, 1:] != joined[:, :-1]
        local_row, _ = np.nonzero(keep)
        all_rows.append(rows[local_row])
        all_cols.append(joined[keep])
    return np.concatenate(all_rows), np.concatenate(all_cols)


@torch.no_grad()
def _pair_distances(
    rows: np.ndarray,
    cols: np.ndarray,
    top_index: np.ndarray,
    top_dist: np.ndarray,
    feats: torch.Tensor,
) -> np.ndarray:
    """Squared distances ``d[rows, cols]``, from the neighbour table where it has them.

    Args:
        rows, cols: (P,) int64 pairs.
        top_index, top_dist: (N, K) nearest-neighbour table and its distances.
        feats: (N, D) float32 features, for pairs outside the table.

    Returns:
        (P,) float32.
    """
    dist = np.empty(rows.shape, dtype=np.float32)
    missing = []
    for s in range(0, len(rows), 1 << 20):
        r, c = rows[s : s + (1 << 20)], cols[s : s + (1 << 20)]
        match = top_index[r] == c[:, None]
        dist[s : s + len(r)] = top_dist[r, match.argmax(axis=1)]
        missing.append(np.flatnonzero(~match.any(axis=1)) + s)
    missing = np.concatenate(missing)
    if len(missing) == 0:
        return dist
    sq_norm = (feats * feats).sum(dim=1)
    index_pair = torch.from_numpy(np.stack([rows[missing], cols[missing]])).to(feats.device)
    for m in range(0, len(missing), _PAIR_CHUNK):
        i, j = index_pair[:, m : m + _PAIR_CHUNK]
        dot = torch.einsum("pd,pd->p", feats.index_select(0, i), feats.index_select(0, j))
        dist[missing[m : m + _PAIR_CHUNK]] = (sq_norm[i] + sq_norm[j] - 2 * dot).cpu().numpy()
    return dist


def _local_query_expansion(encoding: sp.csr_matrix, nearest: np.ndarray) -> sp.csr_matrix:
    """Each row of ``encoding`` (N, N) replaced by the mean of the rows of ``nearest`` (N, k2)."""
    num_all, k2 = nearest.shape
    averaging = sp.csr_matrix(
        (
            np.full(nearest.size, 1.0 / k2, dtype=np.float32),
            nearest.ravel(),
            np.arange(0, nearest.size + 1, k2),
        ),
        shape=(num_all, num_all),
    )
    return (averaging @ encoding).tocsr()


# ---------------------------------------------------------------------------
# Stage 3: Jaccard distance over the inverted index, and the final mix


def _combine_with_jaccard(
    out: np.ndarray,
    query_rows: sp.csr_matrix,
    gallery_cols: sp.csc_matrix,
    query_max: np.ndarray,
    lambda_value: float,
) -> None:
    """Turns ``out`` (Q, G) from raw distances into the re-ranked distances, in place.

    Args:
        out: (Q, G) raw squared distances of queries to gallery.
        query_rows: (Q, N) encodings of the queries.
        gallery_cols: (G, N) encodings of the gallery, column-indexed: column ``c`` lists
            the gallery samples with ``c`` in their neighbourhood (the inverted index).
        query_max: (Q,) largest distance of each query row over all N samples.
    """
    num_query, num_gallery = out.shape
    col_count = np.diff(gallery_cols.indptr)
    pairs_per_entry = col_count[query_rows.indices]
    entry_end = np.cumsum(pairs_per_entry)
    pairs_before_query = np.concatenate([[0], entry_end])[query_rows.indptr]
    max_rows = max(1, _JACCARD_CELLS // num_gallery)
    q0 = 0
    while q0 < num_query:
        # Grow the chunk while its (query, gallery) contributions fit the budget.
        target = pairs_before_query[q0] + _JACCARD_PAIRS
        q1 = int(np.searchsorted(pairs_before_query, target, side="right"))
        q1 = min(max(q1 - 1, q0 + 1), q0 + max_rows, num_query)
        shared = _shared_mass(query_rows, gallery_cols, col_count, q0, q1, num_gallery)
        jaccard = 1 - shared / (2 - shared)
        block = out[q0:q1]
        block /= query_max[q0:q1, None]
        block *= np.float32(lambda_value)
        block += jaccard * np.float32(1 - lambda_value)
        q0 = q1


def _shared_mass(
    query_rows: sp.csr_matrix,
    gallery_cols: sp.csc_matrix,
    col_count: np.ndarray,
    q0: int,
    q1: int,
    num_gallery: int,
) -> np.ndarray:
    """``s[q, g] = sum_c min(V[q, c], V[g, c])`` for queries q0:q1, as (q1 - q0, G) float32."""
    e0, e1 = query_rows.indptr[q0], query_rows.indptr[q1]
    cols = query_rows.indices[e0:e1]
    query_val = query_rows.data[e0:e1]
    query_local = np.repeat(np.arange(q1 - q0), np.diff(query_rows.indptr[q0 : q1 + 1]))
    count = col_count[cols]
    total = int(count.sum())
    # Position of every (query entry, gallery entry of the same column) pair in the
    # gallery's column storage: a ragged arange over the columns' runs.
    run_start = gallery_cols.indptr[cols] - (np.cumsum(count) - count)
    pos = np.arange(total) + np.repeat(run_start, count)
    mass = np.minimum(np.repeat(query_val, count), gallery_cols.data[pos])
    cell = np.repeat(query_local, count) * num_gallery + gallery_cols.indices[pos]
    shared = np.bincount(cell, weights=mass, minlength=(q1 - q0) * num_gallery)
    return shared.reshape(q1 - q0, num_gallery).astype(np.float32)


# ---------------------------------------------------------------------------
# alpha-QE helper and input handling


@torch.no_grad()
def _weighted_neighbour_sum(
    feats: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    alpha: float,
    *,
    add_self: bool,
) -> torch.Tensor:
    """``normalise([feats +] sum_n max(s_n, 0)^alpha bank_n)`` over the k most similar of bank.

    Args:
        feats: (M, D) L2-normalised.
        bank: (B, D) L2-normalised.

    Returns:
        (M, D) L2-normalised float32.
    """
    k = min(k, bank.shape[0])
    # Bounds both the similarity block and the gathered neighbour features.
    block_size = max(1, _AQE_CELLS // max(bank.shape[0], k * bank.shape[1]))
    out = torch.empty_like(feats)
    for s in range(0, feats.shape[0], block_size):
        chunk = feats[s : s + block_size]
        sim, index = torch.topk(chunk @ bank.T, k, dim=1)
        weight = sim.clamp_min(0).pow(alpha)
        summed = torch.einsum("mk,mkd->md", weight, bank[index])
        if add_self:
            summed += chunk
        out[s : s + block_size] = F.normalize(summed, dim=1)
    return out


def _query_and_gallery(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor, str | torch.device]:
    """Checked (Q, D) and (G, D) tensors, and the device to compute on (default: the
    query tensor's, else the CPU)."""
    query = _as_tensor(query_feats, "query_feats")
    gallery = _as_tensor(gallery_feats, "gallery_feats")
    if query.shape[1] != gallery.shape[1]:
        raise InputError(
            f"feature sizes differ: query {tuple(query.shape)}, gallery {tuple(gallery.shape)}"
        )
    if device is None:
        device = query_feats.device if isinstance(query_feats, torch.Tensor) else "cpu"
    return query, gallery, device


def _as_tensor(feats: FeatureArray, name: str) -> torch.Tensor:
    """A detached (N, D) tensor view or copy of ``feats`` (dtype unchanged)."""
    tensor = (
        feats.detach() if isinstance(feats, torch.Tensor) else torch.from_numpy(np.asarray(feats))
    )
    if tensor.dim() != 2:
        raise InputError(f"{name} must be (N, D), got shape {tuple(tensor.shape)}")
    return tensor


def _since(start: float) -> float:
    return time.perf_counter() - start
