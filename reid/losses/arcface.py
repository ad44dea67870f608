"""ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019)."""

import math

import torch
from yacs.config import CfgNode

from reid.losses.margin_softmax import MarginSoftmax
from reid.losses.registry import LOSSES


class ArcFace(MarginSoftmax):
    """Additive angular margin: the true class's logit is ``s * cos(theta + m)``.

    Where ``theta + m`` would pass pi (``cos(theta) <= cos(pi - m)``), ``cos(theta + m)``
    stops decreasing with ``theta``; there the logit is ``s * (cos(theta) - m sin(m))``
    instead, as in the authors' code, which keeps it monotonic.
    """

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        m = self.margin
        sine = (1.0 - cosine.pow(2)).clamp(min=1e-12).sqrt()  # finite gradient at |cos| = 1
        shifted = cosine * math.cos(m) - sine * math.sin(m)
        return torch.where(cosine > math.cos(math.pi - m), shifted, cosine - math.sin(m) * m)


@LOSSES.register("arcface")
def arcface(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> ArcFace:
    """Reads ``LOSS.ARCFACE_MARGIN`` (radians) and ``LOSS.ARCFACE_SCALE``."""
    return ArcFace(num_classes, feat_dim, cfg.LOSS.ARCFACE_MARGIN, cfg.LOSS.ARCFACE_SCALE)
