"""Distances from features, and ranking evaluation that never holds the whole matrix.

:func:`evaluate_features` computes the distances of one block of queries at a time (one
GEMM, on the GPU when the features or ``device`` say so), ranks it with
:class:`~reid.evaluation.metrics.MarketRanker` and drops it: at MSMT17 size a few
hundred MB instead of the 3.8 GB full matrix.

The block grid is fixed by the gallery, and every block is copied into a fresh buffer
and put through the same operations, because BLAS (MKL, cuBLAS) may round a row of
``A @ B`` differently for different numbers of rows in ``A``. So
``evaluate_features(q, g, ...)`` equals ``evaluate_rank(pairwise_distance(q, g), ...)``
exactly, ties included, on a given device; CPU and CUDA agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from reid.errors import InputError, ReidError
from reid.evaluation.metrics import MarketRanker, as_label_set, as_tensor, check_options
from reid.utils.env import resolve_device

METRICS = ("cosine", "euclidean")
# A block of distances is at most this big, and at most _MAX_BLOCK_ROWS rows: taller
# blocks make a faster GEMM, and 256 MiB stays small next to a large gallery's features.
_BLOCK_BYTES = 256 * 2**20
_MAX_BLOCK_ROWS = 1024
# Same clamp as torch.nn.functional.normalize: a zero feature has similarity 0.
_NORM_EPS = 1e-12
# Rows per pass for norms and NaN scans, so no temporary is the size of the gallery.
_SCAN_ROWS = 8192


def compute_device(device: str | torch.device | None, *tensors: torch.Tensor) -> torch.device:
    """The device asked for (InputError if unknown or absent), else the CUDA device of an
    input, else the CPU."""
    if device is None:
        return next((t.device for t in tensors if t.device.type == "cuda"), torch.device("cpu"))
    try:
        return resolve_device(str(device))
    except ReidError as err:
        raise InputError(str(err)) from None


def squared_euclidean(
    x: torch.Tensor, y: torch.Tensor, x_sq: torch.Tensor, y_sq: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``|x_i|^2 + |y_j|^2 - 2 x_i . y_j`` of (N, D) ``x`` and (M, D) ``y`` (squared row
    norms ``x_sq``, ``y_sq``) into (N, M) ``out``, one GEMM. Evaluation and re-ranking
    share it; the losses keep their own, clamped for the gradient."""
    torch.add(x_sq[:, None], y_sq[None, :], out=out)
    return out.addmm_(x, y.T, alpha=-2)


def distance_blocks(
    query: torch.Tensor, gallery: torch.Tensor, metric: str, device: torch.device
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, (n, G) distances)`` for the fixed grid of query blocks, on ``device``.

    Cosine: ``1 - cos``; Euclidean: ``sqrt(max(squared_euclidean, 0))``. float32, or
    float64 if either input is. The gallery is moved (and made contiguous) once.
    """
    dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
    gallery = gallery.to(device=device, dtype=dtype).contiguous()
    gallery_stat = _row_stats(gallery, metric)
    rows = max(1, min(_MAX_BLOCK_ROWS, _BLOCK_BYTES // (len(gallery) * dtype.itemsize)))
    for start in range(0, len(query), rows):
        # A helper builds each block, so this generator holds none while it waits.
        yield start, _block_distances(query[start : start + rows], gallery, gallery_stat, metric)


def _block_distances(
    query: torch.Tensor, gallery: torch.Tensor, gallery_stat: torch.Tensor, metric: str
) -> torch.Tensor:
    """(n, G) distances of a query block, copied into a fresh buffer on the gallery's
    device and dtype so the same operations run whatever the block's origin."""
    block = torch.empty(query.shape, dtype=gallery.dtype, device=gallery.device)
    block.copy_(query)
    out = block.new_empty((len(block), len(gallery)))
    if metric == "cosine":
        block.div_(_row_stats(block, metric)[:, None])
        torch.mm(block, gallery.T, out=out)
        return out.div_(gallery_stat[None, :]).neg_().add_(1.0)
    squared_euclidean(block, gallery, _row_stats(block, metric), gallery_stat, out)
    return out.clamp_min_(0.0).sqrt_()


