"""The weighted sum of the ReID losses, and its builder from the config."""

import torch
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.losses.center import CenterLoss
from reid.losses.cross_entropy import CrossEntropyLabelSmooth
from reid.losses.triplet import TripletLoss
from reid.utils import distributed


class ReidLoss(nn.Module):
    """Identity (cross-entropy), batch-hard triplet and center losses, weighted.

    Cross-entropy uses the model's ``logits``; triplet and center losses use its
    pre-BNNeck ``feat``. A term whose weight is 0 is neither built nor computed.

    Multi-process training (torchrun, W ranks, each holding B / W samples of the
    global batch): the triplet term mines over the *global* batch. Each rank
    all-gathers every rank's features, with gradient, and their pids, so every rank
    computes the same loss ``T`` as one process would. Backward through the all-gather
    sums, for each rank's own rows, the gradients that all W ranks' copies of ``T``
    send them: ``W * dT/df``. DDP then averages the parameter gradients over ranks,
    dividing by ``W``, which leaves exactly ``dT/dtheta`` of one process. Cross-entropy
    and center loss stay per rank: each is a mean over the rank's equal share, and
    DDP's average of those means is the global mean. So the gradient of every term
    equals the single-process one, up to floating-point summation order.

    Center loss training (Bag-of-Tricks): the centers are the only parameters of
    this module, and not the model's. Step them with their own optimizer, plain SGD
    at ``SOLVER.CENTER_LR`` (no momentum, no weight decay), kept out of the model's
    optimizer::

        center_optimizer = torch.optim.SGD(loss_fn.parameters(), lr=cfg.SOLVER.CENTER_LR)
        ...
        losses = loss_fn(model(images), pids)
        optimizer.zero_grad()
        center_optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        center_optimizer.step()

    No gradient rescaling is needed: the centers receive the gradient of the
    unweighted center loss (``CenterLoss(center_grad_scale=1 / center_weight)``),
    which is what Bag-of-Tricks obtains by multiplying their gradients by
    ``1 / CENTER_LOSS_WEIGHT`` before its center step. The features still receive
    the weighted gradient. The centers are in this module's ``state_dict``:
    checkpoint it to resume.

    Args:
        num_classes: training identities.
        feat_dim: dimension of ``feat``.
        ce_weight: weight of the label-smoothed cross-entropy.
        label_smooth: its smoothing epsilon (0 gives the plain cross-entropy).
        triplet_weight: weight of the triplet loss.
        triplet_margin: its margin; ``None`` or 0 selects the soft margin.
        triplet_norm_feat: L2-normalise features before the triplet distances.
        center_weight: weight of the center loss (Bag-of-Tricks uses 0.0005).
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        ce_weight: float = 1.0,
        label_smooth: float = 0.1,
        triplet_weight: float = 1.0,
        triplet_margin: float | None = 0.3,
        triplet_norm_feat: bool = False,
        center_weight: float = 0.0,
    ) -> None:
        super().__init__()
        weights = {"ce": ce_weight, "triplet": triplet_weight, "center": center_weight}
        for term, weight in weights.items():
            if weight < 0:
                raise ReidError(f"loss weight of {term!r} must be >= 0, got {weight}")
        if not any(weights.values()):
            raise ReidError("all loss weights are 0; expected at least one > 0")
        if not 0.0 <= label_smooth < 1.0:
            raise ReidError(f"label_smooth must be in [0, 1), got {label_smooth}")
        self.weights = {term: float(w) for term, w in weights.items() if w > 0}
        self.ce_loss = (
            CrossEntropyLabelSmooth(num_classes, epsilon=label_smooth) if ce_weight > 0 else None
        )
        self.triplet_loss = (
            TripletLoss(margin=triplet_margin, normalize_feature=triplet_norm_feat)
            if triplet_weight > 0
            else None
        )
        self.center_loss = (
            CenterLoss(num_classes, feat_dim, center_grad_scale=1.0 / center_weight)
            if center_weight > 0
            else None
        )

    def forward(
        self, outputs: dict[str, torch.Tensor], pids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Computes the weighted terms and their sum.

        Args:
            outputs: the model's training output, ``{"logits": (B, N), "feat": (B, D)}``.
            pids: ``(B,)`` identity labels in ``[0, N)``.

        Returns:
            Scalars keyed ``"ce"``, ``"triplet"``, ``"center"`` (only the terms with a
            nonzero weight, each already multiplied by its weight) and ``"total"``.
        """
        terms: dict[str, torch.Tensor] = {}
        if self.ce_loss is not None:
            terms["ce"] = self.weights["ce"] * self.ce_loss(outputs["logits"], pids)
        if self.triplet_loss is not None:
            feats = distributed.all_gather_with_grad(outputs["feat"])
            labels = distributed.all_gather_rows(pids)
            terms["triplet"] = self.weights["triplet"] * self.triplet_loss(feats, labels)
        if self.center_loss is not None:
            terms["center"] = self.weights["center"] * self.center_loss(outputs["feat"], pids)
        total = torch.stack(list(terms.values())).sum()
        if self.ce_loss is None and "logits" in outputs:
            # The classifier still gets a gradient, of zero: distributed training (DDP)
            # needs every parameter to get one in every step.
            total = total + 0.0 * outputs["logits"].sum()
        terms["total"] = total
        return terms

    def center_parameters(self) -> list[nn.Parameter]:
        """The center-loss centers (empty without center loss); same as ``parameters()``."""
        return [] if self.center_loss is None else list(self.center_loss.parameters())


def build_loss(cfg: CfgNode, num_classes: int, feat_dim: int) -> ReidLoss:
    """Builds the training loss from ``cfg.LOSS``.

    Reads ``LOSS.CE_WEIGHT``, ``LOSS.LABEL_SMOOTH``, ``LOSS.TRIPLET_WEIGHT``,
    ``LOSS.TRIPLET_MARGIN``, ``LOSS.TRIPLET_NORM_FEAT``, ``LOSS.CENTER_WEIGHT``.

    Args:
        cfg: the config tree.
        num_classes: training identities.
        feat_dim: dimension of the model's ``feat`` (``model.feat_dim``).

    Returns:
        The loss module; move it to the model's device.
    """
    return ReidLoss(
        num_classes,
        feat_dim,
        ce_weight=cfg.LOSS.CE_WEIGHT,
        label_smooth=cfg.LOSS.LABEL_SMOOTH,
        triplet_weight=cfg.LOSS.TRIPLET_WEIGHT,
        triplet_margin=cfg.LOSS.TRIPLET_MARGIN,
        triplet_norm_feat=cfg.LOSS.TRIPLET_NORM_FEAT,
        center_weight=cfg.LOSS.CENTER_WEIGHT,
    )
