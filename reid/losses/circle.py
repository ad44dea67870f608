"""Circle loss, pairwise form (Sun et al., "Circle Loss: A Unified Perspective of Pair
Similarity Optimization", CVPR 2020)."""

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.losses.precision import float32_forward
from reid.losses.registry import LOSSES
from reid.losses.triplet import pair_masks


class CircleLoss(nn.Module):
    """Circle loss over the pairs of a batch, with cosine similarities.

    For each anchor, with ``s_p`` its similarities to the other samples of its identity
    and ``s_n`` to the samples of other identities:

    ``L = softplus(logsumexp_n(g * a_n * (s_n - m)) + logsumexp_p(-g * a_p * (s_p - 1 + m)))``

    with the self-paced weights ``a_p = relu(1 + m - s_p)`` and ``a_n = relu(s_n + m)``,
    held constant in the gradient as in the paper, ``g`` the scale (gamma) and ``m``
    the relaxation margin. The loss is the mean over anchors that have a positive and
    a negative; a batch with none gives 0.

    Args:
        margin: ``m``, in [0, 1].
        scale: ``g``.
    """

    input = "feat"
    pairwise = True
    own_lr = None

    def __init__(self, margin: float = 0.25, scale: float = 128.0) -> None:
        super().__init__()
        self.margin = margin
        self.scale = scale

    @float32_forward
    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(B, D)`` features and ``(B,)`` identity labels."""
        normed = F.normalize(feats, dim=1)
        sim = normed @ normed.t()
        positive, negative = pair_masks(pids)
        valid = positive.any(dim=1) & negative.any(dim=1)
        m, g = self.margin, self.scale
        alpha_p = (1 + m - sim).clamp(min=0).detach()
        alpha_n = (sim + m).clamp(min=0).detach()
        # Anchors without a positive or a negative are weighed out of the mean rather
        # than removed (which makes a shape the host must wait for); their rows are
        # filled with 0 instead of -inf, so that no log-sum-exp sees only -inf, whose
        # gradient is NaN even when weighed by 0.
        fill = torch.where(valid, float("-inf"), 0.0).unsqueeze(1)
        logit_p = torch.where(positive, -g * alpha_p * (sim - (1 - m)), fill)
        logit_n = torch.where(negative, g * alpha_n * (sim - m), fill)
        per_anchor = F.softplus(logit_n.logsumexp(dim=1) + logit_p.logsumexp(dim=1))
        return (per_anchor * valid).sum() / valid.sum().clamp(min=1)


@LOSSES.register("circle")
def circle(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> CircleLoss:
    """Reads ``LOSS.CIRCLE_MARGIN`` and ``LOSS.CIRCLE_SCALE``."""
    return CircleLoss(margin=cfg.LOSS.CIRCLE_MARGIN, scale=cfg.LOSS.CIRCLE_SCALE)
