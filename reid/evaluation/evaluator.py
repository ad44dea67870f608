"""Evaluating a model: features of a query + gallery loader, then the test-time options
(alpha-QE, re-ranking) and the ranking metrics.

The features' path is one way: :func:`extract_features` -> :class:`ProtocolRanking` (the
test set's protocol divides its images into splits) -> one :class:`Ranking` per split
(query expansion, then either re-ranked distances or memory-bounded blocks) -> metrics,
averaged over the splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode

from reid.errors import InputError
from reid.evaluation.feature_ranking import evaluate_features, pairwise_distance
from reid.evaluation.metrics import check_gallery_matches, evaluate_rank
from reid.evaluation.rerank import alpha_query_expansion, re_ranking
from reid.protocol import PROTOCOLS
from reid.utils import distributed

if TYPE_CHECKING:
    from reid.data.datasets import ReidDataset


@dataclass(frozen=True)
class RerankOptions:
    """k-reciprocal re-ranking parameters (Zhong et al. 2017)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3


@dataclass(frozen=True)
class AqeOptions:
    """Alpha query expansion parameters (Radenovic et al. 2018)."""

    k: int = 5
    alpha: float = 3.0


@dataclass(frozen=True)
class EvalOptions:
    """How test features are compared: ``TEST.*`` as plain values."""

    flip: bool = False
    metric: str = "cosine"
    ap: str = "standard"
    rerank: RerankOptions | None = None
    aqe: AqeOptions | None = None


def build_eval_options(cfg: CfgNode) -> EvalOptions:
    """``TEST.FLIP``, ``METRIC``, ``AP``, ``RE_RANKING`` (+ ``RERANK_*``), ``AQE`` (+ ``AQE_*``)."""
    test = cfg.TEST
    rerank = RerankOptions(test.RERANK_K1, test.RERANK_K2, test.RERANK_LAMBDA)
    aqe = AqeOptions(test.AQE_K, test.AQE_ALPHA)
    return EvalOptions(
        test.FLIP,
        test.METRIC,
        test.AP,
        rerank if test.RE_RANKING else None,
        aqe if test.AQE else None,
    )


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """(B, D) float32 test features of (B, 3, H, W) images on the model's device; with
    ``flip``, averaged with the mirrored images' (re-normalised if the model normalises)."""
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
        Features (N, D) float32 on the CPU, pids (N,) and camids (N,).
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


class Ranking:
    """(N, D) features, the first ``num_query`` the queries, ranked under ``options``,
    with distances on ``device`` (the model's; by default the CPU).

    With alpha-QE the features are expanded first. With re-ranking the (Q, G)
    re-ranked matrix is computed once, on first use, and serves both the metrics and
    any rows asked for; without it the metrics come from memory-bounded blocks.
    """

    def __init__(
        self,
        feats: torch.Tensor,
        pids: np.ndarray,
        camids: np.ndarray,
        num_query: int,
        options: EvalOptions = EvalOptions(),
        device: torch.device | None = None,
    ) -> None:
        self.query, self.gallery = feats[:num_query], feats[num_query:]
        if options.aqe is not None:
            self.query, self.gallery = alpha_query_expansion(
                self.query, self.gallery, options.aqe.k, options.aqe.alpha, device=device
            )
        q, g = slice(0, num_query), slice(num_query, None)
        self.labels = (pids[q], pids[g], camids[q], camids[g])
        self.options, self.device = options, device
        self._reranked: np.ndarray | None = None

    def metrics(self, max_rank: int = 50) -> tuple[np.ndarray, float, float]:
        """``(cmc (max_rank,), mAP, mINP)`` under the Market-1501 protocol."""
        if self.options.rerank is None:
            return evaluate_features(
                self.query, self.gallery, *self.labels, self.options.metric, max_rank,
                self.options.ap, device=self.device,
            )  # fmt: skip
        return evaluate_rank(self.distances(), *self.labels, max_rank, self.options.ap)

    def distances(self, rows: Sequence[int] | None = None) -> np.ndarray | torch.Tensor:
        """Distances of the queries at ``rows`` (default: all) to the gallery, (len(rows), G).

        Re-ranking starts from the squared Euclidean distance of the published
        algorithm, whatever ``metric`` says.
        """
        rerank = self.options.rerank
        if rerank is None:
            query = self.query if rows is None else self.query[list(rows)]
            return pairwise_distance(query, self.gallery, self.options.metric, device=self.device)
        if self._reranked is None:
            self._reranked = re_ranking(
                self.query, self.gallery, rerank.k1, rerank.k2, rerank.lambda_value,
                device=self.device,
            )  # fmt: skip
        return self._reranked if rows is None else self._reranked[list(rows)]


