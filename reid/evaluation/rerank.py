"""Post-processing of a query x gallery ranking: k-reciprocal re-ranking and alpha-QE.

k-reciprocal re-ranking (Zhong et al., CVPR 2017) reads little of the dense N x N
matrices the published code builds: each sample's ``max(k1 + 1, k2)`` nearest
neighbours, each row's maximum, a few distances inside the expanded neighbourhoods and
the query x gallery block. So distances come in square blocks (the upper triangle only,
each block serving its mirror) merged into running nearest neighbours with
``torch.topk``; the encodings ``V`` are sparse (about 20 non-zeros a row) and the
Jaccard overlaps are sums of ``min`` gathered through the gallery's inverted index.

Precision: a near-tie at a neighbour-list cut (below float32 rounding) may fall either
way in any two float32 implementations and moves the rows it touches by up to ~1e-2;
elsewhere results equal a float32 run of the published algorithm to about 1e-6.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm import tqdm

from reid.errors import InputError
from reid.evaluation.feature_ranking import as_features, compute_device, squared_euclidean

FeatureArray = np.ndarray | torch.Tensor

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

    The published algorithm, step by step:

    1. ``d[i, j]``: squared Euclidean distances of all ``N = Q + G`` features.
    2. ``o[i, :] = d[i, :] / max_j d[i, j]`` (the authors' ``(d / d.max(axis=0)).T`` on a
       symmetric ``d``): each row scaled by its own maximum, so ``o`` is not symmetric.
    3. ``N(i, k)``: the ``k + 1`` nearest samples to ``i`` (itself included);
       ``R(i, k)``: those ``j`` in ``N(i, k)`` with ``i`` in ``N(j, k)``.
    4. ``R*(i)``: ``R(i, k1)`` joined with ``R(j, round(k1 / 2))`` for every ``j`` in
       ``R(i, k1)`` whose set has more than 2/3 of its members in ``R(i, k1)``.
    5. ``V[i, j] = exp(-o[i, j]) / sum_{j' in R*(i)} exp(-o[i, j'])`` on ``R*(i)``, else 0.
    6. Local query expansion (``k2 != 1``): row ``i`` of ``V`` becomes the mean of the
       rows of its ``k2`` nearest samples.
    7. ``s[q, g] = sum_c min(V[q, c], V[g, c])``; Jaccard distance ``1 - s / (2 - s)``.
    8. Result: ``jaccard * (1 - lambda_value) + o * lambda_value`` for (query, gallery).

    The authors keep ``V`` and the Jaccard distance in float16 (up to ~3e-3 off); here
    everything is float32. Memory is O(N * k1 + N * D) plus the (Q, G) output.

    Args:
        query_feats: (Q, D) query features (tensor or array; cast to float32).
        gallery_feats: (G, D) gallery features.
        k1: size of the k-reciprocal neighbourhoods.
        k2: size of the local query expansion (1 turns it off).
        lambda_value: weight of the original distance, in [0, 1].
        device: where the GEMM and neighbour search run (the sparse stages run on the
            CPU); by default a CUDA input's device, else the CPU.
        block_size: side of the square distance blocks (at least ``max(k1 + 1, k2)``);
            peak extra memory is a few such float32 blocks.

    Returns:
        (Q, G) float32 re-ranked distances (smaller is more similar).
    """
    if k1 < 1 or k2 < 1:
        raise InputError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise InputError(f"lambda_value must be in [0, 1], got {lambda_value}")
    query, gallery = as_features(query_feats, gallery_feats)
    device = compute_device(device, query, gallery)
    num_query, num_gallery = query.shape[0], gallery.shape[0]
    num_all = num_query + num_gallery
    out = np.empty((num_query, num_gallery), dtype=np.float32)

    # Each side moved first: the two may come from different devices.
    feats = torch.cat([x.to(device=device, dtype=torch.float32) for x in (query, gallery)])
    num_neighbours = min(max(k1 + 1, k2), num_all)
    top_dist, top_index, row_max = _nearest_neighbours(
        feats, num_neighbours, max(block_size, num_neighbours), out, num_query
    )
    rows, cols = _expanded_neighbourhoods(top_index, k1)
    dist = _pair_distances(rows, cols, top_index, top_dist, feats)
    weight = np.exp(-(dist / row_max[rows]))
    weight /= np.bincount(rows, weights=weight, minlength=num_all).astype(np.float32)[rows]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=num_all))])
    encoding = sp.csr_matrix((weight, cols, indptr), shape=(num_all, num_all))
    if k2 != 1:  # local query expansion: each row the mean of its k2 nearest rows
        nearest = top_index[:, : min(k2, num_all)]
        averaging = sp.csr_matrix(
            (np.full(nearest.size, 1.0 / nearest.shape[1], dtype=np.float32), nearest.ravel(),
             np.arange(0, nearest.size + 1, nearest.shape[1])),
            shape=(num_all, num_all),
        )  # fmt: skip
        encoding = (averaging @ encoding).tocsr()
    _combine_with_jaccard(
        out, encoding[:num_query], encoding[num_query:].tocsc(), row_max[:num_query], lambda_value
    )
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
    """Alpha query expansion and its gallery-side twin (Radenovic et al., TPAMI 2018).

    Features are L2-normalised, so similarity is the cosine ``s``, and each is replaced,
    in one pass, by the normalised weighted sum of its ``k`` nearest among itself and
    the gallery, with weights ``max(s, 0) ** alpha`` (1 for itself): gallery features
    over the gallery before expansion (``expand_gallery``, "database-side
    augmentation"), query features over the gallery as returned (``expand_query``;
    queries never use other queries). ``alpha = 0`` is plain average query expansion;
    ``k = 1`` only normalises.

    Args:
        query_feats: (Q, D) query features (tensor or array).
        gallery_feats: (G, D) gallery features.
        k: neighbours per feature, itself included (``k >= 1``).
        alpha: exponent of the similarity weights.
        expand_query, expand_gallery: which side to expand.
        device: where the similarities are computed (blocks of about 32M entries).

    Returns:
        ``(query (Q, D), gallery (G, D))``: L2-normalised float32 tensors on the CPU.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    query, gallery = as_features(query_feats, gallery_feats)
    device = compute_device(device, query, gallery)
    query = F.normalize(query.to(device=device, dtype=torch.float32), dim=1)
    gallery = F.normalize(gallery.to(device=device, dtype=torch.float32), dim=1)
    if expand_gallery and k > 1:
        gallery = _weighted_neighbour_sum(gallery, gallery, k, alpha, add_self=False)
    if expand_query and k > 1:
        query = _weighted_neighbour_sum(query, gallery, k - 1, alpha, add_self=True)
    return query.cpu(), gallery.cpu()


@torch.no_grad()
def _nearest_neighbours(
    feats: torch.Tensor, k: int, block_size: int, qg_out: np.ndarray, num_query: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k nearest neighbours and row maxima of the squared distances of (N, D)
    ``feats`` (queries first; ``k <= min(N, block_size)``), writing the raw query x
    gallery distances into ``qg_out`` (Q, G) on the way.

    Returns:
        ``(dist (N, k), index (N, k), row_max (N,))`` as numpy, nearest first.
    """
    num_all, device = feats.shape[0], feats.device
    sq_norm = (feats * feats).sum(dim=1)
    top = (
        torch.full((num_all, k), float("inf"), device=device),
        torch.zeros((num_all, k), dtype=torch.int64, device=device),
        torch.full((num_all,), float("-inf"), device=device),
    )
    # One buffer for every block: fresh multi-megabyte allocations cost page faults.
    buffer = torch.empty(block_size * block_size, dtype=torch.float32, device=device)
    qg_view = torch.from_numpy(qg_out)
    starts = range(0, num_all, block_size)
    pairs = [(r0, c0) for r0 in starts for c0 in starts if c0 >= r0]
    for r0, c0 in tqdm(pairs, desc="re-ranking distances", leave=False, disable=None):
        r1, c1 = min(r0 + block_size, num_all), min(c0 + block_size, num_all)
        block = buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        squared_euclidean(feats[r0:r1], feats[c0:c1], sq_norm[r0:r1], sq_norm[c0:c1], block)
        _merge_block(block, r0, c0, *top)
        # Query rows x gallery columns all lie above the diagonal: on the direct side.
        q_end, g_start = min(r1, num_query), max(c0, num_query)
        if r0 < q_end and g_start < c1:
            qg_view[r0:q_end, g_start - num_query : c1 - num_query].copy_(
                block[: q_end - r0, g_start - c0 :]
            )
    return tuple(t.cpu().numpy() for t in top)


