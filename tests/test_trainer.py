"""The Trainer's safety: stop on non-finite values, save before evaluating, stop cleanly on
SIGTERM / SIGINT and resume to the very same result. A tiny model on random vectors."""

import copy
import json
import math
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reid.config import load_cfg
from reid.data import PKSampler
from reid.data.sampler import Sample
from reid.engine.checkpoint import load_checkpoint
from reid.engine.trainer import NonFiniteError, Trainer, TrainingInterrupted
from reid.errors import ReidError
from reid.evaluation import evaluate_rank
from reid.losses import build_loss
from reid.solver import EpochScheduler, LearningRateSchedule, build_scheduler

NUM_IDS, PER_ID, DIM = 8, 5, 16
MAX_EPOCHS = 3


class NoisyVectors(Dataset):
    """Fixed vectors per identity plus noise drawn from each sample's seed, like augmentation."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.centers = torch.randn(NUM_IDS, DIM, generator=generator)
        self.pids = [i // PER_ID for i in range(NUM_IDS * PER_ID)]

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, item: Sample | int) -> tuple[torch.Tensor, int, int]:
        index, seed = item if isinstance(item, Sample) else (item, 0)
        pid = self.pids[index]
        noise = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
        return self.centers[pid] + 0.5 * noise, pid, index % PER_ID


class TinyModel(nn.Module):
    """A linear embedding with dropout, which draws from the global RNG as it trains."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.2)
        self.embed = nn.Linear(DIM, DIM)
        self.neck = nn.BatchNorm1d(DIM)
        self.classifier = nn.Linear(DIM, NUM_IDS, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        feat = self.embed(self.dropout(x))
        if not self.training:
            return self.neck(feat)
        return {"logits": self.classifier(self.neck(feat)), "feat": feat}


def _trainer(
    output_dir: Path,
    trainer_class: type[Trainer] = Trainer,
    schedule: tuple[str, ...] = (),
    loss_fn: nn.Module | None = None,
    **kwargs,
) -> Trainer:
    """A Trainer of the tiny model; ``schedule``: ``SOLVER.*`` overrides of its learning
    rate schedule (default: constant); ``loss_fn``: default, the default config's."""
    torch.manual_seed(0)
    dataset = NoisyVectors()
    sampler = PKSampler(dataset.pids, batch_size=8, num_instances=2, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    test_loader = DataLoader(dataset, batch_size=16)
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def evaluate() -> dict[str, dict[str, float]]:
        model.eval()
        with torch.no_grad():
            feats, pids, cams = zip(*[(model(x), p, c) for x, p, c in test_loader], strict=True)
        model.train()
        feats, pids, cams = torch.cat(feats), torch.cat(pids), torch.cat(cams)
        query = cams == 0
        cmc, mean_ap, _ = evaluate_rank(
            torch.cdist(feats[query], feats[~query]), pids[query], pids[~query],
            cams[query], cams[~query],
        )  # fmt: skip
        return {"vectors": {"rank1": float(cmc[0]), "mAP": mean_ap}}

    options = {"eval_period": 2, "evaluate": evaluate, **kwargs}
    return trainer_class(
        model,
        loss_fn or build_loss(load_cfg(), NUM_IDS, DIM),
        optimizer,
        build_scheduler(load_cfg(opts=["SOLVER.WARMUP_EPOCHS", "0", *schedule]), optimizer)
        if schedule
        else EpochScheduler(optimizer, LearningRateSchedule()),
        loader,
        device=torch.device("cpu"),
        max_epochs=MAX_EPOCHS,
        output_dir=output_dir,
        **options,
    )


def _resume(output_dir: Path, **kwargs) -> Trainer:
    trainer = _trainer(output_dir, **kwargs)
    trainer.load_state(load_checkpoint(output_dir / "last.pth"), "last.pth")
    return trainer


def _stopping_at(epoch: int, iteration: int, signum: int) -> type[Trainer]:
    """A Trainer whose run_step sends itself ``signum`` at that 0-based epoch / iteration."""

    class Stopping(Trainer):
        def train_one_epoch(self, current: int) -> dict[str, float]:
            self.position = [current, 0]
            return super().train_one_epoch(current)

        def run_step(self, images: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
            values = super().run_step(images, pids)
            if self.position == [epoch, iteration]:
                signal.raise_signal(signum)
            self.position[1] += 1
            return values

    return Stopping


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """Final metrics and model weights of a run never stopped."""
    trainer = _trainer(tmp_path_factory.mktemp("uninterrupted"))
    metrics = trainer.train()
    return metrics, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _assert_same_run(trainer: Trainer, metrics: dict, uninterrupted: tuple[dict, dict]) -> None:
    expected_metrics, expected_weights = uninterrupted
    assert metrics == expected_metrics
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, expected_weights[name]), name


@pytest.mark.parametrize(
    ("signum", "log_period", "saved"),
    [(signal.SIGTERM, 1, 2), (signal.SIGINT, 1, 2), (signal.SIGTERM, 3, 3)],
)
def test_signal_mid_epoch_saves_at_the_period_end_and_resumes_identically(
    tmp_path: Path, uninterrupted: tuple[dict, dict], signum: int, log_period: int, saved: int
) -> None:
    # The signal comes during the second iteration; the stop is at its period's end.
    stopping = _trainer(
        tmp_path, _stopping_at(epoch=1, iteration=1, signum=signum), log_period=log_period
    )
    previous_handler = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as info:
        stopping.train()
    assert signal.getsignal(signum) == previous_handler  # restored
    name = signal.Signals(signum).name
    assert str(info.value).startswith(f"stopped by {name} at epoch 2, iteration {saved}/")
    assert "continue with --resume" in str(info.value)
    assert info.value.exit_code == 128 + signum
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["iteration"]) == (1, saved)

    resumed = _resume(tmp_path)
    assert (resumed.start_epoch, resumed.start_iteration) == (1, saved)
    _assert_same_run(resumed, resumed.train(), uninterrupted)


def test_signal_during_evaluation_stops_at_once_and_resume_evaluates_first(
    tmp_path: Path, uninterrupted: tuple[dict, dict]
) -> None:
    trainer = _trainer(tmp_path)
    evaluate = trainer.evaluate
    calls = []

    def interrupted_evaluation() -> dict[str, float]:
        calls.append(1)
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the signal should have stopped the evaluation")

    trainer.evaluate = interrupted_evaluation
    with pytest.raises(TrainingInterrupted, match="during the evaluation after epoch 2"):
        trainer.train()
    assert calls == [1]
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["iteration"], state["pending_eval"]) == (2, 0, True)
    assert evaluate is not None

    resumed = _resume(tmp_path)
    assert resumed.pending_eval
    _assert_same_run(resumed, resumed.train(), uninterrupted)


