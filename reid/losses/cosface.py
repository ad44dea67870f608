"""CosFace (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
CVPR 2018)."""

import torch
from yacs.config import CfgNode

from reid.losses.margin_softmax import MarginSoftmax
from reid.losses.registry import LOSSES


class CosFace(MarginSoftmax):
    """Large margin cosine loss: the true class's logit is ``s * (cos(theta) - m)``."""

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin


@LOSSES.register("cosface")
def cosface(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> CosFace:
    """Reads ``LOSS.COSFACE_MARGIN`` and ``LOSS.COSFACE_SCALE``."""
    return CosFace(num_classes, feat_dim, cfg.LOSS.COSFACE_MARGIN, cfg.LOSS.COSFACE_SCALE)
