"""Multi-similarity loss with its pair mining (Wang et al., "Multi-Similarity Loss with
General Pair Weighting for Deep Metric Learning", CVPR 2019)."""

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.losses.precision import float32_forward
from reid.losses.registry import LOSSES
from reid.losses.triplet import pair_masks


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity loss over the pairs of a batch, with cosine similarities ``S``.

    Mining, per anchor ``i``: a positive pair is kept if ``S_ip < max_n S_in + epsilon``
    (less similar than the hardest negative, up to epsilon), a negative pair if
    ``S_in > min_p S_ip - epsilon``. With the kept pairs,

    ``L_i = 1/alpha log(1 + sum_p exp(-alpha (S_ip - lambda)))
          + 1/beta log(1 + sum_n exp(beta (S_in - lambda)))``

    and the loss is the mean over the batch's anchors (an anchor with nothing kept
    adds 0).

    Args:
        alpha: scale of the positive term.
        beta: scale of the negative term.
        threshold: ``lambda``, the similarity margin.
        epsilon: the mining slack.
    """

    input = "feat"
    pairwise = True
    own_lr = None

    def __init__(
        self, alpha: float = 2.0, beta: float = 50.0, threshold: float = 0.5, epsilon: float = 0.1
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.threshold, self.epsilon = alpha, beta, threshold, epsilon

    @float32_forward
    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(B, D)`` features and ``(B,)`` identity labels."""
        normed = F.normalize(feats, dim=1)
        sim = normed @ normed.t()
        positive, negative = pair_masks(pids)
        # Mining thresholds come from the similarities themselves, not from their gradient.
        hardest_neg = sim.detach().masked_fill(~negative, float("-inf")).amax(dim=1, keepdim=True)
        hardest_pos = sim.detach().masked_fill(~positive, float("inf")).amin(dim=1, keepdim=True)
        kept_pos = positive & (sim < hardest_neg + self.epsilon)
        kept_neg = negative & (sim > hardest_pos - self.epsilon)
        pos_term = _log1p_sum_exp(-self.alpha * (sim - self.threshold), kept_pos) / self.alpha
        neg_term = _log1p_sum_exp(self.beta * (sim - self.threshold), kept_neg) / self.beta
        return (pos_term + neg_term).mean()


def _log1p_sum_exp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, ``log(1 + sum of exp(logits) where mask)``, computed stably."""
    masked = logits.masked_fill(~mask, float("-inf"))
    return torch.cat([torch.zeros_like(masked[:, :1]), masked], dim=1).logsumexp(dim=1)


@LOSSES.register("multi_similarity")
def multi_similarity(
    cfg: CfgNode, num_classes: int, feat_dim: int, weight: float
) -> MultiSimilarityLoss:
    """Reads ``LOSS.MS_ALPHA``, ``LOSS.MS_BETA``, ``LOSS.MS_LAMBDA`` and ``LOSS.MS_EPSILON``."""
    loss = cfg.LOSS
    return MultiSimilarityLoss(loss.MS_ALPHA, loss.MS_BETA, loss.MS_LAMBDA, loss.MS_EPSILON)
