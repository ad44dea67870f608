"""Backbone registry: name -> factory ``(last_stride: int = 1) -> nn.Module``.

Every registered module maps images ``(B, 3, H, W)`` to a feature map ``(B, C, h, w)``
and declares ``C`` as its ``out_channels`` attribute. To add a family, write one file
in this package that registers its factories and import it below.
"""

from collections.abc import Callable

from torch import nn

from reid.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

# Imported for their registration side effect; they need BACKBONES defined above.
from reid.models.backbones import osnet, resnet, resnet_ibn, torchvision_zoo  # noqa: E402, F401

__all__ = ["BACKBONES"]
