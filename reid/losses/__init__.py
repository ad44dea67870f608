"""Losses: registered terms (cross-entropy, triplet, center, circle, CosFace, ArcFace,
circle-softmax) and their weighted sum."""

from reid.losses import (  # noqa: F401  (register the terms)
    arcface,
    center,
    circle,
    circle_softmax,
    cosface,
    cross_entropy,
    multi_similarity,
    triplet,
)
from reid.losses.arcface import ArcFace
from reid.losses.build import ReidLoss, build_loss
from reid.losses.center import CenterLoss
from reid.losses.circle import CircleLoss
from reid.losses.circle_softmax import CircleSoftmax
from reid.losses.cosface import CosFace
from reid.losses.cross_entropy import CrossEntropy
from reid.losses.multi_similarity import MultiSimilarityLoss
from reid.losses.precision import float32_forward
from reid.losses.registry import LOSSES
from reid.losses.triplet import TripletLoss, pairwise_euclidean

__all__ = [
    "LOSSES",
    "ArcFace",
    "CenterLoss",
    "CircleLoss",
    "CircleSoftmax",
    "CosFace",
    "CrossEntropy",
    "MultiSimilarityLoss",
    "ReidLoss",
    "TripletLoss",
    "build_loss",
    "float32_forward",
    "pairwise_euclidean",
]
