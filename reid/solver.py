"""Optimizers with parameter groups, and warmup learning-rate schedules."""

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
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
    """Learning-rate multiplier at a fractional ``epoch`` (0-based, iterations / epoch size).

    Warmup rises linearly from ``warmup_start`` to 1 over ``warmup_epochs``; then
    ``"multistep"`` multiplies by ``gamma`` from each epoch in ``steps`` on, and
    ``"cosine"`` decays to 0 over the epochs after warmup.
    """
    if epoch < warmup_epochs:
        return warmup_start + (1 - warmup_start) * epoch / warmup_epochs
    if scheduler == "cosine":
        span = max(max_epochs - warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / span))
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


def build_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer, iters_per_epoch: int
) -> LambdaLR:
    """Warmup + multistep / cosine schedule, stepped after every iteration.

    Stepping per iteration makes the warmup a smooth ramp (short runs need that);
    the multistep decays still fall exactly on the epochs in ``SOLVER.STEPS``.
    """
    solver = cfg.SOLVER

    def factor(iteration: int) -> float:
        return warmup_factor(
            iteration / iters_per_epoch,
            warmup_epochs=solver.WARMUP_EPOCHS,
            warmup_start=solver.WARMUP_FACTOR,
            scheduler=solver.SCHEDULER,
            steps=solver.STEPS,
            gamma=solver.GAMMA,
            max_epochs=solver.MAX_EPOCHS,
        )

    return LambdaLR(optimizer, factor)


def build_loss_optimizer(loss_fn: ReidLoss) -> torch.optim.Optimizer | None:
    """Plain SGD (no momentum, no weight decay) for the loss terms that train with their
    own learning rate (center-loss centers at ``SOLVER.CENTER_LR``, Bag-of-Tricks);
    None when there are none."""
    groups = loss_fn.own_optimizer_groups()
    return torch.optim.SGD(groups, lr=groups[0]["lr"]) if groups else None
