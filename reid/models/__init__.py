"""Models: backbones (registry), the BNNeck head and the model builder."""

from reid.models.backbones import BACKBONES
from reid.models.build import ReidModel, build_model
from reid.models.heads import POOLINGS, BNNeckHead, GeneralizedMeanPooling
from reid.models.pretrained import find_cached_weights, load_pretrained

__all__ = [
    "BACKBONES",
    "POOLINGS",
    "BNNeckHead",
    "GeneralizedMeanPooling",
    "ReidModel",
    "build_model",
    "find_cached_weights",
    "load_pretrained",
]
