"""Optimizers with parameter groups, and warmup learning-rate schedules."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.losses import ReidLoss

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(
    params: list[tuple[str, nn.Parameter]],
    name: str = "adam",
    lr: float = 3.5e-4,
    weight_decay: float = 5e-4,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float = 5e-4,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with one group for weights and one for biases (Bag-of-Tricks).

    Args:
        params: ``(name, parameter)`` pairs, e.g. ``model.named_parameters()``;
            frozen parameters (the BNNeck bias) are left out.
        name: ``"adam"`` (L2 weight decay in the gradient), ``"adamw"`` (decoupled
            weight decay, Loshchilov & Hutter) or ``"sgd"`` (with ``momentum``).
        bias_lr_factor: bias learning rate = ``lr * bias_lr_factor``.
        weight_decay_bias: weight decay of biases.
    """
    weights = [p for n, p in params if p.requires_grad and not n.endswith("bias")]
    biases = [p for n, p in params if p.requires_grad and n.endswith("bias")]
    groups = [
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": biases, "lr": lr * bias_lr_factor, "weight_decay": weight_decay_bias},
    ]
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ReidError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def warmup_factor(
    epoch: float,
    warmup_epochs: int,
    warmup_start: float,
    scheduler: str,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    max_epochs: int = 1,
) -> float:
    """Learning-rate multiplier at a fractional ``epoch``: the epochs completed plus the
    fraction of the current one done (0 at the start of training).

    Warmup rises linearly from ``warmup_start`` to 1 over ``warmup_epochs``; then
    ``"multistep"`` multiplies by ``gamma`` from each epoch in ``steps`` on, and
    ``"cosine"`` decays to 0 over the epochs after warmup, reaching it at
    ``max_epochs`` and staying there.
    """
    if epoch < warmup_epochs:
        return warmup_start + (1 - warmup_start) * epoch / warmup_epochs
    if scheduler == "cosine":
        span = max(max_epochs - warmup_epochs, 1)
        done = min(epoch, max_epochs) - warmup_epochs
        return 0.5 * (1 + math.cos(math.pi * done / span))
    return gamma ** sum(epoch >= step for step in steps)


def build_optimizer(
    cfg: CfgNode, model: nn.Module, loss_fn: ReidLoss | None = None
) -> torch.optim.Optimizer:
    """The model's optimizer from ``SOLVER.*``; it also steps the parameters of loss
    terms that train with the model (margin classifiers' class weights)."""
    solver = cfg.SOLVER
    params = list(model.named_parameters())
    if loss_fn is not None:
        params += loss_fn.model_optimizer_parameters()
    return make_optimizer(
        params,
        name=solver.OPTIMIZER,
        lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        momentum=solver.MOMENTUM,
    )


class EpochScheduler:
    """The learning rate as a function of the position in training, counted in epochs.

    PK epochs differ in length, so a count of iterations divided by one epoch's length
    drifts away from the epochs the config names. The trainer instead tells the
    scheduler where training is, ``epoch + done / batches_in_this_epoch``, after every
    iteration (:meth:`step_to`); each parameter group's learning rate is then its
    ``initial_lr`` times ``factor(position)``. Multistep decays therefore fall exactly
    on their epochs, and a cosine reaches its end exactly when training does.

    The position is all the state there is, and it follows from the trainer's own
    (epoch, iteration), so resuming needs nothing from :meth:`state_dict`.

    Args:
        optimizer: whose groups' ``lr`` is set; ``initial_lr`` is recorded in each
            group (as torch's schedulers do) the first time.
        factor: the multiplier at a fractional epoch, e.g. :func:`warmup_factor`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[float], float]) -> None:
        self.optimizer = optimizer
        self.factor = factor
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.position = 0.0
        self.step_to(0.0)

    def step_to(self, position: float) -> None:
        """Sets every group's learning rate for training ``position`` epochs in."""
        self.position = position
        multiplier = self.factor(position)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier

    def get_last_lr(self) -> list[float]:
        """The groups' current learning rates."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, float]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints of earlier versions hold a LambdaLR's state; the trainer sets
        # the position from its own (epoch, iteration) either way.
        self.step_to(float(state.get("position", 0.0)))


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> EpochScheduler:
    """Warmup + multistep / cosine schedule over the fractional epoch (``SOLVER.*``).

    Set after every iteration, so the warmup is a smooth ramp (short runs need that),
    and the multistep decays fall exactly on the epochs in ``SOLVER.STEPS``.
    """
    solver = cfg.SOLVER

    def factor(epoch: float) -> float:
        return warmup_factor(
            epoch,
            warmup_epochs=solver.WARMUP_EPOCHS,
            warmup_start=solver.WARMUP_FACTOR,
            scheduler=solver.SCHEDULER,
            steps=solver.STEPS,
            gamma=solver.GAMMA,
            max_epochs=solver.MAX_EPOCHS,
        )

    return EpochScheduler(optimizer, factor)


def build_loss_optimizer(loss_fn: ReidLoss) -> torch.optim.Optimizer | None:
    """Plain SGD (no momentum, no weight decay) for the loss terms that train with their
    own learning rate (center-loss centers at ``SOLVER.CENTER_LR``, Bag-of-Tricks);
    None when there are none."""
    groups = loss_fn.own_optimizer_groups()
    return torch.optim.SGD(groups, lr=groups[0]["lr"]) if groups else None
