"""Cross-entropy with label smoothing (Szegedy et al., CVPR 2016), as Bag-of-Tricks uses
it to keep the identity classifier from over-fitting the training identities."""

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.losses.precision import float32_forward
from reid.losses.registry import LOSSES


class CrossEntropy(nn.Module):
    """Cross-entropy of the classifier logits against smoothed one-hot targets.

    ``targets = (1 - epsilon) * onehot + epsilon / num_classes``, loss = the batch mean
    of ``sum(-targets * log_softmax(logits))``: ``F.cross_entropy(label_smoothing=)``.

    After each call, :attr:`diagnostics` holds ``acc``, the (detached) fraction of the
    batch whose largest logit is its label's.

    Args:
        epsilon: smoothing weight in ``[0, 1)``; 0 is the plain cross-entropy.
    """

    input = "logits"
    pairwise = False
    own_lr = None

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.diagnostics: dict[str, torch.Tensor] = {}

    @float32_forward
    def forward(self, logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(B, N)`` logits and ``(B,)`` labels in ``[0, N)``."""
        self.diagnostics = {"acc": (logits.argmax(dim=1) == pids).float().mean().detach()}
        return F.cross_entropy(logits, pids, label_smoothing=self.epsilon)


@LOSSES.register("cross_entropy")
def cross_entropy(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> CrossEntropy:
    """Reads ``LOSS.LABEL_SMOOTH``."""
    return CrossEntropy(epsilon=cfg.LOSS.LABEL_SMOOTH)
