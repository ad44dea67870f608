"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification",
ICCV 2019), written from the paper.

Layout (Table 1 of the paper; channels for width x1.0):

=========  ===========================================  ========  ========
stage      layers                                       channels  map at
                                                                  256x128
=========  ===========================================  ========  ========
conv1      7x7 conv stride 2, 3x3 max pool stride 2     64        64x32
conv2      2 OS bottlenecks, then 1x1 conv + 2x2 avg    256       32x16
conv3      2 OS bottlenecks, then 1x1 conv + 2x2 avg    384       16x8
conv4      2 OS bottlenecks                             512       16x8
conv5      1x1 conv                                     512       16x8
=========  ===========================================  ========  ========

(the last transition pools to 16x8 with ``last_stride`` 2, the paper's network; 1 keeps
32x16.) An OS bottleneck is a 1x1 conv to a quarter of the channels, four streams of
1, 2, 3 and 4 Lite 3x3 layers (receptive fields 3, 5, 7, 9), fused by a unified
aggregation gate shared by the streams, and a 1x1 conv back, added to the input. A
Lite 3x3 is a pointwise 1x1 conv then a depthwise 3x3 conv, BatchNorm, ReLU.

The paper's network ends with global pooling and a 512-d fully connected embedding
(FC + BN + ReLU); here the BNNeck head pools the conv5 map instead. Parameter counts
(:func:`paper_parameter_count`) add that embedding back to compare with the paper.

