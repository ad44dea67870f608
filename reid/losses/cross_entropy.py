"""Cross-entropy with label smoothing (Szegedy et al., CVPR 2016), as used by
Bag-of-Tricks to keep the identity classifier from over-fitting the training IDs."""

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against smoothed one-hot targets.

    ``targets = (1 - epsilon) * onehot + epsilon / num_classes`` and the loss is the
    batch mean of ``sum(-targets * log_softmax(logits))``. ``epsilon = 0`` is the
    plain cross-entropy.

    Args:
        num_classes: number of classes ``N``.
        epsilon: smoothing weight in ``[0, 1)``.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Computes the loss.

        Args:
            logits: ``(B, N)`` classifier scores.
            pids: ``(B,)`` class indices in ``[0, N)``.

        Returns:
            Scalar loss.
        """
        log_probs = F.log_softmax(logits, dim=1)
        onehot = F.one_hot(pids, self.num_classes).to(log_probs.dtype)
        targets = (1.0 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return (-targets * log_probs).sum(dim=1).mean()
