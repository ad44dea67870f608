"""The weighted sum of registered loss terms, and its builder from the config."""

import torch
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.losses.registry import INPUTS, LOSSES
from reid.utils import distributed


class ReidLoss(nn.Module):
    """A weighted sum of loss terms, each on the model output it declares.

    Terms (see :mod:`reid.losses.registry`) read the classifier ``logits``, the pooled
    ``feat`` before the BNNeck, or ``neck_feat`` after it. Their parameters live in
    this module: margin classifiers' class weights train with the model's optimizer
    (:func:`reid.solver.build_optimizer` adds them), center-loss centers with their own
    plain SGD (:func:`reid.solver.build_loss_optimizer`). The state dict holds them all.

    Multi-process training (torchrun, W ranks, each holding B / W samples of the
    global batch): pairwise terms (triplet, circle) see the *global* batch. Each rank
    all-gathers every rank's features, with gradient, and their pids, so every rank
    computes the same value ``T`` as one process would. Backward through the all-gather
    sums, for each rank's own rows, the gradients that all W ranks' copies of ``T``
    send them: ``W * dT/df``. DDP then averages the parameter gradients over ranks,
    dividing by ``W``, which leaves exactly ``dT/dtheta`` of one process. The other
    terms stay per rank: each is a mean over the rank's equal share, and the average
    of those means over ranks is the global mean. So the gradient of every term
    equals the single-process one, up to floating-point summation order.

    Args:
        terms: name -> ``(term, weight)``; weights must be >= 0, one at least > 0.
    """

    def __init__(self, terms: dict[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        for name, (term, weight) in terms.items():
            if weight < 0:
                raise ReidError(f"loss weight of {name!r} must be >= 0, got {weight}")
            if term.input not in INPUTS:
                raise ReidError(f"loss {name!r} reads {term.input!r}; expected one of {INPUTS}")
        if not any(weight > 0 for _, weight in terms.values()):
            raise ReidError("all loss weights are 0; expected at least one > 0")
        active = {name: (term, weight) for name, (term, weight) in terms.items() if weight > 0}
        self.terms = nn.ModuleDict({name: term for name, (term, _) in active.items()})
        self.weights = {name: float(weight) for name, (_, weight) in active.items()}

    def forward(
        self, outputs: dict[str, torch.Tensor], pids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Computes the weighted terms and their sum.

        Args:
            outputs: the model's training output: ``{"logits": (B, N), "feat": (B, D),
                "neck_feat": (B, D)}`` (only the entries the terms read are needed).
            pids: ``(B,)`` identity labels in ``[0, N)``.

        Returns:
            Scalars keyed by term name (each already multiplied by its weight),
            ``"total"``, and the terms' diagnostics keyed ``"<term>.<name>"`` (e.g.
            ``"triplet.active"``), which are logged but not part of the total. A term
            that classifies (cross-entropy, CosFace, ArcFace, circle-softmax) reports
            its batch accuracy as the diagnostic ``acc``; the first such term in
            ``LOSS.NAMES`` order (weight > 0) gives ``"acc"``, the others
            ``"<term>.acc"``. Without a
            classifying term there is no ``"acc"``: no classifier is being trained.
        """
        losses: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            inputs, labels = outputs[term.input], pids
            if term.pairwise:
                inputs = distributed.all_gather_with_grad(inputs)
                labels = distributed.all_gather_rows(pids)
            losses[name] = self.weights[name] * term(inputs, labels)
        total = torch.stack(list(losses.values())).sum()
        for name, term in self.terms.items():  # what the terms measured on the way
            for key, value in getattr(term, "diagnostics", {}).items():
                losses["acc" if key == "acc" and "acc" not in losses else f"{name}.{key}"] = value
        # Outputs no term reads still get a gradient, of zero: distributed training
        # (DDP) needs every parameter to get one in every step.
        read = {term.input for term in self.terms.values()}
        for key in sorted(set(outputs) - read):
            total = total + 0.0 * outputs[key].sum()
        losses["total"] = total
        return losses

    def own_optimizer_groups(self) -> list[dict]:
        """SGD parameter groups of the terms that train with their own optimizer."""
        return [
            {"params": list(term.parameters()), "lr": term.own_lr}
            for term in self.terms.values()
            if term.own_lr is not None and any(True for _ in term.parameters())
        ]

    def model_optimizer_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the terms that train with the model's optimizer."""
        return [
            (f"loss.{name}.{param_name}", param)
            for name, term in self.terms.items()
            if term.own_lr is None
            for param_name, param in term.named_parameters()
        ]


def build_loss(cfg: CfgNode, num_classes: int, feat_dim: int) -> ReidLoss:
    """Builds the training loss from ``LOSS.NAMES`` and ``LOSS.WEIGHTS``.

    Each term's factory (in :data:`reid.losses.LOSSES`) reads its own ``LOSS.*`` keys.

    Args:
        cfg: the config tree.
        num_classes: training identities.
        feat_dim: dimension of the model's features (``model.feat_dim``).

    Returns:
        The loss module; move it to the model's device.

    Raises:
        UnknownNameError: a name that is not registered (the message lists them).
    """
    terms = {
        name: (LOSSES.get(name)(cfg, num_classes, feat_dim, weight), weight)
        for name, weight in zip(cfg.LOSS.NAMES, cfg.LOSS.WEIGHTS, strict=True)
        if weight > 0
    }
    return ReidLoss(terms)
