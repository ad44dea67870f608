"""The training loop: explicit, with ``run_step`` as its one override point."""

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from reid.engine.checkpoint import load_model_weights, save_checkpoint

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a ReID model epoch by epoch, evaluating every ``eval_period`` epochs.

    After every epoch it writes ``last.pth`` (and ``best.pth`` when mAP improved):
    model, optimizers, scheduler, loss scaler, epoch, best mAP and the RNG states,
    so that :meth:`load_state` continues a killed run exactly where its last epoch
    ended (on CPU: the same final metrics as an uninterrupted run).

    Args:
        model: returns ``{"logits": (B, C), "feat": (B, D)}`` in train mode.
        loss_fn: maps ``(outputs, pids)`` to a dict of named terms plus ``"total"``.
        optimizer: steps the model's parameters.
        scheduler: stepped after every iteration.
        train_loader: yields ``(images, pids, camids)`` in PK batches; its batch
            sampler's ``set_epoch`` fixes each epoch's order.
        device: where the model lives.
        max_epochs: epochs to train.
        output_dir: receives ``last.pth``, ``best.pth`` and TensorBoard events.
        evaluate: returns metrics (with ``"mAP"``) for the current model, or None.
        eval_period: evaluate every this many epochs, and after the last one.
        loss_optimizer: steps the loss's own parameters (center-loss centers).
        amp: mixed precision on CUDA: bf16 where supported, else fp16 with loss scaling.
        channels_last: channels-last memory format on CUDA.
        extra_state: stored in every checkpoint as is (the resolved config).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader,
        *,
        device: torch.device,
        max_epochs: int,
        output_dir: str | Path,
        evaluate: Callable[[], dict[str, float]] | None = None,
        eval_period: int = 10,
        loss_optimizer: torch.optim.Optimizer | None = None,
        amp: bool = True,
        channels_last: bool = True,
        extra_state: dict | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.device = device
        self.max_epochs = max_epochs
        self.output_dir = Path(output_dir)
        self.evaluate = evaluate
        self.eval_period = eval_period
        self.loss_optimizer = loss_optimizer
        self.extra_state = extra_state or {}
        on_cuda = device.type == "cuda"
        self.amp_dtype = None
        if amp and on_cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Loss scaling is only needed for fp16's narrow exponent range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.memory_format = torch.preserve_format
        if channels_last and on_cuda:
            self.memory_format = torch.channels_last
            self.model.to(memory_format=self.memory_format)
        self.start_epoch = 0
        self.best_map = -1.0
        # Mean of each logged scalar per epoch, in order.
        self.history: list[dict[str, float]] = []
        self.writer = SummaryWriter(self.output_dir / "tensorboard")

    def run_step(self, images: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
        """One iteration: forward, loss, backward, optimizer step.

        Args:
            images: (B, 3, H, W) on the device.
            pids: (B,) training labels on the device.

        Returns:
            Scalars to log: each loss term and the batch accuracy.
        """
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.model(images)
            losses = self.loss_fn(outputs, pids)
        optimizers = [o for o in (self.optimizer, self.loss_optimizer) if o is not None]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        accuracy = (outputs["logits"].argmax(1) == pids).float().mean()
        return {**{name: value.item() for name, value in losses.items()}, "acc": accuracy.item()}

    def train(self) -> dict[str, float]:
        """Runs the remaining epochs; returns the metrics of the final evaluation."""
        metrics: dict[str, float] = {}
        for epoch in range(self.start_epoch, self.max_epochs):
            self.history.append(self.train_one_epoch(epoch))
            last = epoch + 1 == self.max_epochs
            if self.evaluate is not None and ((epoch + 1) % self.eval_period == 0 or last):
                metrics = self.evaluate()
                self.log_metrics(metrics, epoch)
            self.save(epoch, metrics)
        if not metrics and self.evaluate is not None:  # resumed a finished run
            metrics = self.evaluate()
        self.writer.close()
        return metrics

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Trains over one pass of the loader, showing a progress bar.

        Returns:
            The epoch's mean of each scalar ``run_step`` returned.
        """
        self.model.train()
        self.train_loader.batch_sampler.set_epoch(epoch)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.max_epochs}", leave=False)
        sums: dict[str, float] = {}
        seen, start = 0, time.perf_counter()
        for step, (images, pids, _) in enumerate(bar):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            lr = self.optimizer.param_groups[0]["lr"]
            values = self.run_step(images, pids.to(self.device, non_blocking=True))
            self.scheduler.step()
            seen += len(images)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            averages = {name: total / (step + 1) for name, total in sums.items()}
            speed = seen / (time.perf_counter() - start)
            bar.set_postfix({**averages, "lr": f"{lr:.1e}", "img/s": f"{speed:.0f}"}, refresh=False)
        iteration = (epoch + 1) * len(self.train_loader)
        for name, value in averages.items():
            self.writer.add_scalar(f"train/{name}", value, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)
        summary = " ".join(f"{name} {value:.4f}" for name, value in averages.items())
        logger.info(
            "epoch %d/%d: %s lr %.2e %.0f img/s", epoch + 1, self.max_epochs, summary, lr, speed
        )
        return averages

    def log_metrics(self, metrics: dict[str, float], epoch: int) -> None:
        """Logs evaluation metrics to the log and TensorBoard."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"eval/{name}", value, epoch + 1)
        text = " ".join(f"{name} {100 * value:.2f}%" for name, value in metrics.items())
        logger.info("epoch %d evaluation: %s", epoch + 1, text)

    def save(self, epoch: int, metrics: dict[str, float]) -> None:
        """Writes ``last.pth``, and ``best.pth`` when mAP improved."""
        improved = bool(metrics) and metrics["mAP"] > self.best_map
        if improved:
            self.best_map = metrics["mAP"]
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "epoch": epoch + 1,
            "metrics": metrics,
            "best_map": self.best_map,
            "rng": _rng_states(),
            **self.extra_state,
        }
        if self.loss_optimizer is not None:
            state["loss_optimizer"] = self.loss_optimizer.state_dict()
        save_checkpoint(self.output_dir / "last.pth", state)
        if improved:
            save_checkpoint(self.output_dir / "best.pth", state)

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Restores everything :meth:`save` wrote, to continue after ``state["epoch"]``."""
        load_model_weights(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state["loss"])
        if self.loss_optimizer is not None:
            self.loss_optimizer.load_state_dict(state["loss_optimizer"])
        self.start_epoch = state["epoch"]
        self.best_map = state["best_map"]
        _set_rng_states(state["rng"])
        logger.info("resumed from %s after epoch %d", source, self.start_epoch)


def _rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
