"""IBN-Net "a" backbones (Pan et al., "Two at Once: Enhancing Learning and
Generalization Capacities via IBN-Net", ECCV 2018).

IBN-a keeps ResNet's layout and replaces, in every Bottleneck of ``layer1`` to
``layer3``, the BatchNorm after the first 1x1 conv by an :class:`IBN` layer.
Instance normalisation in the shallow stages removes appearance (colour, style)
variation while BatchNorm on the other channels keeps content discrimination;
``layer4`` keeps plain BatchNorm because deep features must stay discriminative.
"""

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from reid.models.backbones import BACKBONES
from reid.models.backbones.resnet import ResNetBackbone, non_local_blocks


class IBN(nn.Module):
    """Instance-Batch Normalisation over a split of the channels.

    The first ``int(channels * in_ratio)`` channels go through
    ``InstanceNorm2d(affine=True)`` and the rest through ``BatchNorm2d``. The
    submodules are named ``IN`` and ``BN`` as in the published IBN-Net weights, so
    those load as ``...bn1.IN.weight`` / ``...bn1.BN.running_mean`` and so on.

    Args:
        channels: channels of the input.
        in_ratio: fraction of the channels that are instance-normalised (the paper's
            released models use 0.5).
    """

    def __init__(self, channels: int, in_ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * in_ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises ``x`` of shape ``(B, C, H, W)``; returns the same shape."""
        return torch.cat((self.IN(x[:, : self.half]), self.BN(x[:, self.half :])), dim=1)


def _with_ibn_a(net: tv_resnet.ResNet) -> tv_resnet.ResNet:
    """Turns a torchvision Bottleneck ResNet into its IBN-a variant, in place.

    Only ``bn1`` of each block changes, so every other state-dict key is unchanged
    and torchvision weights still load into the shared parts.
    """
    for stage in (net.layer1, net.layer2, net.layer3):
        for block in stage:
            block.bn1 = IBN(block.bn1.num_features)
    return net


@BACKBONES.register("resnet50_ibn_a")
def resnet50_ibn_a(last_stride: int = 1, non_local: bool = False) -> ResNetBackbone:
    """ResNet-50-IBN-a backbone, 2048 output channels; ``non_local`` adds ResNet-50's
    non-local blocks (FastReID's SBS R50-ibn)."""
    return ResNetBackbone(
        _with_ibn_a(tv_resnet.resnet50(weights=None)),
        last_stride=last_stride,
        non_local_blocks=non_local_blocks("resnet50", non_local),
    )
