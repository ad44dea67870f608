"""The gates an export passes before it is written.

- fp32: parity. The exported model and PyTorch embed the same images; their features
  agree to ``MAX_ABS_DIFF`` and ``MIN_COSINE`` and every query's top-k is the same.
- fp16 and int8: accuracy. Reduced precision cannot agree to 1e-4, so both models
  are evaluated on the same labelled images and the mAP lost is at most the limit
  (``--max-map-drop``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reid.errors import ReidError
from reid.evaluation.evaluator import EvalOptions, ProtocolRanking, summarize
from reid.evaluation.feature_ranking import pairwise_distance

# Parity thresholds of every fp32 export.
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.99999
PARITY_TOPK = 10


@dataclass(frozen=True)
class ParityReport:
    """How closely two sets of features of the same images agree."""

    num_query: int
    num_gallery: int
    max_abs_diff: float
    min_cosine: float
    same_topk: int  # queries whose top-k gallery lists are identical

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff <= MAX_ABS_DIFF
            and self.min_cosine >= MIN_COSINE
            and self.same_topk == self.num_query
        )

    def __str__(self) -> str:
        return (
            f"parity on {self.num_query} queries x {self.num_gallery} gallery images: "
            f"max |diff| {self.max_abs_diff:.2e} (<= {MAX_ABS_DIFF:g}), min cosine "
            f"{self.min_cosine:.7f} (>= {MIN_COSINE}), identical top-{PARITY_TOPK} rankings "
            f"{self.same_topk}/{self.num_query}"
        )


def compare_features(
    reference: torch.Tensor, candidate: torch.Tensor, num_query: int, metric: str
) -> ParityReport:
    """Compares two ``(N, D)`` feature sets of the same images, queries first.

    The rankings are each query's top-k gallery items by ``metric`` distance.
    """
    if reference.shape != candidate.shape:
        raise ReidError(
            f"feature shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        )
    cosine = torch.nn.functional.cosine_similarity(reference.double(), candidate.double(), dim=1)
    k = min(PARITY_TOPK, len(reference) - num_query)

    def topk(feats: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distance(feats[:num_query], feats[num_query:], metric)
        return torch.argsort(torch.as_tensor(dist), dim=1, stable=True)[:, :k]

    same = (topk(reference) == topk(candidate)).all(dim=1)
    return ParityReport(
        num_query=num_query,
        num_gallery=len(reference) - num_query,
        max_abs_diff=float((reference - candidate).abs().max()),
        min_cosine=float(cosine.min()),
        same_topk=int(same.sum()),
    )


@dataclass(frozen=True)
class AccuracyReport:
    """The same labelled images evaluated with the PyTorch model and with an export."""

    num_query: int
    num_gallery: int
    reference: dict[str, float]  # summarize()'s metrics, in [0, 1]
    candidate: dict[str, float]
    min_cosine: float
    max_map_drop: float  # in points (percent)

    @property
    def map_drop(self) -> float:
        """mAP lost by the export, in points; negative when it gained."""
        return 100 * (self.reference["mAP"] - self.candidate["mAP"])

    @property
    def ok(self) -> bool:
        return self.map_drop <= self.max_map_drop

    def __str__(self) -> str:
        ref, cand = self.reference, self.candidate
        return (
            f"accuracy on {self.num_query} queries x {self.num_gallery} gallery images: "
            f"rank-1 {100 * cand['rank1']:.2f} (fp32 {100 * ref['rank1']:.2f}), "
            f"mAP {100 * cand['mAP']:.2f} (fp32 {100 * ref['mAP']:.2f}, drop "
            f"{self.map_drop:.2f} <= {self.max_map_drop:g}), min cosine to fp32 "
            f"{self.min_cosine:.4f}"
        )


def compare_accuracy(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    pids: np.ndarray,
    camids: np.ndarray,
    num_query: int,
    protocol: str,
    options: EvalOptions,
    max_map_drop: float,
) -> AccuracyReport:
    """Evaluates two ``(N, D)`` feature sets of the same labelled images (queries first)
    under the test set's ``protocol`` and compares their metrics."""
    if reference.shape != candidate.shape:
        raise ReidError(
            f"feature shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        )
    metrics = [
        summarize(*ProtocolRanking(feats, pids, camids, num_query, protocol, options).metrics())
        for feats in (reference, candidate)
    ]
    cosine = torch.nn.functional.cosine_similarity(reference.double(), candidate.double(), dim=1)
    return AccuracyReport(
        num_query=num_query,
        num_gallery=len(reference) - num_query,
        reference=metrics[0],
        candidate=metrics[1],
        min_cosine=float(cosine.min()),
        max_map_drop=max_map_drop,
    )
