"""Losses: registered terms (cross-entropy, triplet, center, circle, CosFace, ArcFace)
and their weighted sum."""

from reid.losses import arcface, center, circle, cosface, cross_entropy, triplet  # noqa: F401
from reid.losses.arcface import ArcFace
from reid.losses.build import ReidLoss, build_loss
from reid.losses.center import CenterLoss
from reid.losses.circle import CircleLoss
from reid.losses.cosface import CosFace
from reid.losses.cross_entropy import CrossEntropy
from reid.losses.registry import LOSSES
from reid.losses.triplet import TripletLoss, pairwise_euclidean

__all__ = [
    "LOSSES",
    "ArcFace",
    "CenterLoss",
    "CircleLoss",
    "CosFace",
    "CrossEntropy",
    "ReidLoss",
    "TripletLoss",
    "build_loss",
    "pairwise_euclidean",
]
