"""Optimizers with parameter groups, and warmup learning-rate schedules."""

import math
from collections.abc import Callable
from dataclasses import dataclass
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


SCHEDULERS = ("multistep", "cosine")


@dataclass(frozen=True)
class LearningRateSchedule:
    """A parameter group's learning rate as a function of where training is: ``position``,
    the epochs completed plus the fraction of the current one done, and ``iteration``, the
    iterations done since the start of training (0 before the first step).

    ``lr = warmup * (floor + (base_lr - floor) * decay)``, where

    - ``warmup`` rises linearly from ``warmup_start`` to 1 over the first ``warmup_epochs``
      epochs or the first ``warmup_iters`` iterations (FastReID's linear ``WarmupLR``:
      ``warmup_start`` at iteration 0), then stays 1;
    - ``decay`` is ``gamma ** (steps passed)`` for ``"multistep"``; for ``"cosine"`` it is
      1 until ``max(warmup_epochs, delay_epochs)``, then falls as half a cosine to 0 at
      ``max_epochs`` and stays there;
    - ``floor`` is ``eta_min_lr`` (an absolute learning rate, the same for every group)
      for ``"cosine"``, 0 for ``"multistep"``.

    The defaults give a constant learning rate.

    Args:
        scheduler: ``"multistep"`` or ``"cosine"``.
        max_epochs: where the cosine ends.
        steps: epochs at which ``"multistep"`` multiplies by ``gamma``.
        gamma: the multistep factor.
        delay_epochs: ``"cosine"`` holds the rate flat until this epoch (FastReID's
            ``DELAY_EPOCHS``), so the cosine spans ``max_epochs - delay_epochs`` epochs.
        eta_min_lr: the learning rate the cosine ends at.
        warmup_start: the warmup's first multiplier.
        warmup_epochs: warmup length in epochs (0: none).
        warmup_iters: warmup length in iterations (0: none); it multiplies whatever the
            decay gives, so with a cosine keep ``delay_epochs`` past it to start the cosine
            after the warmup, as FastReID does.
    """

    scheduler: str = "multistep"
    max_epochs: float = 1
    steps: tuple[float, ...] = ()
    gamma: float = 0.1
    delay_epochs: float = 0
    eta_min_lr: float = 0.0
    warmup_start: float = 1.0
    warmup_epochs: float = 0
    warmup_iters: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ReidError(
                f"unknown scheduler {self.scheduler!r}; expected one of {', '.join(SCHEDULERS)}"
            )

    def warmup(self, position: float, iteration: int) -> float:
        """The warmup multiplier: linear from ``warmup_start`` to 1, then 1."""
        factor = 1.0
        if position < self.warmup_epochs:
            factor *= self.warmup_start + (1 - self.warmup_start) * position / self.warmup_epochs
        if iteration < self.warmup_iters:
            factor *= self.warmup_start + (1 - self.warmup_start) * iteration / self.warmup_iters
        return factor

    def decay(self, position: float) -> float:
        """The multiplier of the learning rate above ``floor``: ``gamma`` to the number of
        steps passed, or the cosine's fall from 1 to 0."""
        if self.scheduler == "multistep":
            return self.gamma ** sum(position >= step for step in self.steps)
        start = max(self.warmup_epochs, self.delay_epochs)
        if position <= start:
            return 1.0
        if position >= self.max_epochs:
            return 0.0
        return 0.5 * (1 + math.cos(math.pi * (position - start) / (self.max_epochs - start)))

    def __call__(self, base_lr: float, position: float, iteration: int) -> float:
        """The learning rate of a group whose base rate is ``base_lr``."""
        floor = self.eta_min_lr if self.scheduler == "cosine" else 0.0
        decayed = floor + (base_lr - floor) * self.decay(position)
        return self.warmup(position, iteration) * decayed


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
    """The learning rate as a function of the position in training, counted in epochs, and
    of the iterations done.

    PK epochs differ in length, so a count of iterations divided by one epoch's length
    drifts away from the epochs the config names. The trainer instead tells the
    scheduler where training is, ``epoch + done / batches_in_this_epoch``, with the
    iterations done so far, after every iteration (:meth:`step_to`); each parameter
    group's learning rate is then ``schedule(initial_lr, position, iteration)``.
    Multistep decays therefore fall exactly on their epochs, a cosine reaches its end
    exactly when training does, and a warmup counted in iterations lasts exactly that
    many steps.

    The position and iteration are all the state there is, and they follow from the
    trainer's own (epoch, iteration, steps done), so resuming needs nothing from
    :meth:`state_dict`.

    Args:
        optimizer: whose groups' ``lr`` is set; ``initial_lr`` is recorded in each
            group (as torch's schedulers do) the first time.
        schedule: ``(initial_lr, position, iteration) -> lr``, e.g. a
            :class:`LearningRateSchedule`.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedule: Callable[[float, float, int], float]
    ) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.position = 0.0
        self.iteration = 0
        self.step_to(0.0, 0)

    def step_to(self, position: float, iteration: int) -> None:
        """Sets every group's learning rate for training ``position`` epochs in, after
        ``iteration`` iterations."""
        self.position, self.iteration = position, iteration
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(group["initial_lr"], position, iteration)

    def get_last_lr(self) -> list[float]:
        """The groups' current learning rates."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, float]:
        return {"position": self.position, "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints of earlier versions hold a LambdaLR's state, or no iteration; the
        # trainer sets both from its own state either way.
        self.step_to(float(state.get("position", 0.0)), int(state.get("iteration", 0)))


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> EpochScheduler:
    """Warmup + multistep / cosine schedule over the fractional epoch (``SOLVER.*``).

    Set after every iteration, so the warmup is a smooth ramp (short runs need that),
    the multistep decays fall exactly on the epochs in ``SOLVER.STEPS``, and
    ``SOLVER.WARMUP_ITERS`` counts the iterations done.
    """
    solver = cfg.SOLVER
    schedule = LearningRateSchedule(
        scheduler=solver.SCHEDULER,
        max_epochs=solver.MAX_EPOCHS,
        steps=tuple(solver.STEPS),
        gamma=solver.GAMMA,
        delay_epochs=solver.DELAY_EPOCHS,
        eta_min_lr=solver.ETA_MIN_LR,
        warmup_start=solver.WARMUP_FACTOR,
        warmup_epochs=solver.WARMUP_EPOCHS,
        warmup_iters=solver.WARMUP_ITERS,
    )
    return EpochScheduler(optimizer, schedule)


def build_loss_optimizer(loss_fn: ReidLoss) -> torch.optim.Optimizer | None:
    """Plain SGD (no momentum, no weight decay) for the loss terms that train with their
    own learning rate (center-loss centers at ``SOLVER.CENTER_LR``, Bag-of-Tricks);
    None when there are none."""
    groups = loss_fn.own_optimizer_groups()
    return torch.optim.SGD(groups, lr=groups[0]["lr"]) if groups else None
