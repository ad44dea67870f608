"""The ReID model (backbone + head) and its builder from the config."""

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.config import get_default_cfg
from reid.errors import ReidError
from reid.models.backbones import BACKBONES
from reid.models.heads import BNNeckHead
from reid.models.pretrained import load_imagenet_weights

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


def backbone_options(cfg: CfgNode) -> dict[str, Any]:
    """The options a backbone factory may take, from the config, keyed by argument name.

    ``last_stride`` (``MODEL.LAST_STRIDE``), ``non_local`` (``MODEL.NON_LOCAL``),
    ``img_size`` (``INPUT.SIZE_TRAIN``, ``(H, W)``: what a ViT's position embedding is
    built for), ``vit_pool`` (``MODEL.VIT_POOL``), ``vit_stride`` (``MODEL.VIT_STRIDE``),
    ``drop_path`` (``MODEL.DROP_PATH``).
    """
    return {
        "last_stride": cfg.MODEL.LAST_STRIDE,
        "non_local": cfg.MODEL.NON_LOCAL,
        "img_size": tuple(cfg.INPUT.SIZE_TRAIN),
        "vit_pool": cfg.MODEL.VIT_POOL,
        "vit_stride": cfg.MODEL.VIT_STRIDE,
        "drop_path": cfg.MODEL.DROP_PATH,
    }


# The config key of each option, for the error naming one a backbone does not take.
_OPTION_KEYS = {
    "last_stride": "MODEL.LAST_STRIDE",
    "non_local": "MODEL.NON_LOCAL",
    "img_size": "INPUT.SIZE_TRAIN",
    "vit_pool": "MODEL.VIT_POOL",
    "vit_stride": "MODEL.VIT_STRIDE",
    "drop_path": "MODEL.DROP_PATH",
}
# Options that every backbone may ignore: a size, and the last stride of a backbone
# without a last downsampling (the ViTs, OSNet keep theirs).
_IGNORABLE = ("img_size", "last_stride")


_DEFAULT_OPTIONS = backbone_options(get_default_cfg())


def build_backbone(name: str, options: dict[str, Any]) -> nn.Module:
    """The backbone ``name`` built with the ``options`` its factory takes (its keyword
    arguments). An option it does not take must be at its default: a ViT option asked of
    a ResNet, or non-local blocks asked of a ViT, is an error naming the key.

    Raises:
        UnknownNameError: an unknown backbone name (listing the known ones).
        ReidError: an option set that the backbone does not take.
    """
    factory = BACKBONES.get(name)
    parameters = inspect.signature(factory).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    taken = {k: v for k, v in options.items() if takes_all or k in parameters}
    for key, value in options.items():
        if key not in taken and key not in _IGNORABLE and value != _DEFAULT_OPTIONS[key]:
            raise ReidError(
                f"{_OPTION_KEYS[key]} {value} is not supported by the backbone {name}; "
                f"leave it at {_DEFAULT_OPTIONS[key]}"
            )
    return factory(**taken)


def build_model(cfg: CfgNode, num_classes: int, load_pretrained_weights: bool = True) -> ReidModel:
    """Builds the model described by ``cfg.MODEL`` and ``cfg.TEST``.

    Reads ``MODEL.BACKBONE`` and its options (:func:`backbone_options`),
    ``MODEL.POOLING``, ``MODEL.BNNECK``, ``MODEL.PRETRAINED``, ``MODEL.PRETRAIN_PATH``,
    ``TEST.NECK_FEAT``, ``TEST.FEAT_NORM``.

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
    backbone = build_backbone(name, backbone_options(cfg))
    if getattr(backbone, "pooled", False) and cfg.MODEL.POOLING != "avg":
        # Its 1x1 map is already the global feature (signed, which GeM's clamp would ruin).
        raise ReidError(
            f"{name} pools its tokens itself (MODEL.VIT_POOL); MODEL.POOLING must be avg "
            f"(the identity on its 1x1 map), got {cfg.MODEL.POOLING}"
        )
    if cfg.MODEL.PRETRAINED and load_pretrained_weights:
        load_imagenet_weights(backbone, name, cfg.MODEL.PRETRAIN_PATH)
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
