"""Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep
Face Recognition", ECCV 2016), normalised as Bag-of-Tricks computes it."""

import torch
from torch import nn
from yacs.config import CfgNode

from reid.losses.precision import float32_forward
from reid.losses.registry import LOSSES


class CenterLoss(nn.Module):
    """Mean squared Euclidean distance of each feature to its class center.

    ``loss = (1 / B) * sum_i |f_i - c_{y_i}|^2``, each term clamped to
    ``[1e-12, 1e12]``. This is Bag-of-Tricks' normalisation: a batch mean without
    Wen et al.'s factor 1/2, so its gradient with respect to a center is twice
    theirs.

    The centers are a parameter of this module, learned with their own plain SGD at
    ``lr`` rather than with the model's optimizer (Bag-of-Tricks: no momentum, no
    weight decay, ``SOLVER.CENTER_LR``).

    Args:
        num_classes: number of classes (training identities).
        feat_dim: feature dimension ``D``.
        center_grad_scale: multiplies the gradient that reaches the centers, not the
            one that reaches the features. Set to ``1 / weight`` when the loss is used
            with a weight, so that the centers move as under the unweighted loss and
            their step size is set by their own learning rate alone (Bag-of-Tricks
            rescales the centers' gradients by ``1 / CENTER_LOSS_WEIGHT`` for this).
        lr: learning rate of the centers' SGD.
    """

    input = "feat"
    pairwise = False

    def __init__(
        self, num_classes: int, feat_dim: int, center_grad_scale: float = 1.0, lr: float = 0.5
    ) -> None:
        super().__init__()
        self.own_lr = lr
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.center_grad_scale = center_grad_scale
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    @float32_forward
    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Computes the loss.

        Args:
            feats: ``(B, D)`` features.
            pids: ``(B,)`` class indices in ``[0, num_classes)``.

        Returns:
            Scalar loss.
        """
        # Subtracting directly (not |f|^2 + |c|^2 - 2 f.c) avoids cancellation error;
        # only the B centers of the batch are touched, so it is also cheaper.
        centers = self.centers[pids]
        if self.center_grad_scale != 1.0:
            # Same value (the added term is exactly 0), gradient scaled.
            centers = centers.detach() + (centers - centers.detach()) * self.center_grad_scale
        squared = (feats - centers).pow(2).sum(dim=1)
        return squared.clamp(min=1e-12, max=1e12).mean()


@LOSSES.register("center")
def center(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> CenterLoss:
    """Reads ``SOLVER.CENTER_LR``; the centers get the gradient of the unweighted loss."""
    return CenterLoss(
        num_classes, feat_dim, center_grad_scale=1.0 / weight, lr=cfg.SOLVER.CENTER_LR
    )
