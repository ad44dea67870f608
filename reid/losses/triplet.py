"""Batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss for
Person Re-Identification", 2017)."""

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.losses.registry import LOSSES

# Floor of the squared distance before the square root: the root's gradient is
# infinite at 0, which identical features (duplicates, an image and its flip) hit.
_SQUARED_DIST_EPS = 1e-12


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` and of ``y``.

    Uses ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product instead of a ``(N, M, D)``
    difference tensor), clamped at a tiny positive value before the root so the
    gradient stays finite for coinciding rows.

    Args:
        x: ``(N, D)``.
        y: ``(M, D)``.

    Returns:
        ``(N, M)`` distances.
    """
    squared = x.pow(2).sum(dim=1, keepdim=True) + y.pow(2).sum(dim=1).unsqueeze(0) - 2.0 * x @ y.t()
    return squared.clamp(min=_SQUARED_DIST_EPS).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss over a P x K batch.

    For every anchor, the hardest positive is the farthest other sample of its
    identity and the hardest negative the closest sample of another identity. The
    loss is ``relu(d_ap - d_an + margin)``, or ``softplus(d_ap - d_an)`` for the soft
    margin, averaged over anchors. An anchor with no other sample of its identity,
    or no sample of another identity, forms no triplet and is left out of the
    average; a batch with no valid anchor gives a zero loss (still differentiable).

    Args:
        margin: hinge margin; ``None`` or 0 selects the soft margin.
        normalize_feature: L2-normalise features before the distances.
    """

    input = "feat"
    pairwise = True
    own_lr = None

    def __init__(self, margin: float | None = 0.3, normalize_feature: bool = False) -> None:
        super().__init__()
        self.margin = margin if margin else None
        self.normalize_feature = normalize_feature

    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Computes the loss.

        Args:
            feats: ``(B, D)`` embeddings.
            pids: ``(B,)`` identity labels.

        Returns:
            Scalar loss.
        """
        if self.normalize_feature:
            feats = F.normalize(feats, dim=1)
        dist = pairwise_euclidean(feats, feats)
        same_id = pids.unsqueeze(0) == pids.unsqueeze(1)
        not_self = ~torch.eye(len(pids), dtype=torch.bool, device=pids.device)
        positive = same_id & not_self
        negative = ~same_id
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not valid.any():
            return feats.sum() * 0.0

        dist, positive, negative = dist[valid], positive[valid], negative[valid]
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
        gap = hardest_pos - hardest_neg
        if self.margin is None:
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()


@LOSSES.register("triplet")
def triplet(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> TripletLoss:
    """Reads ``LOSS.TRIPLET_MARGIN`` and ``LOSS.TRIPLET_NORM_FEAT``."""
    return TripletLoss(margin=cfg.LOSS.TRIPLET_MARGIN, normalize_feature=cfg.LOSS.TRIPLET_NORM_FEAT)
