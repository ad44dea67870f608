"""The ReID model (backbone + head) and its builder from the config."""

import logging

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.models.backbones import BACKBONES
from reid.models.heads import BNNeckHead
from reid.models.pretrained import find_cached_weights, load_pretrained

logger = logging.getLogger(__name__)

NECK_FEAT_CHOICES = ("before", "after")


class ReidModel(nn.Module):
    """Backbone followed by a :class:`BNNeckHead`.

    Args:
        backbone: maps ``(B, 3, H, W)`` to ``(B, C, h, w)``.
        head: maps the backbone map to training outputs; provides ``embed``.
        neck_feat: test feature, ``"after"`` the BNNeck (Bag-of-Tricks' choice) or
            ``"before"`` it.
        feat_norm: L2-normalise test features, so Euclidean distance ranks like cosine.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: BNNeckHead,
        neck_feat: str = "after",
        feat_norm: bool = True,
    ) -> None:
        super().__init__()
        if neck_feat not in NECK_FEAT_CHOICES:
            raise ReidError(f"neck_feat must be one of {NECK_FEAT_CHOICES}, got {neck_feat!r}")
        self.backbone = backbone
        self.head = head
        self.neck_feat = neck_feat
        self.feat_norm = feat_norm

    @property
    def feat_dim(self) -> int:
        """Dimension ``D`` of ``feat`` and of test features."""
        return self.head.in_channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """Runs the model.

        Args:
            images: ``(B, 3, H, W)``.

        Returns:
            Training mode: ``{"logits": (B, num_classes), "feat": (B, D), "neck_feat":
            (B, D)}`` (see :meth:`BNNeckHead.forward`), ``feat``
            being the pre-BNNeck feature for the metric losses.
            Eval mode: test features ``(B, D)``, unit-norm rows if ``feat_norm``.
        """
        fmap = self.backbone(images)
        if self.training:
            return self.head(fmap)
        feat, neck_feat = self.head.embed(fmap)
        out = neck_feat if self.neck_feat == "after" else feat
        return F.normalize(out, dim=1) if self.feat_norm else out


def build_model(cfg: CfgNode, num_classes: int, load_pretrained_weights: bool = True) -> ReidModel:
    """Builds the model described by ``cfg.MODEL`` and ``cfg.TEST``.

    Reads ``MODEL.BACKBONE``, ``MODEL.LAST_STRIDE``, ``MODEL.POOLING``, ``MODEL.BNNECK``,
    ``MODEL.PRETRAINED``, ``MODEL.PRETRAIN_PATH``, ``TEST.NECK_FEAT``, ``TEST.FEAT_NORM``.

    Args:
        cfg: the config tree.
        num_classes: training identities (from the dataset, not the config).
        load_pretrained_weights: False skips ``MODEL.PRETRAINED`` when a checkpoint
            will overwrite every weight anyway (evaluation).

    Returns:
        The model, in training mode.

    Raises:
        ReidError: unknown backbone or pooling name, bad option value, or pretrained
            weights that cannot be found or do not fit.
    """
    name = cfg.MODEL.BACKBONE
    backbone = BACKBONES.get(name)(last_stride=cfg.MODEL.LAST_STRIDE)
    if cfg.MODEL.PRETRAINED and load_pretrained_weights:
        path = cfg.MODEL.PRETRAIN_PATH or find_cached_weights(name)
        load_pretrained(backbone, path, name=name)
    elif cfg.MODEL.PRETRAIN_PATH and not cfg.MODEL.PRETRAINED:
        logger.warning(
            "MODEL.PRETRAIN_PATH=%s is ignored because MODEL.PRETRAINED is False",
            cfg.MODEL.PRETRAIN_PATH,
        )
    head = BNNeckHead(
        backbone.out_channels,
        num_classes,
        pooling=cfg.MODEL.POOLING,
        bnneck=cfg.MODEL.BNNECK,
    )
    return ReidModel(backbone, head, neck_feat=cfg.TEST.NECK_FEAT, feat_norm=cfg.TEST.FEAT_NORM)
