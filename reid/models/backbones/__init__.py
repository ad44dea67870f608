"""Backbone registry: name -> factory ``(last_stride: int = 1) -> nn.Module``.

Every registered module maps images ``(B, 3, H, W)`` to a feature map ``(B, C, h, w)``
and declares ``C`` as its ``out_channels`` attribute. A factory whose weights expect
other pixel statistics than ImageNet's declares them as ``factory.pixel_stats = (mean,
std)``. To add a family, write one file in this package that registers its factories
and import it below.
"""

from collections.abc import Callable

from torch import nn

from reid.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

# Imported for their registration side effect; they need BACKBONES defined above.
from reid.models.backbones import osnet, resnet, resnet_ibn, timm_zoo, torchvision_zoo  # noqa: E402, F401

# RGB mean and std in [0, 1] of ImageNet, which most weights were trained with.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def pixel_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the backbone ``name`` expects (its ``pixel_stats``, else
    ImageNet's), for ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD`` left empty."""
    return getattr(BACKBONES.get(name), "pixel_stats", IMAGENET_STATS)


__all__ = ["BACKBONES", "IMAGENET_STATS", "pixel_stats"]
