"""ResNet-18/34/50/101/152 backbones built on torchvision's constructors.

The ImageNet classifier (avgpool, fc) is dropped; module names stay those of
torchvision so that its state dicts load without renaming.
"""

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from reid.errors import ReidError
from reid.models.backbones import BACKBONES


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    Args:
        net: a torchvision ``ResNet`` (its ``avgpool`` and ``fc`` are discarded).
        last_stride: stride of ``layer4`` (1 or 2). Bag-of-Tricks uses 1, which doubles
            the height and width of the final map at no extra parameters.

    Attributes:
        out_channels: channels of the output map (512 for BasicBlock nets, 2048 for
            Bottleneck nets).
    """

    def __init__(self, net: tv_resnet.ResNet, last_stride: int = 1) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ReidError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.out_channels: int = net.fc.in_features
        self.last_stride = last_stride
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        _set_stage_stride(self.layer4, last_stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map of a batch of images.

        Args:
            images: ``(B, 3, H, W)``.

        Returns:
            ``(B, out_channels, H / 32, W / 32)`` with last stride 2,
            ``(B, out_channels, H / 16, W / 16)`` with last stride 1
            (each halving rounds up for odd sizes).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _set_stage_stride(stage: nn.Sequential, stride: int) -> None:
    """Sets the stride of a ResNet stage, which only its first block applies.

    torchvision strides the first 3x3 conv: ``conv1`` of a BasicBlock, ``conv2`` of a
    Bottleneck. The shortcut's 1x1 conv must use the same stride so the sum lines up.
    """
    first = stage[0]
    strided_conv = first.conv2 if isinstance(first, tv_resnet.Bottleneck) else first.conv1
    strided_conv.stride = (stride, stride)
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)
    first.stride = stride


def _build(constructor: Callable[..., tv_resnet.ResNet], last_stride: int) -> ResNetBackbone:
    # weights=None: initialise randomly here; ImageNet weights are only ever loaded
    # from local files by reid.models.pretrained, never downloaded.
    return ResNetBackbone(constructor(weights=None), last_stride=last_stride)


@BACKBONES.register("resnet18")
def resnet18(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-18 backbone, 512 output channels."""
    return _build(tv_resnet.resnet18, last_stride)


@BACKBONES.register("resnet34")
def resnet34(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-34 backbone, 512 output channels."""
    return _build(tv_resnet.resnet34, last_stride)


@BACKBONES.register("resnet50")
def resnet50(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-50 backbone, 2048 output channels."""
    return _build(tv_resnet.resnet50, last_stride)


@BACKBONES.register("resnet101")
def resnet101(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-101 backbone, 2048 output channels."""
    return _build(tv_resnet.resnet101, last_stride)


@BACKBONES.register("resnet152")
def resnet152(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-152 backbone, 2048 output channels."""
    return _build(tv_resnet.resnet152, last_stride)