Torchreid's ImageNet weights (``osnet_x1_0_imagenet.pth`` and its siblings, from its
model zoo) load unchanged: :meth:`OSNet.adapt_state_dict` renames Torchreid's module
names to ours (:data:`TORCHREID_NAMES`); their 512-d ``fc`` embedding and ``classifier``
have no counterpart here and are left out.
"""

import re

import torch
from torch import nn

from reid.errors import ReidError
from reid.models.backbones import BACKBONES

# Stage widths of OSNet x1.0; other widths scale them.
_WIDTHS = (64, 256, 384, 512)
# The paper's embedding size, after conv5.
EMBEDDING_DIM = 512
# Channel reduction inside the aggregation gate.
_GATE_REDUCTION = 16
_STREAMS = 4

# Torchreid's OSNet names (torchreid/models/osnet.py) -> ours, as (pattern, replacement)
# applied in order to each key; a key already in our layout matches none of them. Its
# stages keep their transition inside (conv2.2 / conv3.2 = our pool2 / pool3), its OS
# blocks name the reduce / expand / shortcut convs conv1 / conv3 / downsample and the
# streams conv2a-conv2d, and its Lite 3x3 layers conv1 / conv2 / bn.
_BLOCK = r"^(conv[234]\.[01])\."
_LITE = r"^(conv[234]\.[01]\.streams\.\d\.\d)\."
TORCHREID_NAMES: tuple[tuple[str, str], ...] = (
    (r"^conv1\.conv\.", "conv1.0."),
    (r"^conv1\.bn\.", "conv1.1."),
    (r"^conv([23])\.2\.0\.conv\.", r"pool\1.0.0."),
    (r"^conv([23])\.2\.0\.bn\.", r"pool\1.0.1."),
    (r"^conv5\.conv\.", "conv5.0."),
    (r"^conv5\.bn\.", "conv5.1."),
    (_BLOCK + r"conv1\.conv\.", r"\1.reduce.0."),
    (_BLOCK + r"conv1\.bn\.", r"\1.reduce.1."),
    (_BLOCK + r"conv2a\.", r"\1.streams.0.0."),
    (_BLOCK + r"conv2b\.", r"\1.streams.1."),
    (_BLOCK + r"conv2c\.", r"\1.streams.2."),
    (_BLOCK + r"conv2d\.", r"\1.streams.3."),
    (_LITE + r"conv1\.", r"\1.0."),
    (_LITE + r"conv2\.", r"\1.1."),
    (_LITE + r"bn\.", r"\1.2."),
    (_BLOCK + r"conv3\.conv\.", r"\1.expand.0."),
    (_BLOCK + r"conv3\.bn\.", r"\1.expand.1."),
    (_BLOCK + r"downsample\.conv\.", r"\1.shortcut.0."),
    (_BLOCK + r"downsample\.bn\.", r"\1.shortcut.1."),
    (_BLOCK + r"IN\.", r"\1.instance_norm."),
)


def from_torchreid_names(key: str) -> str:
    """Our name for a key of Torchreid's OSNet (``conv2.0.conv2b.1.bn.weight`` ->
    ``conv2.0.streams.1.1.2.weight``); other keys come back unchanged."""
    for pattern, replacement in TORCHREID_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True,
    instance_norm: bool = False,
) -> nn.Sequential:  # fmt: skip
    norm = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        norm or nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class LiteConv3x3(nn.Sequential):
    """Pointwise 1x1 conv, depthwise 3x3 conv, BatchNorm, ReLU (the paper's Lite 3x3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AggregationGate(nn.Module):
    """Channel-wise weights in (0, 1) from global context: pool, FC, ReLU, FC, sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // _GATE_REDUCTION, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` scaled by its gate; same shape."""
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: four streams of 1-4 Lite 3x3 layers, fused by one
    aggregation gate shared by all streams.

    Args:
        in_channels, out_channels: of the block; a 1x1 conv projects the shortcut when
            they differ.
        instance_norm: instance-normalise the output (OSNet-IBN's early blocks).
    """

    def __init__(self, in_channels: int, out_channels: int, instance_norm: bool = False) -> None:
        super().__init__()
        mid = out_channels // 4
        self.reduce = _conv_bn(in_channels, mid, 1)
        self.streams = nn.ModuleList(
            nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(depth)))
            for depth in range(1, _STREAMS + 1)
        )
        self.gate = AggregationGate(mid)
        self.expand = _conv_bn(mid, out_channels, 1, relu=False)
        self.shortcut = (
            _conv_bn(in_channels, out_channels, 1, relu=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.instance_norm = nn.InstanceNorm2d(out_channels, affine=True) if instance_norm else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        reduced = self.reduce(x)
        fused = sum(self.gate(stream(reduced)) for stream in self.streams)
        out = self.expand(fused) + self.shortcut(x)
        if self.instance_norm is not None:
            out = self.instance_norm(out)
        return self.relu(out)


class OSNet(nn.Module):
    """OSNet up to conv5: images ``(B, 3, H, W)`` to a feature map ``(B, 512*w, h, w)``.

    Args:
        width: channel multiplier of the stages (1.0, 0.75, 0.5, 0.25).
        last_stride: 2, the paper's network (maps at H/16); 1 drops the pooling of the
            last transition (maps at H/8).
        ibn: OSNet-IBN as Torchreid defines and releases it: instance normalisation in
            conv1 and after each conv2 bottleneck.

    Attributes:
        out_channels: channels of the output map.
    """

    def __init__(self, width: float = 1.0, last_stride: int = 2, ibn: bool = False) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ReidError(f"last_stride must be 1 or 2, got {last_stride!r}")
        c1, c2, c3, c4 = (int(c * width) for c in _WIDTHS)
        self.conv1 = _conv_bn(3, c1, 7, stride=2, instance_norm=ibn)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Sequential(OSBlock(c1, c2, ibn), OSBlock(c2, c2, ibn))
        self.pool2 = nn.Sequential(_conv_bn(c2, c2, 1), nn.AvgPool2d(2, stride=2))
        self.conv3 = nn.Sequential(OSBlock(c2, c3), OSBlock(c3, c3))
        pool3 = nn.AvgPool2d(2, stride=2) if last_stride == 2 else nn.Identity()
        self.pool3 = nn.Sequential(_conv_bn(c3, c3, 1), pool3)
        self.conv4 = nn.Sequential(OSBlock(c3, c4), OSBlock(c4, c4))
        self.conv5 = _conv_bn(c4, c4, 1)
        self.out_channels = c4
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map of a batch of images, ``(B, out_channels, H/16, W/16)``."""
        x = self.maxpool(self.conv1(images))
        x = self.pool2(self.conv2(x))
        x = self.pool3(self.conv3(x))
        return self.conv5(self.conv4(x))

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A weights file's tensors under our names: Torchreid's are renamed
        (:func:`from_torchreid_names`), ours are kept. Called by
        :func:`reid.models.pretrained.load_pretrained` before matching."""
        return {from_torchreid_names(key): tensor for key, tensor in state_dict.items()}


def paper_parameter_count(net: OSNet) -> int:
    """Parameters as the paper counts them: the network up to conv5 plus its 512-d
    embedding (FC with bias, then BatchNorm); no identity classifier."""
    embedding = net.out_channels * EMBEDDING_DIM + EMBEDDING_DIM + 2 * EMBEDDING_DIM
    return sum(p.numel() for p in net.parameters()) + embedding


@BACKBONES.register("osnet_x1_0")
def osnet_x1_0(last_stride: int = 2) -> OSNet:
    """OSNet x1.0, 512 output channels (2.2M parameters with the paper's embedding)."""
    return OSNet(1.0, last_stride)


@BACKBONES.register("osnet_x0_75")
def osnet_x0_75(last_stride: int = 2) -> OSNet:
    """OSNet x0.75, 384 output channels (1.3M)."""
    return OSNet(0.75, last_stride)


@BACKBONES.register("osnet_x0_5")
def osnet_x0_5(last_stride: int = 2) -> OSNet:
    """OSNet x0.5, 256 output channels (0.6M)."""
    return OSNet(0.5, last_stride)


@BACKBONES.register("osnet_x0_25")
def osnet_x0_25(last_stride: int = 2) -> OSNet:
    """OSNet x0.25, 128 output channels (0.2M)."""
    return OSNet(0.25, last_stride)


@BACKBONES.register("osnet_ibn_x1_0")
def osnet_ibn_x1_0(last_stride: int = 2) -> OSNet:
    """OSNet-IBN x1.0: instance normalisation in the early layers, 512 output channels."""
    return OSNet(1.0, last_stride, ibn=True)