class ProtocolRanking:
    """A test set's (N, D) features ranked under its protocol
    (:data:`reid.protocol.PROTOCOLS`): one :class:`Ranking` per split of the images, the
    metrics averaged over the splits.

    Args:
        feats, pids, camids, num_query: the test images as loaded, the ``num_query``
            query records first.
        protocol: the dataset's protocol name (``"market"``, ``"no_cameras"``,
            ``"vehicleid"``, ...).
        options, device: as :class:`Ranking`.

    Attributes:
        splits: the protocol's splits.
        first: the ranking of the first split, kept (with its re-ranked distances) for
            pictures of it; the other splits are ranked one at a time and let go.
    """

    def __init__(
        self,
        feats: torch.Tensor,
        pids: np.ndarray,
        camids: np.ndarray,
        num_query: int,
        protocol: str = "market",
        options: EvalOptions = EvalOptions(),
        device: torch.device | None = None,
    ) -> None:
        self.splits = PROTOCOLS.get(protocol)(np.asarray(pids), np.asarray(camids), num_query)
        self._feats, self._pids = feats, np.asarray(pids)
        self._options, self._device = options, device
        self.first = self._ranking(0)

    def _ranking(self, index: int) -> Ranking:
        rows, num_query, camids = self.splits[index]
        feat_rows = rows if isinstance(rows, slice) else torch.as_tensor(rows)
        return Ranking(
            self._feats[feat_rows], self._pids[rows], camids, num_query, self._options,
            self._device,
        )  # fmt: skip

    def metrics(self, max_rank: int = 50) -> tuple[np.ndarray, float, float]:
        """``(cmc (max_rank,), mAP, mINP)``, each the mean over the splits."""
        results = [self.first.metrics(max_rank)]
        results += [self._ranking(i).metrics(max_rank) for i in range(1, len(self.splits))]
        cmc, mean_ap, mean_inp = zip(*results, strict=True)
        return np.mean(cmc, axis=0), float(np.mean(mean_ap)), float(np.mean(mean_inp))


def check_test_set(dataset: ReidDataset) -> None:
    """Raises InputError, naming the dataset, unless some query of each split of its
    protocol has a correct match (:func:`reid.evaluation.check_gallery_matches`): a
    check from the labels alone, which training runs before its first epoch."""
    records = dataset.query + dataset.gallery
    pids, camids = np.array([r.pid for r in records]), np.array([r.camid for r in records])
    for rows, num_query, split_camids in PROTOCOLS.get(dataset.protocol)(
        pids, camids, len(dataset.query)
    ):
        labels = pids[rows]
        try:
            check_gallery_matches(
                labels[:num_query], labels[num_query:],
                split_camids[:num_query], split_camids[num_query:],
            )  # fmt: skip
        except InputError as err:
            raise InputError(f"test set {dataset.name}: {err}") from None


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
    options: EvalOptions = EvalOptions(),
    protocol: str = "market",
) -> dict[str, float]:
    """:func:`summarize`'s metrics of a loader's images (``build_test_loader``: the
    ``num_query`` queries first) under the test set's ``protocol``, distances on
    ``device`` (the model's). Under torchrun the ranking runs once, on rank 0, and every
    rank gets its metrics."""
    feats, pids, camids = extract_features(model, loader, device, options.flip)
    # Built inside on_main: query expansion runs on rank 0 only, like the ranking.
    return distributed.on_main(
        lambda: summarize(
            *ProtocolRanking(feats, pids, camids, num_query, protocol, options, device).metrics()
        )
    )
