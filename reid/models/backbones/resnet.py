"""ResNet-18/34/50/101/152 backbones built on torchvision's constructors.

The ImageNet classifier (avgpool, fc) is dropped; module names stay those of
torchvision so that its state dicts load without renaming. Optional non-local blocks
live under ``non_local.`` (new parameters that no ImageNet file has).
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from reid.errors import ReidError
from reid.models.backbones import BACKBONES
from reid.models.backbones.non_local import NonLocalBlock

STAGES = ("layer1", "layer2", "layer3", "layer4")

# Non-local blocks per stage (layer1..layer4) with non_local=True, each after one of the
# stage's last residual blocks: FastReID's WITH_NL tables for ResNet-50 and -101 (the
# paper's 2 in res3 and 3 in res4 for ResNet-50). FastReID has none for the BasicBlock
# nets (ResNet-18/34), which therefore do not take the option, and no ResNet-152: it gets
# ResNet-101's.
NON_LOCAL_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (0, 2, 3, 0),
    "resnet101": (0, 2, 9, 0),
    "resnet152": (0, 2, 9, 0),
}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    Args:
        net: a torchvision ``ResNet`` (its ``avgpool`` and ``fc`` are discarded).
        last_stride: stride of ``layer4`` (1 or 2). Bag-of-Tricks uses 1, which doubles
            the height and width of the final map at no extra parameters.
        non_local_blocks: how many :class:`NonLocalBlock` follow the last residual
            blocks of ``layer1`` .. ``layer4``, one after each (FastReID's placement);
            they are ``non_local.<stage>.<i>`` in the state dict.

    Attributes:
        out_channels: channels of the output map (512 for BasicBlock nets, 2048 for
            Bottleneck nets).
    """

    def __init__(
        self,
        net: tv_resnet.ResNet,
        last_stride: int = 1,
        non_local_blocks: Sequence[int] = (0, 0, 0, 0),
    ) -> None:
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
        if len(non_local_blocks) != len(STAGES):
            raise ReidError(f"non_local_blocks needs one count per stage, got {non_local_blocks}")
        self.non_local = nn.ModuleDict()
        for name, count in zip(STAGES, non_local_blocks, strict=True):
            stage = getattr(self, name)
            if not 0 <= count <= len(stage):
                raise ReidError(f"{name} has {len(stage)} blocks; cannot follow {count} of them")
            if count:
                channels = _block_out_channels(stage[-1])
                self.non_local[name] = nn.ModuleList(NonLocalBlock(channels) for _ in range(count))

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
        for name in STAGES:
            x = self._run_stage(name, x)
        return x

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        stage = getattr(self, name)
        if name not in self.non_local:
            return stage(x)
        blocks = self.non_local[name]
        first = len(stage) - len(blocks)  # the index of the block the first one follows
        for index, residual_block in enumerate(stage):
            x = residual_block(x)
            if index >= first:
                x = blocks[index - first](x)
        return x


def _block_out_channels(block: nn.Module) -> int:
    """Output channels of a torchvision BasicBlock or Bottleneck."""
    last_bn = block.bn3 if isinstance(block, tv_resnet.Bottleneck) else block.bn2
    return last_bn.num_features


def non_local_blocks(name: str, non_local: bool) -> tuple[int, int, int, int]:
    """The per-stage non-local block counts of the ResNet ``name`` (a key of
    :data:`NON_LOCAL_BLOCKS`), or none when ``non_local`` is False."""
    return NON_LOCAL_BLOCKS[name] if non_local else (0, 0, 0, 0)


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


def _build(
    constructor: Callable[..., tv_resnet.ResNet],
    last_stride: int,
    non_local_counts: Sequence[int] = (0, 0, 0, 0),
) -> ResNetBackbone:
    # weights=None: initialise randomly here; ImageNet weights are only ever loaded
    # from local files by reid.models.pretrained, never downloaded.
    net = constructor(weights=None)
    return ResNetBackbone(net, last_stride, non_local_blocks=non_local_counts)


@BACKBONES.register("resnet18")
def resnet18(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-18 backbone, 512 output channels."""
    return _build(tv_resnet.resnet18, last_stride)


@BACKBONES.register("resnet34")
def resnet34(last_stride: int = 1) -> ResNetBackbone:
    """ResNet-34 backbone, 512 output channels."""
    return _build(tv_resnet.resnet34, last_stride)


@BACKBONES.register("resnet50")
def resnet50(last_stride: int = 1, non_local: bool = False) -> ResNetBackbone:
    """ResNet-50 backbone, 2048 output channels; ``non_local`` adds
    :data:`NON_LOCAL_BLOCKS` ``["resnet50"]``."""
    return _build(tv_resnet.resnet50, last_stride, non_local_blocks("resnet50", non_local))


@BACKBONES.register("resnet101")
def resnet101(last_stride: int = 1, non_local: bool = False) -> ResNetBackbone:
    """ResNet-101 backbone, 2048 output channels; ``non_local`` adds
    :data:`NON_LOCAL_BLOCKS` ``["resnet101"]``."""
    return _build(tv_resnet.resnet101, last_stride, non_local_blocks("resnet101", non_local))


@BACKBONES.register("resnet152")
def resnet152(last_stride: int = 1, non_local: bool = False) -> ResNetBackbone:
    """ResNet-152 backbone, 2048 output channels; ``non_local`` adds
    :data:`NON_LOCAL_BLOCKS` ``["resnet152"]``."""
    return _build(tv_resnet.resnet152, last_stride, non_local_blocks("resnet152", non_local))
