"""Global pooling and the BNNeck head (Luo et al., "Bag of Tricks and a Strong
Baseline for Deep Person Re-identification", CVPRW 2019)."""

from collections.abc import Callable

import torch
from torch import nn

from reid.registry import Registry

# Name -> factory ``() -> nn.Module`` mapping (B, C, h, w) to (B, C).
POOLINGS: Registry[Callable[[], nn.Module]] = Registry("pooling")


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenovic et al., TPAMI 2018): ``mean(x.clamp(eps) ** p) ** (1 / p)``.

    ``p = 1`` is average pooling and ``p -> inf`` tends to max pooling; ``p`` is
    learned. The clamp keeps the fractional power defined (inputs are ReLU outputs,
    so only exact zeros are affected).

    Args:
        p: initial exponent.
        eps: lower clamp of the input.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Pools ``(B, C, h, w)`` to ``(B, C)``."""
        pooled = fmap.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)


@POOLINGS.register("avg")
def avg_pooling() -> nn.Module:
    """Global average pooling, ``(B, C, h, w) -> (B, C)``."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


@POOLINGS.register("max")
def max_pooling() -> nn.Module:
    """Global max pooling, ``(B, C, h, w) -> (B, C)``."""
    return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))


@POOLINGS.register("gem")
def gem_pooling() -> nn.Module:
    """GeM pooling with learnable ``p`` starting at 3, ``(B, C, h, w) -> (B, C)``."""
    return GeneralizedMeanPooling(p=3.0)


class BNNeckHead(nn.Module):
    """Pooling, BNNeck and a bias-free identity classifier.

    The triplet (and center) loss works on the pooled feature ``feat``; the
    cross-entropy works on the classifier applied after a BatchNorm1d. Separating
    the two lets the metric loss act in an unconstrained space while the classifier
    sees a normalised, near-spherical one (Bag-of-Tricks, section 3.5). The BN bias
    is frozen at 0 so that the classifier's decision boundaries pass through the
    origin of the normalised space.

    Args:
        in_channels: channels ``C`` of the backbone map (``backbone.out_channels``).
        num_classes: training identities.
        pooling: name in :data:`POOLINGS` (``"avg"``, ``"max"``, ``"gem"``).
        bnneck: insert the BatchNorm1d; without it the classifier takes ``feat``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, pooling: str = "avg", bnneck: bool = True
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pool = POOLINGS.get(pooling)()
        self.neck: nn.Module = nn.BatchNorm1d(in_channels) if bnneck else nn.Identity()
        if bnneck:
            nn.init.ones_(self.neck.weight)
            nn.init.zeros_(self.neck.bias)
            self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def embed(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features before and after the neck.

        Args:
            fmap: backbone map ``(B, C, h, w)``.

        Returns:
            ``(feat, neck_feat)``, both ``(B, C)``; equal when there is no BNNeck.
        """
        feat = self.pool(fmap)
        return feat, self.neck(feat)

    def forward(self, fmap: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """Training outputs, or the after-neck feature in eval mode.

        Args:
            fmap: backbone map ``(B, C, h, w)``.

        Returns:
            Training: ``{"logits": (B, num_classes), "feat": (B, C), "neck_feat": (B, C)}``
            with ``feat`` the pooled feature before the neck and ``neck_feat`` after it.
            Eval: the after-neck feature ``(B, C)``.
        """
        feat, neck_feat = self.embed(fmap)
        if not self.training:
            return neck_feat
        return {"logits": self.classifier(neck_feat), "feat": feat, "neck_feat": neck_feat}