def _merge_block(
    block: torch.Tensor, r0: int, c0: int,
    top_dist: torch.Tensor, top_index: torch.Tensor, row_max: torch.Tensor,
) -> None:  # fmt: skip
    """Merges a (R, C) block of distances (rows r0:, columns c0:) and, off the diagonal,
    its mirror (rows c0:, columns r0:) into the running k nearest and row maxima.

    A row's first block (blocks are aligned, so all its rows at once) seeds its k
    nearest with ``topk``. After that its k-th distance bounds the final one, so one
    comparison pass over the block finds the few entries that can still enter.
    """
    k, mirrored = top_dist.shape[1], c0 != r0
    bounds = []  # per side: the k-th distance of its rows so far; -inf where just seeded
    for side, row0, col0 in [(block, r0, c0), (block.T, c0, r0)][: 1 + mirrored]:
        rows = slice(row0, row0 + side.shape[0])
        torch.maximum(row_max[rows], side.amax(dim=1), out=row_max[rows])
        bounds.append(top_dist[rows, -1].clone())
        if torch.isinf(bounds[-1][0]):
            dist, index = torch.topk(side, k, dim=1, largest=False)
            top_dist[rows], top_index[rows] = dist, index + col0
            bounds[-1].fill_(float("-inf"))
    mask = block < bounds[0][:, None]
    if mirrored:
        mask |= block < bounds[1][None, :]  # the mirror's rows are the block's columns
    if mask.is_cuda:
        hit = mask.view(-1).nonzero().squeeze(1)
    else:  # numpy's is several times faster than torch.nonzero on the CPU
        hit = torch.from_numpy(np.flatnonzero(mask.numpy()))
    i, j, dist = hit // block.shape[1], hit % block.shape[1], block.view(-1)[hit]
    for bound, rows, cols, row0, col0 in zip(
        bounds, (i, j), (j, i), (r0, c0), (c0, r0), strict=False
    ):
        keep = dist < bound[rows]
        _insert(top_dist, top_index, rows[keep] + row0, cols[keep] + col0, dist[keep])


