"""Memory-bounded ranking evaluation straight from query and gallery features.

:func:`evaluate_features` never builds the (num_query, num_gallery) distance matrix:
it computes the distances of one block of queries at a time (one GEMM on the chosen
device), hands each block to :class:`~reid.evaluation.metrics.MarketRanker`, the
exact per-chunk ranking step of :func:`~reid.evaluation.metrics.evaluate_rank`, and
drops it. Memory is the features plus one block of distances plus the ranking's
per-worker copies; at MSMT17 size (11,659 x 82,161, 2048-d) that is well under the
3.8 GB the full float32 matrix would need.

Why the block grid is fixed
---------------------------
Ranks, and so CMC/mAP/mINP, are only reproducible if every distance is bitwise the
same however the computation is split: a last-bit change can swap two gallery items
at (nearly) equal distance. BLAS does not promise that a row of ``A @ B`` comes out
the same for different numbers of rows in ``A``: with MKL on this project's CPU a
1-row product (2048-d) differs in the last bits from the same row of a 300-row
product in over 90% of the entries, and cuBLAS picks kernels by shape. So distances
are always computed on one grid of query blocks, ``[0, B), [B, 2B), ...`` with ``B``
fixed by the gallery size and dtype (:func:`_block_rows`), each block copied into a
fresh buffer and run through the same sequence of operations
(:class:`_DistanceBlocks`). :func:`pairwise_distance` fills the full matrix from that
same grid, so ``evaluate_features(q, g, ...)`` equals ``evaluate_rank(
pairwise_distance(q, g), ...)`` exactly, ties included, for every ``chunk_size``
(which only sets how many rows are ranked at once) on a given device. CPU and CUDA
results agree to float rounding, not bitwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from reid.errors import InputError
from reid.evaluation.metrics import (
    MarketRanker,
    _check_chunking,
    _check_summary_options,
    _label_array,
)

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")

# One block of distances is at most this big (and at most _MAX_BLOCK_ROWS rows).
# Taller blocks make a faster GEMM (MKL, 2048-d, 82k gallery: ~47 GFLOP per CPU
# second at 204 rows, ~55 from 512), and 256 MiB stays small next to the features
# of a gallery that size (673 MiB) and far below its full matrix (3.8 GB per 11k queries).
_BLOCK_BYTES = 256 * 2**20
_MAX_BLOCK_ROWS = 1024
# Same clamp as torch.nn.functional.normalize: a zero feature gets similarity 0.
_NORM_EPS = 1e-12
# Rows per pass when scanning features for NaN/inf, to avoid a full-size bool mask.
_SCAN_ROWS = 8192


def pairwise_distance(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    metric: str = "cosine",
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Full query-by-gallery distance matrix, computed block by block.

    Metrics:

    - ``"cosine"``: ``1 - cos(q, g)``, in [0, 2] up to rounding (identical
      directions may give about -1e-7). Features are L2-normalised inside (a zero
      vector has similarity 0 with everything, so distance 1), so their scale is
      irrelevant; rather than a normalised copy of the gallery, its norms divide
      the GEMM output.
    - ``"euclidean"``: ``||q - g||_2`` (not squared), computed as
      ``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))``. Like ``torch.cdist`` on large
      inputs this loses relative precision for nearly identical vectors (absolute
      error about 1e-3 of the norms in float32), which is far below the gaps that
      decide ranks in practice.

    The computation is float32, or float64 if either input is float64; half
    precision and integers are widened to float32.

    Args:
        query_feats: (num_query, dim) numpy array or torch tensor (CPU or CUDA).
        gallery_feats: (num_gallery, dim), same ``dim``.
        metric: ``"cosine"`` or ``"euclidean"``.
        device: where to run the GEMMs; by default CUDA if either input is a CUDA
            tensor, else CPU.

    Returns:
        (num_query, num_gallery) distances on ``device``, bitwise equal to the
        blocks that :func:`evaluate_features` ranks on the same device.

    Raises:
        InputError (a ValueError): on an unknown ``metric``, non-2-D or empty features, or feature
            dims that differ between query and gallery.
    """
    query, gallery = _check_features(query_feats, gallery_feats, metric)
    blocks = _DistanceBlocks(query, gallery, metric, device)
    out = torch.empty(
        (blocks.num_query, blocks.num_gallery), dtype=blocks.dtype, device=blocks.device
    )
    for start, stop in blocks.grid():
        out[start:stop] = blocks.compute(start, stop)
    return out


