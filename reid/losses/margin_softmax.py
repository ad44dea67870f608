"""Margin softmax classifiers (CosFace, ArcFace): the base they share."""

import torch
import torch.nn.functional as F
from torch import nn

from reid.losses.precision import float32_forward


class MarginSoftmax(nn.Module):
    """A cosine classifier that sees the labels in training: cross-entropy of
    ``scale * cos(theta_j)`` with a margin applied to the true class's term.

    It owns its class weights ``(num_classes, D)``, trained with the model's optimizer,
    and reads the BNNeck feature. Evaluation does not use it.

    After each call, :attr:`diagnostics` holds ``acc``, the (detached) fraction of the
    batch whose largest cosine, without the margin, is its label's: the classifier's
    accuracy as it would predict.

    Args:
        num_classes: training identities.
        feat_dim: dimension ``D`` of the feature.
        margin: the margin, as the subclass applies it.
        scale: the logit scale ``s``.
    """

    input = "neck_feat"
    pairwise = False
    own_lr = None

    def __init__(self, num_classes: int, feat_dim: int, margin: float, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin = margin
        self.scale = scale
        self.diagnostics: dict[str, torch.Tensor] = {}

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        """The true class's cosine term with the margin applied, elementwise."""
        raise NotImplementedError

    @float32_forward
    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(B, D)`` features and ``(B,)`` labels in ``[0, num_classes)``."""
        cosine = F.normalize(feats, dim=1) @ F.normalize(self.weight, dim=1).t()
        target = F.one_hot(pids, cosine.shape[1]).bool()
        self.diagnostics = {"acc": (cosine.argmax(dim=1) == pids).float().mean().detach()}
        logits = torch.where(target, self.target_logit(cosine), cosine)
        return F.cross_entropy(self.scale * logits, pids)
