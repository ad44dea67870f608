"""Feature extraction and model evaluation on a query + gallery loader."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode

from reid.evaluation.feature_ranking import evaluate_features, pairwise_distance
from reid.evaluation.metrics import evaluate_rank
from reid.evaluation.rerank import re_ranking
from reid.utils import distributed


@dataclass(frozen=True)
class RerankOptions:
    """k-reciprocal re-ranking parameters (Zhong et al. 2017)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Test features of a batch in eval mode.

    Args:
        images: (B, 3, H, W) on the model's device.
        flip: average with the features of the horizontally mirrored images; the
            average is re-normalised when the model normalises its features.

    Returns:
        (B, D) float32 features.
    """
    feats = model(images).float()
    if flip:
        feats = (feats + model(images.flip(3)).float()) / 2
        if getattr(model, "feat_norm", False):
            feats = F.normalize(feats, dim=1)
    return feats


def extract_features(
    model: nn.Module, loader: DataLoader, device: torch.device, flip: bool = False
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Runs the model in eval mode over a loader of ``(images, pids, camids)``.

    Under torchrun each rank's loader holds its contiguous share of the images
    (``build_test_loader``); the shares are gathered back in order on every rank.

    Returns:
        Features (N, D) float32 on CPU, pids (N,) and camids (N,).
    """
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    batches = tqdm(loader, desc="features", leave=False, disable=not distributed.is_main_process())
    for images, batch_pids, batch_camids in batches:
        feats.append(embed(model, images.to(device, non_blocking=True), flip).cpu())
        pids.append(batch_pids)
        camids.append(batch_camids)
    model.train(was_training)
    feats, pids, camids = (distributed.all_gather_rows(torch.cat(x)) for x in (feats, pids, camids))
    return feats, pids.numpy(), camids.numpy()


def gallery_distances(
    feats: torch.Tensor,
    num_query: int,
    metric: str = "cosine",
    rerank: RerankOptions | None = None,
    rows: Sequence[int] | None = None,
) -> np.ndarray | torch.Tensor:
    """Distances of the queries at ``rows`` (default: all) to the gallery.

    Args:
        feats: (N, D), queries first.
        metric: ``"cosine"`` or ``"euclidean"``; re-ranking always starts from the
            squared Euclidean distance of the published algorithm.

    Returns:
        (len(rows), N - num_query) distances, smaller = more similar.
    """
    query, gallery = feats[:num_query], feats[num_query:]
    rows = list(range(num_query)) if rows is None else list(rows)
    if rerank is None:
        return pairwise_distance(query[rows], gallery, metric)
    # Re-ranking depends on every query's neighbourhood, so it runs on all of them.
    return re_ranking(query, gallery, rerank.k1, rerank.k2, rerank.lambda_value)[rows]


def rank_gallery(
    feats: torch.Tensor,
    pids: np.ndarray,
    camids: np.ndarray,
    num_query: int,
    metric: str = "cosine",
    rerank: RerankOptions | None = None,
) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP of query features (the first ``num_query`` rows) against the rest.

    Without re-ranking the distances are computed query chunk by chunk, so memory
    stays bounded at any gallery size; re-ranking needs its own distance matrix.

    Returns:
        ``(cmc (50,), mAP, mINP)`` as fractions.
    """
    q, g = slice(0, num_query), slice(num_query, None)
    if rerank is None:
        return evaluate_features(
            feats[q], feats[g], pids[q], pids[g], camids[q], camids[g], metric=metric
        )
    distmat = gallery_distances(feats, num_query, metric, rerank)
    return evaluate_rank(distmat, pids[q], pids[g], camids[q], camids[g])


def summarize(cmc: np.ndarray, mean_ap: float, mean_inp: float) -> dict[str, float]:
    """The headline numbers: ``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mINP`` in [0, 1]."""
    return {
        "rank1": float(cmc[0]),
        "rank5": float(cmc[4]),
        "rank10": float(cmc[9]),
        "mAP": float(mean_ap),
        "mINP": float(mean_inp),
    }


def evaluate_model(
    model: nn.Module,
    loader: DataLoader,
    num_query: int,
    device: torch.device,
    flip: bool = False,
    metric: str = "cosine",
    rerank: RerankOptions | None = None,
) -> dict[str, float]:
    """Extracts query + gallery features and evaluates the ranking.

    Args:
        loader: query images first, then gallery images (``build_test_loader``).
        num_query: how many of the first items are queries.

    Returns:
        ``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mINP`` as fractions in [0, 1].
    """
    feats, pids, camids = extract_features(model, loader, device, flip)
    # Ranking runs once, on rank 0; the other ranks wait for its metrics.
    return distributed.on_main(
        lambda: summarize(*rank_gallery(feats, pids, camids, num_query, metric, rerank))
    )


def build_eval_options(cfg: CfgNode) -> dict:
    """``evaluate_model`` keyword arguments from ``TEST.FLIP``, ``METRIC``, ``RE_RANKING``."""
    rerank = None
    if cfg.TEST.RE_RANKING:
        rerank = RerankOptions(cfg.TEST.RERANK_K1, cfg.TEST.RERANK_K2, cfg.TEST.RERANK_LAMBDA)
    return {"flip": cfg.TEST.FLIP, "metric": cfg.TEST.METRIC, "rerank": rerank}