def _insert(
    top_dist: torch.Tensor, top_index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
    dist: torch.Tensor,
) -> None:  # fmt: skip
    """Offers candidate (row, column, distance) triples to the rows' k nearest."""
    if len(rows) == 0:
        return
    k = top_dist.shape[1]
    order = torch.argsort(rows, stable=True)
    rows, cols, dist = rows[order], cols[order], dist[order]
    owners, counts = torch.unique_consecutive(rows, return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(owners), device=rows.device), counts)
    slot = (
        k + torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[group]
    )
    cand_dist = torch.full((len(owners), k + int(counts.max())), float("inf"), device=rows.device)
    cand_index = torch.zeros(cand_dist.shape, dtype=torch.int64, device=rows.device)
    cand_dist[:, :k], cand_index[:, :k] = top_dist[owners], top_index[owners]
    cand_dist[group, slot], cand_index[group, slot] = dist, cols
    best, pick = torch.topk(cand_dist, k, dim=1, largest=False)
    top_dist[owners], top_index[owners] = best, cand_index.gather(1, pick)


def _reciprocal_mask(neighbours: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(R, k + 1) bool: which of the first ``k + 1`` entries of ``neighbours[rows]``
    (an (N, >= k + 1) nearest-neighbour table) have the row among their own."""
    forward = neighbours[rows, : k + 1]
    backward = neighbours[forward, : k + 1]
    return (backward == rows[:, None, None]).any(axis=2)


def _expanded_neighbourhoods(neighbours: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal sets ``R*(i)`` of every sample, from an (N, K)
    nearest-neighbour table (K >= min(k1 + 1, N)), as sorted ``(rows, cols)`` pairs."""
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
    rows: np.ndarray, cols: np.ndarray, top_index: np.ndarray, top_dist: np.ndarray,
    feats: torch.Tensor,
) -> np.ndarray:  # fmt: skip
    """(P,) float32 squared distances ``d[rows, cols]``: from the (N, K) neighbour table
    ``top_index`` / ``top_dist`` where it has them, else from the (N, D) ``feats``."""
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


def _combine_with_jaccard(
    out: np.ndarray, query_rows: sp.csr_matrix, gallery_cols: sp.csc_matrix,
    query_max: np.ndarray, lambda_value: float,
) -> None:  # fmt: skip
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
    query_rows: sp.csr_matrix, gallery_cols: sp.csc_matrix, col_count: np.ndarray,
    q0: int, q1: int, num_gallery: int,
) -> np.ndarray:  # fmt: skip
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


@torch.no_grad()
def _weighted_neighbour_sum(
    feats: torch.Tensor, bank: torch.Tensor, k: int, alpha: float, *, add_self: bool
) -> torch.Tensor:
    """``normalise([feats +] sum_n max(s_n, 0)^alpha bank_n)`` over the k most similar of
    ``bank``, for L2-normalised (M, D) ``feats`` and (B, D) ``bank``: (M, D) float32."""
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
