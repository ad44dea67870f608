"""The evaluation model as one module from images to features, in both input profiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from reid.evaluation.evaluator import embed
from reid.models import ReidModel
from reid.models.backbones import IMAGENET_STATS

INPUT_NAME = "images"
OUTPUT_NAME = "features"
# What the graph takes, written into its metadata for whoever runs it.
INPUT_CONVENTION = "uint8 RGB (N, 3, H, W) at input_size, not normalised"
# The float profile's input: what trackers (BoxMOT and most tracking code) send.
FLOAT_INPUT_CONVENTION = (
    "float32 RGB (N, 3, H, W) at input_size, scaled to [0, 1] and normalised with "
    f"ImageNet mean {list(IMAGENET_STATS[0])} and std {list(IMAGENET_STATS[1])}"
)
# --input: the graph's input profile -> its convention.
INPUT_PROFILES = {"uint8": INPUT_CONVENTION, "float": FLOAT_INPUT_CONVENTION}


class DeployModel(nn.Module):
    """uint8 RGB images at the test size -> test features, everything in between inside.

    Scaling to [0, 1] and mean/std normalisation use the same torchvision kernels as
    the evaluation transform, and flip averaging is evaluation's own :func:`embed`,
    so this module computes exactly the features that were evaluated. It is what
    :class:`reid.FeatureExtractor` runs and what :func:`export_onnx` exports.

    Args:
        model: the trained model.
        mean, std: ``INPUT.PIXEL_MEAN`` / ``INPUT.PIXEL_STD``, RGB in [0, 1].
        flip: average each image's features with its mirror's (``TEST.FLIP``).
    """

    input_dtype = torch.uint8

    def __init__(
        self, model: ReidModel, mean: Sequence[float], std: Sequence[float], flip: bool
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean, self.std = list(mean), list(std)
        self.flip = flip

    @property
    def feat_dim(self) -> int:
        return self.model.feat_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps uint8 ``(N, 3, H, W)`` to float32 features ``(N, D)``."""
        x = TF.to_dtype(images, torch.float32, scale=True)
        return embed(self.model, TF.normalize(x, self.mean, self.std), self.flip)


class FloatInputDeployModel(DeployModel):
    """ImageNet-normalised float32 RGB images -> test features: the trackers' profile.

    The caller scales to [0, 1] and normalises with ImageNet's mean and std, as BoxMOT
    does. A model trained with other statistics (``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``,
    e.g. 0.5 / 0.5 for a ViT) gets its own normalisation back through one affine map,
    ``x * std_in / std + (mean_in - mean) / std``, so the caller never needs to know.
    With ImageNet statistics the input goes to the model untouched.

    Args:
        model: the trained model.
        mean, std: ``INPUT.PIXEL_MEAN`` / ``INPUT.PIXEL_STD``, RGB in [0, 1].
        flip: average each image's features with its mirror's (``TEST.FLIP``).
    """

    input_dtype = torch.float32

    def __init__(
        self, model: ReidModel, mean: Sequence[float], std: Sequence[float], flip: bool
    ) -> None:
        super().__init__(model, mean, std, flip)
        mean_in, std_in = (torch.tensor(v, dtype=torch.float64) for v in IMAGENET_STATS)
        model_mean = torch.tensor(self.mean, dtype=torch.float64)
        model_std = torch.tensor(self.std, dtype=torch.float64)
        # Folded in float64, so the only rounding left is the graph's one multiply-add.
        scale, shift = std_in / model_std, (mean_in - model_mean) / model_std
        # The run's own statistics are ImageNet's: nothing to convert, not even a rounding.
        self.convert = not (torch.equal(scale, torch.ones_like(scale)) and not shift.any())
        self.register_buffer("scale", scale.float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps ImageNet-normalised float32 ``(N, 3, H, W)`` to features ``(N, D)``."""
        x = images * self.scale + self.shift if self.convert else images
        return embed(self.model, x, self.flip)


def tracker_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(N, 3, H, W)`` -> what a tracker feeds a float-profile graph.

    float32, /255, then ``(x - mean) / std`` with ImageNet's statistics: BoxMOT's
    arithmetic, in float32.
    """
    mean, std = (np.asarray(v, dtype=np.float32).reshape(1, 3, 1, 1) for v in IMAGENET_STATS)
    return np.ascontiguousarray((pixels.astype(np.float32) / 255.0 - mean) / std)
