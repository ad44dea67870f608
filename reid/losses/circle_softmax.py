"""Circle loss, classification form (Sun et al., "Circle Loss: A Unified Perspective of Pair
Similarity Optimization", CVPR 2020), FastReID's CircleSoftmax classifier."""

import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from reid.losses.margin_softmax import MarginSoftmax
from reid.losses.precision import float32_forward
from reid.losses.registry import LOSSES


class CircleSoftmax(MarginSoftmax):
    """Cross-entropy of circle-loss logits over cosines to learnable class weights.

    With ``s_p`` the cosine to the sample's class and ``s_n`` those to the other classes,
    the logits are ``g * a_p * (s_p - (1 - m))`` for the class and
    ``g * a_n * (s_n - m)`` for the others, with the self-paced weights
    ``a_p = relu(1 + m - s_p)`` and ``a_n = relu(s_n + m)``: a similarity far from its
    optimum (``1 + m`` for ``s_p``, ``-m`` for ``s_n``) weighs more. The weights are
    held constant in the gradient, as in the authors' code and FastReID. ``g`` is the
    scale (gamma) and ``m`` the relaxation margin.

    Like :class:`reid.losses.CosFace` it owns its class weights, reads the BNNeck feature
    and reports the accuracy of its cosines without margin as ``acc``.

    Args:
        num_classes: training identities.
        feat_dim: dimension ``D`` of the feature.
        margin: ``m``, in [0, 1].
        scale: ``g``.
        label_smoothing: epsilon of the cross-entropy's smoothed targets (0: none).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        margin: float = 0.35,
        scale: float = 64.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(num_classes, feat_dim, margin, scale)
        self.label_smoothing = label_smoothing

    @float32_forward
    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(B, D)`` features and ``(B,)`` labels in ``[0, num_classes)``."""
        cosine = F.normalize(feats, dim=1) @ F.normalize(self.weight, dim=1).t()
        target = F.one_hot(pids, cosine.shape[1]).bool()
        self.diagnostics = {"acc": (cosine.argmax(dim=1) == pids).float().mean().detach()}
        m = self.margin
        alpha_p = (1 + m - cosine.detach()).clamp(min=0)
        alpha_n = (cosine.detach() + m).clamp(min=0)
        logits = torch.where(target, alpha_p * (cosine - (1 - m)), alpha_n * (cosine - m))
        return F.cross_entropy(self.scale * logits, pids, label_smoothing=self.label_smoothing)


@LOSSES.register("circle_softmax")
def circle_softmax(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> CircleSoftmax:
    """Reads ``LOSS.CIRCLE_SOFTMAX_MARGIN``, ``LOSS.CIRCLE_SOFTMAX_SCALE`` and
    ``LOSS.LABEL_SMOOTH``: FastReID's SBS smooths the cross-entropy over these logits
    (cosface and arcface, as published, do not)."""
    loss = cfg.LOSS
    return CircleSoftmax(
        num_classes, feat_dim, loss.CIRCLE_SOFTMAX_MARGIN, loss.CIRCLE_SOFTMAX_SCALE,
        label_smoothing=loss.LABEL_SMOOTH,
    )  # fmt: skip
