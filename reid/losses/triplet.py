"""Triplet loss with batch-hard, semi-hard or batch-all mining (Hermans et al., "In
Defense of the Triplet Loss for Person Re-Identification", 2017)."""

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.losses.precision import float32_forward
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


def pair_masks(pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` (B, B) bool masks of ``(B,)`` labels: other samples of
    the row's identity, and samples of other identities."""
    same_id = pids.unsqueeze(0) == pids.unsqueeze(1)
    not_self = ~torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    return same_id & not_self, ~same_id


MINING = ("hard", "semi_hard", "all")


class TripletLoss(nn.Module):
    """Triplet loss over a P x K batch, with a choice of triplets (Hermans et al. 2017;
    semi-hard: Schroff et al., "FaceNet", CVPR 2015).

    Each triplet (anchor ``a``, positive ``p`` of its identity, negative ``n`` of
    another) costs ``relu(d_ap - d_an + margin)``, or ``softplus(d_ap - d_an)`` for the
    soft margin. ``mining`` picks the triplets:

    - ``"hard"`` (batch-hard): per anchor, the farthest positive and the closest
      negative; the mean over anchors.
    - ``"semi_hard"``: per anchor and *each* of its positives (all ``K - 1`` of them),
      the closest negative that is farther than that positive; when no negative is
      farther, the *farthest* negative, the gentlest triplet the pair has (as
      TensorFlow's ``triplet_semihard_loss`` does). The mean over these anchor-positive
      pairs. Gentler than batch-hard: a negative closer than the positive (the
      hardest, and under label noise the likeliest to be mislabelled) is used only when
      every negative is, and then the farthest of them.
    - ``"all"`` (batch-all): every valid triplet, ``P K (K - 1) (P K - K)`` of them;
      the mean over those with a positive cost (with the soft margin, all of them). It
      holds a ``(B, B, B)`` cost tensor: for P = 16, K = 4 (B = 64) that is 262,144
      float32 values, 1 MiB, plus its masks.

    Anchors with no positive or no negative form no triplet; a batch without any gives
    a zero loss (still differentiable) and zero diagnostics. Nothing here waits for the
    device: no value is read back and no shape depends on the data.

    After each call, :attr:`diagnostics` holds (detached) what the batch distances say
    about training: ``anchors_ok``, the fraction of anchors whose farthest positive is
    closer than their closest negative; ``active``, the fraction of the mined triplets
    that violate the margin (cost > 0; with the soft margin, ``d_ap > d_an``);
    ``d_pos`` and ``d_neg``, the mean hardest-positive and hardest-negative distances.

    Args:
        margin: hinge margin; ``None`` or 0 selects the soft margin.
        normalize_feature: L2-normalise features before the distances.
        mining: ``"hard"``, ``"semi_hard"`` or ``"all"``.
    """

    input = "feat"
    pairwise = True
    own_lr = None

    def __init__(
        self, margin: float | None = 0.3, normalize_feature: bool = False, mining: str = "hard"
    ) -> None:
        super().__init__()
        if mining not in MINING:
            raise ReidError(f"unknown triplet mining {mining!r}; expected one of {MINING}")
        self.margin = margin if margin else None
        self.normalize_feature = normalize_feature
        self.mining = mining
        self.diagnostics: dict[str, torch.Tensor] = {}

    @float32_forward
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
        positive, negative = pair_masks(pids)
        valid = positive.any(dim=1) & negative.any(dim=1)
        # Anchors without a positive or a negative are masked out of every mean below
        # rather than removed: removing rows makes a shape that the host must wait for.
        positive, negative = positive & valid[:, None], negative & valid[:, None]
        hardest_pos = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_neg = dist.masked_fill(~negative, float("inf")).amin(dim=1)
        if self.mining == "hard":
            gaps, mined = hardest_pos - hardest_neg, valid  # (B,): one triplet per anchor
        elif self.mining == "semi_hard":
            gaps, mined = self._semi_hard_gaps(dist, positive, negative), positive  # (B, B)
        else:  # (B, B, B): anchor, positive, negative
            gaps = dist.unsqueeze(2) - dist.unsqueeze(1)
            mined = positive.unsqueeze(2) & negative.unsqueeze(1)
        gaps = torch.where(mined, gaps, 0.0)  # finite everywhere; the masks weigh them
        costs = F.softplus(gaps) if self.margin is None else F.relu(gaps + self.margin)
        costs = costs * mined
        violating = mined & (gaps + (self.margin or 0.0) > 0)
        self.diagnostics = {
            "anchors_ok": _masked_mean((hardest_pos < hardest_neg).float(), valid),
            "active": _masked_mean(violating.float(), mined),
            "d_pos": _masked_mean(torch.where(valid, hardest_pos, 0.0), valid),
            "d_neg": _masked_mean(torch.where(valid, hardest_neg, 0.0), valid),
        }
        if self.mining == "all" and self.margin is not None:
            # Batch-all averages over the triplets that still cost something.
            return costs.sum() / violating.sum().clamp(min=1)
        return costs.sum() / mined.sum().clamp(min=1)

    @staticmethod
    def _semi_hard_gaps(
        dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> torch.Tensor:
        """``d_ap - d_an`` of every anchor-positive pair with its semi-hard negative.

        Args:
            dist: ``(A, B)`` distances of the anchors to the batch.
            positive: ``(A, B)`` mask of each anchor's positives.
            negative: ``(A, B)`` mask of each anchor's negatives.

        Returns:
            ``(A, B)`` gaps; only the entries of ``positive`` are meaningful.
        """
        d_ap = dist.unsqueeze(2)  # (A, B, 1): anchor a, candidate positive p
        d_an = dist.unsqueeze(1)  # (A, 1, B): anchor a, candidate negative n
        farther = negative.unsqueeze(1) & (d_an > d_ap)  # (A, B, B)
        semi_hard = d_an.expand_as(farther).masked_fill(~farther, float("inf")).amin(dim=2)
        # No negative beyond the positive: the farthest one (as TensorFlow's
        # triplet_semihard_loss), not the closest, which would make exactly the hard
        # pairs batch-hard ones.
        farthest_neg = dist.masked_fill(~negative, float("-inf")).amax(dim=1, keepdim=True)
        chosen = torch.where(farther.any(dim=2), semi_hard, farthest_neg)
        return dist - chosen


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` holds (detached); 0 where it holds nowhere."""
    return ((values * mask).sum() / mask.sum().clamp(min=1)).detach()


@LOSSES.register("triplet")
def triplet(cfg: CfgNode, num_classes: int, feat_dim: int, weight: float) -> TripletLoss:
    """Reads ``LOSS.TRIPLET_MARGIN``, ``LOSS.TRIPLET_NORM_FEAT`` and ``LOSS.TRIPLET_MINING``."""
    return TripletLoss(
        margin=cfg.LOSS.TRIPLET_MARGIN,
        normalize_feature=cfg.LOSS.TRIPLET_NORM_FEAT,
        mining=cfg.LOSS.TRIPLET_MINING,
    )