def pairwise_distance(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    metric: str = "cosine",
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The full (num_query, num_gallery) distance matrix of (n, dim) features.

    ``"cosine"``: ``1 - cos(q, g)`` (a zero vector is at distance 1 from everything);
    ``"euclidean"``: ``||q - g||`` as ``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))``. Computed
    on ``device`` (default: CUDA if an input is there, else CPU), bitwise equal to the
    blocks :func:`evaluate_features` ranks.
    """
    query, gallery = as_features(query_feats, gallery_feats, metric)
    device = compute_device(device, query, gallery)
    out = None
    for start, block in distance_blocks(query, gallery, metric, device):
        if out is None:
            out = block.new_empty((len(query), len(gallery)))
        out[start : start + len(block)] = block
    return out


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
    """CMC, mAP and mINP from features, without the full matrix.

    Bitwise equal to ``evaluate_rank(pairwise_distance(query_feats, gallery_feats, metric,
    device=device), q_pids, g_pids, q_camids, g_camids, max_rank, ap)`` (see
    :func:`~reid.evaluation.metrics.evaluate_rank` for the protocol). Memory: the
    features, one block of at most 256 MiB of distances (on CUDA, also the host copies
    of the chunks being ranked), and the ranking's per-worker chunks. ``chunk_size`` and
    ``num_workers`` are ``evaluate_rank``'s.

    Returns:
        ``(cmc (max_rank,) float64, mAP, mINP)``.
    """
    query, gallery = as_features(query_feats, gallery_feats, metric)
    sizes = (len(query), len(gallery))
    source = f"the features have {sizes[0]} + {sizes[1]} rows"
    labels = as_label_set((q_pids, g_pids, q_camids, g_camids), sizes, source)
    for name, feats in zip(_FEATS, (query, gallery), strict=True):
        for start in range(0, feats.shape[0], _SCAN_ROWS):
            if not bool(torch.isfinite(feats[start : start + _SCAN_ROWS]).all()):
                raise InputError(f"{name} contains NaN or inf")
    check_options(max_rank, ap)
    ranker = MarketRanker(*labels)
    device = compute_device(device, query, gallery)
    if ranker.num_kept > 0:  # an all-junk gallery: result() says every query is skipped
        for start, block in distance_blocks(query, gallery, metric, device):
            ranker.add_rows(start, block, chunk_size=chunk_size, num_workers=num_workers)
            del block  # freed before the next block is computed
    return ranker.result(max_rank, ap)


def nearest_gallery(
    query_feats: np.ndarray | torch.Tensor,
    gallery_feats: np.ndarray | torch.Tensor,
    k: int,
    metric: str = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` nearest gallery items, in memory bounded like evaluation.

    Returns:
        ``(distances, indices)``, both (num_query, min(k, num_gallery)), nearest first
        (ties keep gallery order), on the CPU.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    query, gallery = as_features(query_feats, gallery_feats, metric)
    k = min(k, len(gallery))
    distances, indices = [], []
    for _, block in distance_blocks(query, gallery, metric, compute_device(None, query, gallery)):
        order = torch.argsort(block, dim=1, stable=True)[:, :k]
        distances.append(torch.gather(block, 1, order).cpu())
        indices.append(order.cpu())
    return torch.cat(distances), torch.cat(indices)


_FEATS = ("query_feats", "gallery_feats")


def _row_stats(feats: torch.Tensor, metric: str) -> torch.Tensor:
    """(n,) what the metric needs per row: the clamped L2 norm, or the squared norm."""
    parts = []
    for start in range(0, feats.shape[0], _SCAN_ROWS):
        rows = feats[start : start + _SCAN_ROWS]
        if metric == "cosine":
            parts.append(torch.linalg.vector_norm(rows, dim=1).clamp_min_(_NORM_EPS))
        else:
            parts.append(rows.square().sum(dim=1))
    return torch.cat(parts)


def as_features(
    query_feats: Any, gallery_feats: Any, metric: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked (Q, D) and (G, D) feature tensors (and a known ``metric``)."""
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    query, gallery = as_tensor(_FEATS[0], query_feats, 2), as_tensor(_FEATS[1], gallery_feats, 2)
    if query.shape[1] != gallery.shape[1]:
        raise InputError(
            f"query_feats has {query.shape[1]} dims but gallery_feats has {gallery.shape[1]}"
        )
    return query, gallery