def test_evaluation_error_comes_after_the_save_and_names_it(
    tmp_path: Path, uninterrupted: tuple[dict, dict]
) -> None:
    trainer = _trainer(tmp_path)

    def failing() -> dict[str, float]:
        raise ReidError("cannot read image query/0001.jpg: broken data stream")

    trainer.evaluate = failing
    with pytest.raises(ReidError) as info:
        trainer.train()
    message = str(info.value)
    assert "evaluation failed after epoch 2" in message
    assert f"weights are saved in {tmp_path / 'last.pth'}" in message
    assert message.endswith("cannot read image query/0001.jpg: broken data stream")
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    # Fixed, the run goes on from the saved epoch to the uninterrupted result.
    resumed = _resume(tmp_path)
    _assert_same_run(resumed, resumed.train(), uninterrupted)


class NaNAt(nn.Module):
    """The real loss, NaN from a given call on (as a learning rate too high would give)."""

    def __init__(self, first_nan_call: int) -> None:
        super().__init__()
        self.loss = build_loss(load_cfg(), NUM_IDS, DIM)
        self.first_nan_call, self.calls = first_nan_call, 0

    def forward(self, outputs: dict, pids: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.loss(outputs, pids)
        self.calls += 1
        if self.calls > self.first_nan_call:
            terms = {name: value * float("nan") for name, value in terms.items()}
        return terms


def test_nan_loss_stops_at_once_and_keeps_the_last_finite_checkpoint(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    sampler = trainer.train_loader.batch_sampler
    first_epoch, second_epoch = len(sampler._batches(0)), len(sampler._batches(1))
    trainer.loss_fn = NaNAt(first_nan_call=first_epoch + 2)  # 3rd iteration of epoch 2
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith(
        f"non-finite loss at epoch 2, iteration 3/{second_epoch} (cross_entropy nan"
    )
    assert "triplet nan" in message and "total nan" in message
    assert f"{tmp_path / 'last.pth'} holds the last finite state" in message
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["epoch"] == 1
    assert all(tensor.isfinite().all() for tensor in state["model"].values())


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    with torch.no_grad():
        trainer.model.embed.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights after epoch 1.*embed.weight"):
        trainer.save(1)
    assert not (tmp_path / "last.pth").exists()


def test_checkpoints_hold_only_tensors_and_plain_types(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    trainer.save(1)
    state = torch.load(tmp_path / "last.pth", weights_only=True)  # plain torch, no allowlist
    assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"]["state"]["key"], torch.Tensor)


def _recording_lr(trainer: Trainer) -> list[tuple[int, int, float]]:
    """``(epoch, iteration, learning rate)`` of every step the trainer takes, appended to
    as it trains."""
    seen, run_step = [], trainer.run_step
    epoch_of_step = {"epoch": -1, "iteration": 0}
    train_one_epoch = trainer.train_one_epoch

    def recording_epoch(epoch: int) -> dict[str, float]:
        epoch_of_step.update(epoch=epoch, iteration=0)
        return train_one_epoch(epoch)

    def recording_step(images: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
        lr = trainer.optimizer.param_groups[0]["lr"]
        seen.append((epoch_of_step["epoch"], epoch_of_step["iteration"], lr))
        epoch_of_step["iteration"] += 1
        return run_step(images, pids)

    trainer.train_one_epoch, trainer.run_step = recording_epoch, recording_step
    return seen


def test_the_schedule_follows_the_true_position_over_uneven_epochs(tmp_path: Path) -> None:
    """PK epochs of this sampler have 6, 5 and 6 batches. The decay configured at epoch 1
    and 2 hits exactly the first step of those epochs, and nothing in between; the
    TensorBoard step counts iterations, logged at the end of each logging period (2
    iterations) and of each epoch."""
    schedule = ("SOLVER.STEPS", "[1, 2]", "SOLVER.GAMMA", "0.1")
    trainer = _trainer(tmp_path, schedule=schedule, log_period=2)
    sampler = trainer.train_loader.batch_sampler
    lengths = [len(sampler._batches(epoch)) for epoch in range(MAX_EPOCHS)]
    assert len(set(lengths)) > 1  # the point of the test: epochs differ in length
    seen = _recording_lr(trainer)
    trainer.train()
    assert [(epoch, iteration) for epoch, iteration, _ in seen] == [
        (epoch, iteration) for epoch in range(MAX_EPOCHS) for iteration in range(lengths[epoch])
    ]
    for epoch, _, lr in seen:
        assert lr == pytest.approx(0.05 * 0.1**epoch, rel=1e-12)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train_iter/total")]
    period_ends = [
        sum(lengths[:epoch]) + min(end, lengths[epoch])
        for epoch in range(MAX_EPOCHS)
        for end in range(2, lengths[epoch] + 2, 2)
    ]
    assert steps == period_ends
    epoch_steps = [event.step for event in events.Scalars("train/total")]
    assert epoch_steps == [sum(lengths[: epoch + 1]) for epoch in range(MAX_EPOCHS)]


def test_cosine_ends_at_its_minimum_when_training_does(tmp_path: Path) -> None:
    """Cosine over uneven epochs: each epoch's first step is at cos(pi * epoch / 3), the
    learning rate never rises, and it is exactly 0 when the last iteration is done
    (an epoch longer than the first used to carry the cosine past its end)."""
    trainer = _trainer(tmp_path, schedule=("SOLVER.SCHEDULER", "cosine", "SOLVER.MAX_EPOCHS", "3"))
    seen = _recording_lr(trainer)
    trainer.train()
    lrs = [lr for _, _, lr in seen]
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:], strict=False))
    for epoch, iteration, lr in seen:
        if iteration == 0:
            expected = 0.05 * 0.5 * (1 + math.cos(math.pi * epoch / MAX_EPOCHS))
            assert lr == pytest.approx(expected, rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0


def test_a_resumed_run_takes_up_the_schedule_where_it_stopped(tmp_path: Path) -> None:
    schedule = ("SOLVER.STEPS", "[1, 2]")
    stopping = _trainer(
        tmp_path, _stopping_at(1, 2, signal.SIGTERM), schedule=schedule, log_period=1
    )
    with pytest.raises(TrainingInterrupted):
        stopping.train()
    resumed = _trainer(tmp_path, schedule=schedule, log_period=1)
    resumed.load_state(load_checkpoint(tmp_path / "last.pth"), "last.pth")
    seen = _recording_lr(resumed)
    resumed.train()
    assert seen[0][2] == pytest.approx(0.05 * 0.1, rel=1e-12)  # epoch 2, step 4
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train_iter/total")]
    assert steps == sorted(set(steps))  # strictly increasing across the resume


def test_tensorboard_keeps_what_was_logged_before_a_stop(tmp_path: Path) -> None:
    """The writer is flushed and closed on every exit: SIGTERM, NaN, evaluation error."""
    stopping = _trainer(tmp_path / "term", _stopping_at(0, 2, signal.SIGTERM), log_period=1)
    nan = _trainer(tmp_path / "nan", log_period=1)
    nan.loss_fn = NaNAt(first_nan_call=4)
    failing = _trainer(tmp_path / "eval", log_period=1)

    def broken() -> dict[str, float]:
        raise ReidError("cannot read image query/0001.jpg")

    failing.evaluate = broken
    for trainer, error in (
        (stopping, TrainingInterrupted),
        (nan, NonFiniteError),
        (failing, ReidError),
    ):
        trainer.writer.close = mock.Mock(wraps=trainer.writer.close)
        with pytest.raises(error):
            trainer.train()
        trainer.writer.close.assert_called_once()
    for name, logged in (("term", 3), ("nan", 5), ("eval", None)):  # the NaN step too
        events = EventAccumulator(str(tmp_path / name / "tensorboard"))
        events.Reload()
        steps = [event.step for event in events.Scalars("train_iter/total")]
        assert steps and steps == list(range(1, len(steps) + 1)), name
        if logged is not None:
            assert len(steps) == logged, name


@pytest.mark.parametrize(("best_metric", "best_epoch"), [("mAP", 3), ("rank1", 2)])
def test_several_test_sets_get_their_own_tags_and_entries_and_best_is_their_mean(
    tmp_path: Path, best_metric: str, best_epoch: int
) -> None:
    """Evaluations after epochs 2 and 3: mean mAP 0.3 then 0.4, mean rank-1 0.55 then 0.35."""
    results = iter(
        [
            {"a": {"rank1": 0.9, "mAP": 0.5}, "b": {"rank1": 0.2, "mAP": 0.1}},
            {"a": {"rank1": 0.3, "mAP": 0.2}, "b": {"rank1": 0.4, "mAP": 0.6}},
        ]
    )
    trainer = _trainer(tmp_path, evaluate=lambda: next(results), best_metric=best_metric)
    final = {"a": {"rank1": 0.3, "mAP": 0.2}, "b": {"rank1": 0.4, "mAP": 0.6}}
    assert trainer.train() == final
    assert json.loads((tmp_path / "metrics.json").read_text()) == final
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == best_epoch
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for name, values in (("a/mAP", [0.5, 0.2]), ("b/rank1", [0.2, 0.4])):
        scalars = events.Scalars(f"eval/{name}")
        assert [(e.step, e.value) for e in scalars] == [
            (2, pytest.approx(values[0])),
            (3, pytest.approx(values[1])),
        ]
    assert "eval/mAP" not in events.Tags()["scalars"]


def _snapshot(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}


def test_warmup_in_iterations_counts_steps_across_uneven_epochs(tmp_path: Path) -> None:
    """WARMUP_ITERS 14 from 0.1x: step i trains at 0.05 * (0.1 + 0.9 * i / 14), through
    epochs of 6 and 5 steps into the third, then at 0.05 (no epoch length converts it)."""
    schedule = ("SOLVER.WARMUP_ITERS", "14", "SOLVER.WARMUP_FACTOR", "0.1", "SOLVER.STEPS", "[]")
    trainer = _trainer(tmp_path, schedule=schedule)
    seen = _recording_lr(trainer)
    trainer.train()
    assert (seen[6][:2], seen[11][:2]) == ((1, 0), (2, 0))
    expected = [0.05 * (0.1 + 0.9 * min(step, 14) / 14) for step in range(len(seen))]
    assert [lr for _, _, lr in seen] == pytest.approx(expected, rel=1e-12)


def test_frozen_parts_stay_unchanged_for_freeze_iters_then_train(tmp_path: Path) -> None:
    """The first 7 steps leave the frozen embedding and BatchNorm (weights and running
    statistics) untouched, in eval mode, while the classifier trains; from step 8 on
    (mid-epoch) everything trains."""
    trainer = _trainer(tmp_path, freeze_iters=7, frozen=("embed", "neck"))
    model, run_step = trainer.model, trainer.run_step
    initial, states, modes = _snapshot(trainer), [], []

    def recording(images: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
        modes.append((model.embed.training, model.neck.training, model.classifier.training))
        values = run_step(images, pids)
        states.append(_snapshot(trainer))
        return values

    trainer.run_step = recording
    trainer.train()
    frozen = ["embed.weight", "embed.bias", "neck.weight", "neck.bias", "neck.running_mean"]
    moving = ["embed.weight", "neck.weight", "neck.running_mean"]  # embed.bias: BN cancels it
    previous = initial
    for step, state in enumerate(states):
        for name in frozen if step < 7 else []:
            assert torch.equal(state[name], initial[name]), (step, name)
        for name in ["classifier.weight"] + (moving if step >= 7 else []):
            assert not torch.equal(state[name], previous[name]), (step, name)
        previous = state
    assert modes == [(False, False, True)] * 7 + [(True, True, True)] * (len(modes) - 7)


def test_freezing_a_part_the_model_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(ReidError, match="cannot freeze 'backbone'.*parts: dropout, embed, neck"):
        _trainer(tmp_path, freeze_iters=5)


def test_clipping_steps_with_the_gradients_scaled_to_the_norm(tmp_path: Path) -> None:
    """One step by hand: the gradients' global L2 norm is above 0.05, so SGD's first step
    (momentum buffer = gradient) moves each weight by lr * g * 0.05 / norm."""
    max_norm, lr = 0.05, 0.05
    trainer = _trainer(tmp_path, clip_grad_norm=max_norm)
    images, pids, _ = next(iter(trainer.train_loader))
    trainer.model.train()
    before = copy.deepcopy(trainer.model)
    torch.manual_seed(1)  # the same dropout draws in both forwards
    trainer.run_step(images, pids)
    torch.manual_seed(1)
    loss = trainer.loss_fn(before(images), pids)["total"]
    grads = torch.autograd.grad(loss, list(before.parameters()))
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert norm > 2 * max_norm  # the clip acts
    stepped = zip(trainer.model.parameters(), before.parameters(), grads, strict=True)
    for after, start, grad in stepped:
        expected = start - lr * grad * max_norm / (norm + 1e-6)
        torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-8)


def test_per_parameter_clipping_scales_each_gradient_to_its_own_norm(tmp_path: Path) -> None:
    """FastReID's clipping: a parameter whose gradient norm is above 0.05 moves by
    lr * g * 0.05 / |g|, the others by lr * g, whatever the global norm."""
    max_norm, lr = 0.05, 0.05
    trainer = _trainer(tmp_path, clip_grad_norm=max_norm, clip_per_parameter=True)
    images, pids, _ = next(iter(trainer.train_loader))
    trainer.model.train()
    before = copy.deepcopy(trainer.model)
    torch.manual_seed(1)
    trainer.run_step(images, pids)
    torch.manual_seed(1)
    loss = trainer.loss_fn(before(images), pids)["total"]
    grads = torch.autograd.grad(loss, list(before.parameters()))
    norms = [float(g.norm()) for g in grads]
    assert min(norms) < max_norm < max(norms)  # some clipped, some not
    stepped = zip(trainer.model.parameters(), before.parameters(), grads, norms, strict=True)
    for after, start, grad, norm in stepped:
        scale = max_norm / (norm + 1e-6) if norm > max_norm else 1.0
        torch.testing.assert_close(after, start - lr * grad * scale, rtol=1e-5, atol=1e-8)


def test_clipping_acts_on_the_unscaled_gradients_of_a_loss_scaler(tmp_path: Path) -> None:
    """fp16's loss scaling (here a CPU GradScaler at 1024) changes nothing: the gradients
    are unscaled before their norm is clipped."""
    weights = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        trainer = _trainer(tmp_path / str(scaler is None), clip_grad_norm=0.05)
        trainer.scaler = scaler or trainer.scaler
        images, pids, _ = next(iter(trainer.train_loader))
        trainer.model.train()
        torch.manual_seed(1)
        trainer.run_step(images, pids)
        weights.append(_snapshot(trainer))
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-6, atol=1e-9)


def test_resuming_mid_warmup_and_mid_freeze_gives_the_uninterrupted_run(tmp_path: Path) -> None:
    """Stopped after 8 steps of a 10-iteration warmup and a 9-iteration freeze, with
    clipping: the resumed run ends with the uninterrupted run's weights and metrics."""
    options = {
        "schedule": ("SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.1"),
        "freeze_iters": 9,
        "frozen": ("embed",),
        "clip_grad_norm": 0.5,
        "log_period": 1,  # the stop comes at the iteration of the signal
    }
    whole = _trainer(tmp_path / "whole", **options)
    uninterrupted = (whole.train(), _snapshot(whole))
    stopping = _trainer(tmp_path / "stopped", _stopping_at(1, 1, signal.SIGTERM), **options)
    with pytest.raises(TrainingInterrupted):
        stopping.train()
    assert load_checkpoint(tmp_path / "stopped" / "last.pth")["global_step"] == 8
    resumed = _resume(tmp_path / "stopped", **options)
    assert resumed.freezing
    assert resumed.optimizer.param_groups[0]["lr"] < 0.05  # still warming up
    _assert_same_run(resumed, resumed.train(), uninterrupted)


# Tensor methods that read a value back to the host: on a GPU, each waits for the device.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "nonzero")


class HostReads:
    """Counts calls of :data:`HOST_READS` and boolean-mask indexing, while ``counting``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counting, self.calls = False, []
        for name in HOST_READS:
            monkeypatch.setattr(
                torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name))
            )
        getitem = torch.Tensor.__getitem__

        def indexed(tensor, key):
            keys = key if isinstance(key, tuple) else (key,)
            if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
                self._count("boolean indexing")
            return getitem(tensor, key)

        monkeypatch.setattr(torch.Tensor, "__getitem__", indexed)

    def _count(self, name: str) -> None:
        if self.counting:
            self.calls.append(name)

    def _counted(self, name: str, method):
        def wrapper(*args, **kwargs):
            self._count(name)
            return method(*args, **kwargs)

        return wrapper

    def around(self, method):
        """``method`` with counting on while it runs."""

        def wrapper(*args, **kwargs):
            self.counting = True
            try:
                return method(*args, **kwargs)
            finally:
                self.counting = False

        return wrapper


def test_the_host_reads_the_device_once_per_logging_period(monkeypatch, tmp_path: Path) -> None:
    """The training step (forward, triplet + cross-entropy, backward, step) reads nothing
    back; each logging period reads its values once."""
    trainer = _trainer(tmp_path, log_period=4)
    reads = HostReads(monkeypatch)
    steps, periods = [], []
    run_step, read_period = trainer.run_step, trainer._read_period

    def counted_step(*args):
        before = len(reads.calls)
        values = reads.around(run_step)(*args)
        steps.append(reads.calls[before:])
        return values

    def counted_read(period):
        before = len(reads.calls)
        result = reads.around(read_period)(period)
        periods.append((len(period), reads.calls[before:]))
        return result

    monkeypatch.setattr(trainer, "run_step", counted_step)
    monkeypatch.setattr(trainer, "_read_period", counted_read)
    trainer.train()
    sampler = trainer.train_loader.batch_sampler
    lengths = [len(sampler._batches(epoch)) for epoch in range(MAX_EPOCHS)]
    assert len(steps) == sum(lengths) and not any(steps)
    expected = [min(4, length - start) for length in lengths for start in range(0, length, 4)]
    assert [size for size, _ in periods] == expected
    assert all(calls == ["tolist"] for _, calls in periods)


def test_the_logging_period_does_not_change_training(tmp_path: Path) -> None:
    every = _trainer(tmp_path / "every", log_period=1)
    metrics = every.train()
    grouped = _trainer(tmp_path / "grouped", log_period=4)
    _assert_same_run(grouped, grouped.train(), (metrics, _snapshot(every)))
    # The epochs' logged means too: the same values summed in the same order.
    assert grouped.history == every.history


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_nothing_but_the_period_read_synchronises(monkeypatch, tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, log_period=4)
    trainer.model.cuda()
    trainer.loss_fn.cuda()
    trainer.device = torch.device("cuda")
    trainer.net = trainer.model
    read_period = trainer._read_period

    def allowed_read(period):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return read_period(period)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(trainer, "_read_period", allowed_read)
    trainer.evaluate = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_one_epoch(0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
