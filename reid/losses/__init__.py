"""Losses: label-smoothed cross-entropy, batch-hard triplet, center, and their sum."""

from reid.losses.build import ReidLoss, build_loss
from reid.losses.center import CenterLoss
from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.triplet import TripletLoss, pairwise_euclidean

__all__ = [
    "CenterLoss",
    "CrossEntropyLabelSmooth",
    "ReidLoss",
    "TripletLoss",
    "build_loss",
    "pairwise_euclidean",
]
