"""The training loop: explicit, with ``run_step`` as its one override point."""

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from reid.engine.checkpoint import load_model_weights, save_checkpoint
from reid.errors import ReidError
from reid.evaluation.report import metrics_report, write_metrics
from reid.models.sync_bn import convert_sync_batchnorm
from reid.solver import EpochScheduler
from reid.utils import distributed
from reid.utils.cli import one_line
from reid.utils.io import write_text

logger = logging.getLogger(__name__)

# Signals that stop training cleanly: a scheduler's preemption and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(ReidError):
    """Training stopped on SIGTERM or SIGINT after saving its state.

    Attributes:
        exit_code: the shell's code for death by that signal (128 + signal number).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} {message}")
        self.exit_code = 128 + signum


class NonFiniteError(ReidError):
    """A NaN or infinite loss or weight; training stops before saving it."""


class Trainer:
    """Trains a ReID model epoch by epoch, evaluating every ``eval_period`` epochs.

    It owns the run folder: ``config.yaml`` at the start, ``metrics.json`` at the end,
    TensorBoard events (every iteration's scalars, each epoch's means, the metrics)
    and the checkpoints. After every epoch it writes ``last.pth``, *then* evaluates
    (so an evaluation error never loses the epoch), then writes ``last.pth`` again
    with the metrics and ``best.pth`` when ``best_metric`` improved. A checkpoint holds
    the model, optimizers, scheduler, loss scaler, position, best score and the RNG
    states, so that :meth:`load_state` continues a stopped run exactly where it stopped
    (on the CPU with ``num_workers=0``: the same final metrics as an uninterrupted run).

    SIGTERM or SIGINT (preemption, Ctrl-C) during an epoch finishes the current logging
    period (``log_period`` iterations at most), writes ``last.pth`` there and raises
    :class:`TrainingInterrupted`; during evaluation it stops at once, the epoch being
    saved already, and a resumed run evaluates it first. A non-finite loss term or
    weight raises :class:`NonFiniteError` before anything is saved, so ``last.pth``
    keeps the last finite state; a loss is checked at the end of its logging period.
    fp16 steps that the loss scaler skips are not errors.

    The logged values stay on the device during a logging period: the host reads them
    back once per period (one reduction over ranks under torchrun), so it never waits
    for the device in between.

    Under torchrun every rank runs this loop on its share of each global batch: the
    model is wrapped in DDP, logged scalars are averaged over ranks, the ranks agree
    on a stop, center-loss gradients are averaged, and only rank 0 writes files.

    Args:
        model: returns ``{"logits": (B, C), "feat": (B, D), "neck_feat": (B, D)}`` in
            train mode.
        loss_fn: maps ``(outputs, pids)`` to a dict of named terms plus ``"total"``.
        optimizer: steps the model's parameters.
        scheduler: sets the learning rate from the position in training, in epochs, and
            the iterations done (:class:`reid.solver.EpochScheduler`); told them after
            every iteration.
        train_loader: yields ``(images, pids, camids)`` in PK batches; its batch
            sampler's ``set_epoch(epoch, start_batch)`` fixes each epoch's order.
        device: where the model lives.
        max_epochs: epochs to train.
        output_dir: receives ``last.pth``, ``best.pth`` and TensorBoard events.
        evaluate: returns the current model's metrics on each test set, by the set's
            name (``{"market1501": {"rank1": ..., "mAP": ...}}``); None: no evaluation.
        eval_period: evaluate every this many epochs, and after the last one.
        best_metric: the metric whose mean over the test sets picks ``best.pth``.
        loss_optimizer: steps the loss's own parameters (center-loss centers).
        amp: mixed precision on CUDA: bf16 where supported, else fp16 with loss scaling.
        channels_last: channels-last memory format on CUDA.
        config: the resolved config as YAML: stored in every checkpoint (``--resume``
            compares it) and written to ``config.yaml``.
        handle_signals: catch SIGTERM / SIGINT as described above (main thread only).
        sync_batchnorm: with several ranks, BatchNorm statistics over the global batch
            (:func:`reid.models.sync_bn.convert_sync_batchnorm`), as in one process.
        freeze_iters: for the first this many iterations of training, leave the model's
            ``frozen`` parts unchanged and train the rest (FastReID's ``FREEZE_ITERS``):
            those parts run in eval mode (BatchNorm keeps and uses its running statistics,
            dropout is off) and their gradients are dropped before the optimizer step, so
            the optimizer neither moves them nor decays them nor updates their moments.
            Gradients are still computed, so under DDP every parameter gets one in every
            step, as it requires. 0 trains everything from the start.
        frozen: names of the model's direct children frozen by ``freeze_iters``.
        clip_grad_norm: before each optimizer step, rescale the gradients of the
            optimizer's parameters so that their global L2 norm is at most this
            (``torch.nn.utils.clip_grad_norm_``; fp16 gradients are unscaled first);
            0 disables. The loss's own optimizer (center-loss centers) is not clipped.
        clip_per_parameter: clip each parameter's gradient norm to ``clip_grad_norm`` on
            its own (FastReID's clipping) instead of their global norm.
        batch_augment: ``(images, params) -> images`` applied to each batch on the device
            when the loader yields ``((uint8 images, augmentation params), pids, camids)``
            (``INPUT.BATCH_AUGMENT``: :func:`reid.data.build_batch_augment`).
        log_period: iterations per logging period: the progress bar, the log and
            TensorBoard get each value's mean over the period at its end, when the loss
            is checked for NaN and a stop signal is looked for.

    Raises:
        ReidError: a ``frozen`` name that is not a child of the model.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: EpochScheduler,
        train_loader: DataLoader,
        *,
        device: torch.device,
        max_epochs: int,
        output_dir: str | Path,
        evaluate: Callable[[], dict[str, dict[str, float]]] | None = None,
        eval_period: int = 10,
        best_metric: str = "mAP",
        loss_optimizer: torch.optim.Optimizer | None = None,
        amp: bool = True,
        channels_last: bool = True,
        config: str = "",
        handle_signals: bool = True,
        sync_batchnorm: bool = True,
        freeze_iters: int = 0,
        frozen: Sequence[str] = ("backbone",),
        clip_grad_norm: float = 0.0,
        clip_per_parameter: bool = False,
        log_period: int = 20,
        batch_augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
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
        self.best_metric = best_metric
        self.loss_optimizer = loss_optimizer
        self.config = config
        self.handle_signals = handle_signals
        self.freeze_iters = freeze_iters
        self.frozen = tuple(frozen) if freeze_iters > 0 else ()
        children = dict(model.named_children())
        if missing := [name for name in self.frozen if name not in children]:
            raise ReidError(
                f"cannot freeze {missing[0]!r} for the first {freeze_iters} iterations: the "
                f"model has no such part; its parts: {', '.join(children)}"
            )
        self.clip_grad_norm = clip_grad_norm
        self.clip_per_parameter = clip_per_parameter
        self.log_period = log_period
        self.batch_augment = batch_augment
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
        if sync_batchnorm and distributed.world_size() > 1:
            convert_sync_batchnorm(model, device)
        self.net = distributed.wrap_model(model, device)  # the model for training steps
        # DDP broadcast the model's weights; the loss terms' (center-loss centers, margin
        # classifiers) agree across ranks only by equal seeding unless broadcast too.
        distributed.broadcast_from_main(self.loss_fn.state_dict().values())
        # Position: completed epochs, then iterations done into the next one.
        self.start_epoch = 0
        self.start_iteration = 0
        # Iterations done since the start of training: TensorBoard's step. Epochs
        # differ in length, so it is counted, not computed from the epoch.
        self.global_step = 0
        self.pending_eval = False
        self.best_score = -1.0
        # The last evaluation, in metrics.json's form (reid.evaluation.report.metrics_report).
        self.metrics: dict[str, Any] = {}
        # Mean of each logged scalar per epoch, in order.
        self.history: list[dict[str, float]] = []
        main = distributed.is_main_process()
        self.writer = SummaryWriter(self.output_dir / "tensorboard") if main else None
        self._resume_sums: dict[str, float] = {}
        self._resume_rng: dict[str, Any] | None = None
        self._stop_signal: int | None = None
        self._stop_now: str | None = None  # set while a stop may interrupt at once

    @property
    def last_path(self) -> Path:
        """``OUTPUT_DIR/last.pth``, the checkpoint ``--resume`` continues from."""
        return self.output_dir / "last.pth"

    @property
    def freezing(self) -> bool:
        """Whether the coming iteration leaves the ``frozen`` parts unchanged."""
        return self.global_step < self.freeze_iters

    def _frozen_parameters(self) -> Iterator[nn.Parameter]:
        for name in self.frozen:
            yield from getattr(self.model, name).parameters()

    def _set_frozen_mode(self) -> None:
        """Frozen parts in eval mode while freezing, back in train mode at its end."""
        if self.global_step <= self.freeze_iters:
            for name in self.frozen:
                getattr(self.model, name).train(not self.freezing)

    def run_step(self, images: torch.Tensor, pids: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """One iteration: forward, loss, backward, optimizer step.

        While :attr:`freezing`, the frozen parts' gradients are dropped before the step;
        with ``clip_grad_norm``, the gradients are clipped before it.

        Args:
            images: (B, 3, H, W) on the device.
            pids: (B,) training labels on the device.

        Returns:
            Scalars to log, as 0-d tensors left on the device (an override may return
            floats): each loss term, its diagnostics, and the batch accuracy of the term
            that classifies (``"acc"``; absent when no term does). The same names at
            every iteration.
        """
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.net(images)
            losses = self.loss_fn(outputs, pids)
        optimizers = [o for o in (self.optimizer, self.loss_optimizer) if o is not None]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        distributed.average_gradients(self.loss_fn.parameters())  # DDP does the model's
        if self.freezing:
            for parameter in self._frozen_parameters():
                parameter.grad = None
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)  # the norm of the true gradients
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            for clipped in [[p] for p in parameters] if self.clip_per_parameter else [parameters]:
                nn.utils.clip_grad_norm_(clipped, self.clip_grad_norm)
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        return {name: value.detach() for name, value in losses.items()}

    def train(self) -> dict[str, Any]:
        """Runs the remaining epochs; returns the metrics of the final evaluation, in
        ``metrics.json``'s form (one test set's metrics, or several keyed by name).

        Raises:
            TrainingInterrupted: SIGTERM / SIGINT; ``last.pth`` holds the position.
            NonFiniteError: a NaN or infinite loss or weight; nothing was saved.
            ReidError: evaluation failed; the message says where the weights are.
        """
        try:
            distributed.on_main(lambda: write_text(self.output_dir / "config.yaml", self.config))
            with self._catching_stop_signals():
                if self.pending_eval:
                    self._evaluate_and_save(self.start_epoch)
                for epoch in range(self.start_epoch, self.max_epochs):
                    self.history.append(self.train_one_epoch(epoch))
                    done = epoch + 1
                    due = self.evaluate is not None and (
                        done % self.eval_period == 0 or done == self.max_epochs
                    )
                    self.save(done, pending_eval=due)
                    self._stop_if_asked(f"after epoch {done}; saved {self.last_path}")
                    if due:
                        self._evaluate_and_save(done)
                if not self.metrics and self.evaluate is not None:  # resumed a finished run
                    self.metrics = metrics_report(self._evaluate())
        finally:  # a stop, a NaN or an error too: what was logged reaches the disk
            if self.writer is not None:
                self.writer.close()
        distributed.on_main(lambda: write_metrics(self.output_dir / "metrics.json", self.metrics))
        return self.metrics

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Trains over one pass of the loader (the rest of it when resuming mid-epoch).

        Returns:
            The epoch's mean of each scalar ``run_step`` returned.
        """
        self.model.train()
        first = self.start_iteration if epoch == self.start_epoch else 0
        self.train_loader.batch_sampler.set_epoch(epoch, start_batch=first)
        num_batches = len(self.train_loader)
        batches = iter(self.train_loader)  # draws the loader's base seed from the RNG
        if self._resume_rng is not None:  # mid-epoch: the state after that draw
            _set_rng_states(self._resume_rng)
            self._resume_rng = None
        sums = dict(self._resume_sums) if first else {}
        self.scheduler.step_to(epoch + first / num_batches, self.global_step)
        bar = tqdm(
            batches,
            total=num_batches,
            initial=first,
            desc=f"epoch {epoch + 1}/{self.max_epochs}",
            leave=False,
            disable=not distributed.is_main_process(),
        )
        seen, start = 0, time.perf_counter()
        period: list[dict[str, torch.Tensor | float]] = []  # values not yet read back
        averages: dict[str, float] = {}
        for step, (images, pids, _) in enumerate(bar, start=first):
            images = self._on_device(images)
            lr = self.optimizer.param_groups[0]["lr"]
            self._set_frozen_mode()
            period.append(self.run_step(images, pids.to(self.device, non_blocking=True)))
            self.global_step += 1
            self.scheduler.step_to(epoch + (step + 1) / num_batches, self.global_step)
            seen += len(images)
            last = step + 1 == num_batches
            if len(period) < self.log_period and not last:
                continue
            # The period's one read-back (and, under torchrun, one reduction).
            rows, stop = self._read_period(period)
            where = f"epoch {epoch + 1}, iteration {step + 1}/{num_batches}"
            # Logged first: TensorBoard shows the period in which a NaN appeared.
            period_means = {name: sum(v[name] for v in rows) / len(rows) for name in rows[0]}
            self._log_scalars("train_iter", {**period_means, "lr": lr}, self.global_step)
            for offset, values in enumerate(rows):
                if not all(math.isfinite(value) for value in values.values()):
                    iteration = step + 2 - len(rows) + offset
                    terms = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
                    raise NonFiniteError(
                        f"non-finite loss at epoch {epoch + 1}, iteration "
                        f"{iteration}/{num_batches} ({terms}), found at the end of the "
                        f"logging period of iterations {step + 2 - len(rows)}-{step + 1}; "
                        f"{self._kept()}; a learning rate too high for the optimizer is the "
                        "usual cause"
                    )
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value
            period.clear()
            averages = {name: total / (step + 1) for name, total in sums.items()}
            speed = seen / (time.perf_counter() - start)
            bar.set_postfix({**averages, "lr": f"{lr:.1e}", "img/s": f"{speed:.0f}"}, refresh=False)
            if not last and stop:
                self.save(epoch, iteration=step + 1, epoch_sums=sums)
                self._stop_if_asked(f"at {where}; saved {self.last_path}")
        self._log_scalars("train", {**averages, "lr": lr}, self.global_step)
        summary = " ".join(f"{name} {value:.4f}" for name, value in averages.items())
        logger.info(
            "epoch %d/%d: %s lr %.2e %.0f img/s", epoch + 1, self.max_epochs, summary, lr, speed
        )
        return averages

    def _on_device(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """A loader's images as the model's input on the device; ``(uint8 images,
        params)`` are augmented there first (``batch_augment``)."""
        if self.batch_augment is not None:
            pixels, params = (part.to(self.device, non_blocking=True) for part in images)
            images = self.batch_augment(pixels, params)
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def _read_period(
        self, period: list[dict[str, torch.Tensor | float]]
    ) -> tuple[list[dict[str, float]], bool]:
        """The logged values of a period's iterations, as one process would log them (the
        mean over ranks), and whether a stop signal reached any rank.

        The values are stacked on the device, reduced over ranks together with the stop
        flag in one all-reduce, and read back to the host once.
        """
        names = list(period[0])
        if any(list(values) != names for values in period):
            raise ReidError(
                f"run_step returned other names during a logging period: {names} and "
                f"{next(list(v) for v in period if list(v) != names)}; expected the same "
                "names at every iteration"
            )
        rows = torch.stack(
            [
                torch.stack([torch.as_tensor(v[n], device=self.device).double() for n in names])
                for v in period
            ]
        )
        flag = rows.new_full((1, len(names)), float(self._stop_signal is not None))
        *sums, stops = distributed.sum_over_ranks(torch.cat([rows, flag])).tolist()
        ranks = distributed.world_size()
        means = [
            {name: total / ranks for name, total in zip(names, row, strict=True)} for row in sums
        ]
        return means, stops[0] > 0

    def log_metrics(self, per_set: dict[str, dict[str, float]], epoch: int) -> None:
        """Logs each test set's metrics to the log and TensorBoard (at the epoch as step):
        tags ``eval/<metric>`` for one set, ``eval/<set>/<metric>`` for several."""
        several = len(per_set) > 1
        for name, metrics in per_set.items():
            self._log_scalars(f"eval/{name}" if several else "eval", metrics, epoch)
            text = " ".join(f"{key} {100 * value:.2f}%" for key, value in metrics.items())
            logger.info("epoch %d evaluation%s: %s", epoch, f" of {name}" if several else "", text)

    def save(
        self,
        epoch: int,
        iteration: int = 0,
        pending_eval: bool = False,
        epoch_sums: dict[str, float] | None = None,
        best: bool = False,
    ) -> None:
        """Writes ``last.pth`` (and ``best.pth`` when ``best``) at a position.

        Args:
            epoch: completed epochs.
            iteration: iterations done into the next epoch (0 at an epoch's end).
            pending_eval: the completed epoch is still to be evaluated.
            epoch_sums: the running sums of the logged scalars, mid-epoch.
            best: also write ``best.pth``.

        Raises:
            NonFiniteError: a weight is NaN or infinite; nothing is written.
            ReidError: the file cannot be written; the previous one is unchanged.
        """
        weights = self.model.state_dict()
        bad = [name for name, tensor in weights.items() if not tensor.isfinite().all()]
        if bad:
            raise NonFiniteError(
                f"non-finite weights after epoch {epoch}, iteration {iteration} "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); {self._kept()}"
            )
        state = {
            "model": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "pending_eval": pending_eval,
            "epoch_sums": epoch_sums or {},
            "global_step": self.global_step,
            "metrics": self.metrics,
            "best_score": self.best_score,
            "rng": _rng_states(),
            "config": self.config,
        }
        if self.loss_optimizer is not None:
            state["loss_optimizer"] = self.loss_optimizer.state_dict()

        def write() -> None:
            save_checkpoint(self.last_path, state)
            if best:
                save_checkpoint(self.output_dir / "best.pth", state)

        distributed.on_main(write)  # a failed write ends every rank, not only rank 0

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Restores everything :meth:`save` wrote, to continue from its position."""
        load_model_weights(self.model, state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state["loss"])
        if self.loss_optimizer is not None:
            self.loss_optimizer.load_state_dict(state["loss_optimizer"])
        self.start_epoch = state["epoch"]
        # Checkpoints of earlier versions hold only epoch ends, evaluated.
        self.start_iteration = state.get("iteration", 0)
        self.pending_eval = state.get("pending_eval", False)
        self._resume_sums = state.get("epoch_sums", {})
        # Earlier versions did not count steps; their epochs' lengths are not known.
        self.global_step = state.get(
            "global_step", self.start_epoch * len(self.train_loader) + self.start_iteration
        )
        self.metrics = state.get("metrics", {})
        # Earlier versions picked best.pth by mAP alone, under this name.
        self.best_score = state["best_score"] if "best_score" in state else state["best_map"]
        if self.start_iteration:
            self._resume_rng = state["rng"]  # applied once the epoch's loader exists
        else:
            _set_rng_states(state["rng"])
        logger.info(
            "resumed from %s after epoch %d, iteration %d",
            source,
            self.start_epoch,
            self.start_iteration,
        )

    def _evaluate_and_save(self, epoch: int) -> None:
        """Evaluates the model after ``epoch`` completed epochs, then saves the result."""
        assert self.evaluate is not None
        where = f"after epoch {epoch}; its weights are saved in {self.last_path}"
        try:
            self._stop_now = f"during the evaluation {where}"
            self._stop_if_asked(self._stop_now)
            metrics = self._evaluate()
        except TrainingInterrupted:
            raise
        except ReidError as err:
            raise ReidError(
                f"evaluation failed {where}; fix the cause and continue with --resume: "
                f"{one_line(err)}"
            ) from None
        except Exception:
            logger.error("evaluation failed %s", where)
            raise
        finally:
            self._stop_now = None
        self.metrics = metrics_report(metrics)
        self.log_metrics(metrics, epoch)
        score = float(np.mean([m[self.best_metric] for m in metrics.values()]))
        improved = score > self.best_score
        self.best_score = max(self.best_score, score)
        self.save(epoch, best=improved)
        self._stop_if_asked(f"after evaluating epoch {epoch}; saved {self.last_path}")

    def _evaluate(self) -> dict[str, dict[str, float]]:
        """``evaluate()`` with every rank holding the weights the checkpoint holds.

        Without SyncBN each rank's BatchNorm running statistics follow its own share of
        the batches; rank 0's are the ones saved, so every rank evaluates with those.
        """
        distributed.broadcast_from_main(self.model.buffers())
        return self.evaluate()

    def _kept(self) -> str:
        """What a stop without saving leaves on disk, for error messages."""
        if self.last_path.is_file():
            return f"stopped without saving; {self.last_path} holds the last finite state"
        return "stopped without saving"

    def _log_scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def _stop_asked(self) -> bool:
        """Whether a stop signal reached any rank; every rank must ask at the same point."""
        return distributed.any_rank(self._stop_signal is not None)

    def _stop_if_asked(self, where: str) -> None:
        if self._stop_asked():
            signum = self._stop_signal or signal.SIGTERM  # another rank's, under torchrun
            raise TrainingInterrupted(signum, f"{where}; continue with --resume")

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum
        if self._stop_now is not None:  # nothing unsaved to lose: stop at once
            raise TrainingInterrupted(signum, f"{self._stop_now}; continue with --resume")

    @contextmanager
    def _catching_stop_signals(self) -> Iterator[None]:
        """Routes SIGTERM / SIGINT to :meth:`_on_stop_signal` while training."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_stop_signal) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _rng_states() -> dict[str, Any]:
    """The RNG states as tensors and plain types, loadable with ``weights_only``."""
    numpy_state = np.random.get_state(legacy=False)
    key = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    states = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"], "key": key}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    if isinstance(numpy_state, dict):  # earlier versions stored NumPy's legacy tuple
        key = numpy_state["state"]["key"].numpy().astype(np.uint32)
        numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key}}
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