def nearest_gallery(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    k: int,
    metric: str = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` nearest gallery items, in memory bounded like evaluation.

    Distances are computed one block of queries at a time, with the recipe of
    :func:`pairwise_distance`, and only the ``k`` best of each row are kept, so a
    100k-image gallery needs no query-by-gallery matrix. Ties keep gallery order.

    Args:
        query_feats: (num_query, dim).
        gallery_feats: (num_gallery, dim).
        k: neighbours per query; at most ``num_gallery`` are returned.
        metric: ``"cosine"`` or ``"euclidean"``.

    Returns:
        ``(distances, indices)``, both (num_query, min(k, num_gallery)), nearest first,
        on the CPU.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    query, gallery = _check_features(query_feats, gallery_feats, metric)
    blocks = _DistanceBlocks(query, gallery, metric, device=None)
    k = min(k, blocks.num_gallery)
    distances, indices = [], []
    for start, stop in blocks.grid():
        block = blocks.compute(start, stop)
        order = torch.argsort(block, dim=1, stable=True)[:, :k]
        distances.append(torch.gather(block, 1, order).cpu())
        indices.append(order.cpu())
    return torch.cat(distances), torch.cat(indices)


def evaluate_features(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    metric: str = "cosine",
    max_rank: int = 50,
    ap: str = "standard",
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    num_workers: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP (Market-1501 protocol) from features, without the full matrix.

    Equal to ``evaluate_rank(pairwise_distance(query_feats, gallery_feats, metric,
    device=device), q_pids, g_pids, q_camids, g_camids, max_rank, ap)``: bitwise on
    the same device, ties included (stable order: among equal distances the earlier
    gallery item ranks first), because both rank the same distances, computed on the
    same fixed grid of query blocks (see the module docstring). See
    :func:`~reid.evaluation.metrics.evaluate_rank` for the filtering (junk pid -1,
    same-pid-and-camera removal, distractors pid 0), skipped queries and the two AP
    conventions, and :func:`pairwise_distance` for the metrics. One caveat on ties:
    two identical gallery features are not promised bitwise-equal distances (BLAS
    may treat output columns differently), so their relative order may follow
    rounding instead of gallery order; ``evaluate_rank`` on the same matrix sees the
    same values, so the equality above holds either way.

    Memory: the features (a C-contiguous float32 gallery already on the compute
    device is used in place; any other is converted once, e.g. copied to the GPU),
    one block of at most 256 MiB of distances (on CUDA also the next block, computed
    while the CPU ranks the current one, and the current block's host copy), and the
    ranking's per-worker copies of ``chunk_size`` rows.

    Args:
        query_feats: (num_query, dim) numpy array or torch tensor (CPU or CUDA).
        gallery_feats: (num_gallery, dim).
        q_pids: (num_query,) query identities.
        g_pids: (num_gallery,) gallery identities; -1 = junk, 0 = distractor.
        q_camids: (num_query,) query camera ids.
        g_camids: (num_gallery,) gallery camera ids.
        metric: ``"cosine"`` or ``"euclidean"``.
        max_rank: length of the returned CMC curve.
        ap: ``"standard"`` or ``"official"``.
        chunk_size: query rows ranked at once per worker (at most one distance
            block); by default about 8 MiB of distances. It never changes results.
        device: where the distances are computed; by default CUDA if either feature
            tensor is on CUDA, else CPU. Ranking always runs on the CPU.
        num_workers: ranking threads; defaults to the CPUs available to this
            process. The GEMM uses torch's own thread pool on CPU.

    Returns:
        ``(cmc, mAP, mINP)``: ``cmc`` (max_rank,) float64; floats in [0, 1].

    Raises:
        InputError (a ValueError): on an unknown ``metric`` or ``ap``; non-2-D, empty, NaN/inf or
            dim-mismatched features; pids/camids whose length differs from the
            feature rows; a bad ``max_rank``, ``chunk_size`` or ``num_workers``; or
            when no query has a correct match.
    """
    _check_summary_options(max_rank, ap)
    _check_chunking(chunk_size, num_workers)
    query, gallery = _check_features(query_feats, gallery_feats, metric)
    labels = []
    for name, value, feats_name, feats in (
        ("q_pids", q_pids, "query_feats", query),
        ("g_pids", g_pids, "gallery_feats", gallery),
        ("q_camids", q_camids, "query_feats", query),
        ("g_camids", g_camids, "gallery_feats", gallery),
    ):
        array = _label_array(name, value)
        if array.shape[0] != feats.shape[0]:
            raise InputError(
                f"{name} has length {array.shape[0]} but {feats_name} has {feats.shape[0]} rows"
            )
        labels.append(array)
    for name, feats in (("query_feats", query), ("gallery_feats", gallery)):
        _check_finite(name, feats)

    ranker = MarketRanker(*labels)
    blocks = _DistanceBlocks(query, gallery, metric, device)
    if chunk_size is None:
        chunk_size = ranker.default_chunk_size(blocks.dtype.itemsize)
    if ranker.num_kept > 0:  # an all-junk gallery: every query is skipped, result() says so
        for start, host_block in _host_blocks(blocks, prefetch=blocks.device.type == "cuda"):
            ranker.add_rows(start, host_block, chunk_size=chunk_size, num_workers=num_workers)
            # Drop it before the next block is computed, or two blocks would coexist.
            del host_block
    return ranker.result(max_rank, ap)


# ---------------------------------------------------------------------------
# Distances on a fixed grid of query blocks


def _block_rows(num_gallery: int, itemsize: int) -> int:
    """Rows per distance block: a function of the gallery only, never of chunk_size."""
    return max(1, min(_MAX_BLOCK_ROWS, _BLOCK_BYTES // (num_gallery * itemsize)))


class _DistanceBlocks:
    """Validated features and the one recipe that turns a query block into distances.

    Every caller that needs distances of queries ``start:stop`` gets them from
    :meth:`compute` on the blocks of :meth:`grid`, which is what makes them bitwise
    reproducible (see the module docstring).
    """

    def __init__(
        self,
        query: torch.Tensor,
        gallery: torch.Tensor,
        metric: str,
        device: str | torch.device | None,
    ) -> None:
        """Moves the gallery to the device once and computes its norms.

        Args:
            query: (num_query, dim) checked features, on any device.
            gallery: (num_gallery, dim) checked features.
            metric: ``"cosine"`` or ``"euclidean"``.
            device: see :func:`pairwise_distance`.
        """
        self.metric = metric
        self.device = _resolve_device(device, query, gallery)
        self.dtype = (
            torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
        )
        self.num_query, self.num_gallery = int(query.shape[0]), int(gallery.shape[0])
        self.block_rows = _block_rows(self.num_gallery, self.dtype.itemsize)
        self._query = query  # blocks are moved to the device one at a time
        # Contiguous whatever the input layout, so that every layout gives the same
        # GEMM and therefore the same bits.
        self._gallery = gallery.to(device=self.device, dtype=self.dtype).contiguous()
        self._gallery_norms = self._norms(self._gallery)
        logger.debug(
            "distances %d x %d (%s, %s on %s) in blocks of %d query rows",
            self.num_query,
            self.num_gallery,
            metric,
            self.dtype,
            self.device,
            self.block_rows,
        )

    def grid(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of the query blocks, in order."""
        for start in range(0, self.num_query, self.block_rows):
            yield start, min(start + self.block_rows, self.num_query)

    def compute(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, num_gallery) distances of one block of :meth:`grid`.

        Always the same operations on a freshly allocated contiguous copy of the
        query rows, so the GEMM sees identical shapes, strides and alignment.
        """
        query = torch.empty(
            (stop - start, self._query.shape[1]), dtype=self.dtype, device=self.device
        )
        query.copy_(self._query[start:stop])
        if self.metric == "cosine":
            query.div_(self._norms(query).unsqueeze(1))
            dist = torch.mm(query, self._gallery.T)
            dist.div_(self._gallery_norms.unsqueeze(0))
            return dist.neg_().add_(1.0)  # 1 - similarity, without another buffer
        query_sq = self._norms(query).unsqueeze(1)
        dist = torch.mm(query, self._gallery.T)
        dist.mul_(-2.0).add_(query_sq).add_(self._gallery_norms.unsqueeze(0))
        return dist.clamp_min_(0.0).sqrt_()

    def _norms(self, feats: torch.Tensor) -> torch.Tensor:
        """(n,) per-row statistic the metric needs: clamped L2 norm or squared norm.

        Computed a fixed number of rows at a time, so no temporary the size of the
        gallery is ever allocated.
        """
        parts = []
        for start in range(0, feats.shape[0], _SCAN_ROWS):
            rows = feats[start : start + _SCAN_ROWS]
            if self.metric == "cosine":
                parts.append(torch.linalg.vector_norm(rows, dim=1).clamp_min_(_NORM_EPS))
            else:
                parts.append(rows.square().sum(dim=1))
        return torch.cat(parts)


def _host_blocks(blocks: _DistanceBlocks, prefetch: bool) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(start, (n, num_gallery) host distances)`` for every block of the grid.

    Args:
        prefetch: queue the next block's GEMM before handing over the current one, so
            an asynchronous device (CUDA) computes while the CPU ranks. On CPU it
            would only hold a second block, so blocks are computed one at a time.
    """
    grid = list(blocks.grid())
    ahead = None
    for index, (start, stop) in enumerate(grid):
        block = ahead if ahead is not None else blocks.compute(start, stop)
        host = block.cpu().numpy()  # on CUDA this waits for this block only
        del block  # on CPU ``host`` shares its memory; on CUDA the device copy is done
        has_next = index + 1 < len(grid)
        ahead = blocks.compute(*grid[index + 1]) if prefetch and has_next else None
        yield start, host
        del host  # the caller has ranked it; free it before computing the next block


# ---------------------------------------------------------------------------
# Input handling


def _check_features(
    query_feats: Any, gallery_feats: Any, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates the metric and both feature matrices.

    Returns:
        ``(query (num_query, dim), gallery (num_gallery, dim))`` as torch tensors,
        sharing memory with the inputs where possible.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    query = _as_tensor("query_feats", query_feats)
    gallery = _as_tensor("gallery_feats", gallery_feats)
    if query.shape[1] != gallery.shape[1]:
        raise InputError(
            f"query_feats has {query.shape[1]} dims but gallery_feats has {gallery.shape[1]}"
        )
    return query, gallery


def _check_finite(name: str, feats: torch.Tensor) -> None:
    """Raises ValueError if ``feats`` holds NaN or inf (scanned in slices, no full mask)."""
    for start in range(0, feats.shape[0], _SCAN_ROWS):
        if not bool(torch.isfinite(feats[start : start + _SCAN_ROWS]).all()):
            raise InputError(f"{name} contains NaN or inf")


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    """Returns features as a 2-D real torch tensor, sharing memory where possible.

    Half precision and integers are widened to float32 later, block by block for
    the queries.
    """
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise InputError(f"{name} must hold real numbers, got dtype {value.dtype}")
        # from_numpy rejects negative strides; a contiguous array is used in place.
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise InputError(f"{name} must hold real numbers, got dtype {value.dtype}")
        tensor = value.detach()
    else:
        raise InputError(
            f"{name} must be a numpy array or torch tensor, got {type(value).__name__}"
        )
    if tensor.ndim != 2:
        raise InputError(f"{name} must be 2-D (num_items, dim), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise InputError(f"{name} is empty: shape {tuple(tensor.shape)}")
    return tensor


def _resolve_device(
    device: str | torch.device | None, query: torch.Tensor, gallery: torch.Tensor
) -> torch.device:
    """The requested device, else the CUDA device of either input, else CPU."""
    if device is None:
        on_cuda = [t.device for t in (query, gallery) if t.device.type == "cuda"]
        return on_cuda[0] if on_cuda else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(resolved)!r} requested but CUDA is not available")
    return resolved
