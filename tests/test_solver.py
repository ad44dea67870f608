import math

import pytest
import torch
from torch import nn

from reid.config import load_cfg
from reid.errors import ReidError
from reid.solver import LearningRateSchedule, build_scheduler, make_optimizer


def _factor(position: float, iteration: int = 0, **schedule) -> float:
    """The learning-rate multiplier of a group of base rate 1."""
    return LearningRateSchedule(**schedule)(1.0, position, iteration)


BAG_OF_TRICKS = {"warmup_epochs": 10, "warmup_start": 0.01, "steps": (40, 70), "gamma": 0.1}


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.01), (5, 0.01 + 0.99 * 0.5), (10, 1.0), (39.9, 1.0), (40, 0.1), (69, 0.1), (70, 0.01)],
)
def test_bag_of_tricks_warmup_multistep(epoch: float, expected: float) -> None:
    assert _factor(epoch, **BAG_OF_TRICKS) == pytest.approx(expected)
    # the iteration count plays no part without WARMUP_ITERS
    assert _factor(epoch, 10**6, **BAG_OF_TRICKS) == pytest.approx(expected)


def test_cosine_after_warmup() -> None:
    cosine = {"scheduler": "cosine", "warmup_epochs": 2, "warmup_start": 0.1, "max_epochs": 12}
    assert _factor(2, **cosine) == pytest.approx(1.0)
    assert _factor(7, **cosine) == pytest.approx(0.5)
    assert _factor(12, **cosine) == pytest.approx(0.0, abs=1e-12)
    assert _factor(4.5, **cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2.5 / 10)))


def test_scheduler_sets_the_rate_of_a_fractional_epoch() -> None:
    cfg = load_cfg(opts=["SOLVER.WARMUP_EPOCHS", "2", "SOLVER.STEPS", "[3]"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # set when built
    for position, expected in [(0.25, 0.01 + 0.99 * 0.125), (2.0, 1.0), (2.999, 1.0), (3.0, 0.1)]:
        scheduler.step_to(position, 7)
        assert scheduler.get_last_lr() == pytest.approx([expected], rel=1e-12)
    restored = build_scheduler(cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == pytest.approx([0.1])
    assert scheduler.state_dict() == {"position": 3.0, "iteration": 7}


def test_cosine_never_passes_its_end() -> None:
    assert _factor(13.5, scheduler="cosine", warmup_epochs=2, max_epochs=12) == 0.0


@pytest.mark.parametrize("position", [0, 12.5, 30, 30.001, 37.5, 45, 52.25, 59.9, 60, 61])
def test_delayed_cosine_is_flat_then_falls_to_eta_min(position: float) -> None:
    """FastReID's SBS schedule: flat for DELAY_EPOCHS 30, then a cosine over the remaining
    MAX_EPOCHS - DELAY_EPOCHS = 30 epochs from BASE_LR down to ETA_MIN_LR, written here
    from that definition."""
    base, eta, delay, end = 3.5e-4, 7e-7, 30, 60
    if position <= delay:
        expected = base
    elif position >= end:
        expected = eta
    else:
        done = (position - delay) / (end - delay)
        expected = eta + (base - eta) * (1 + math.cos(math.pi * done)) / 2
    schedule = LearningRateSchedule(
        scheduler="cosine", max_epochs=end, delay_epochs=delay, eta_min_lr=eta
    )
    assert schedule(base, position, 10**5) == pytest.approx(expected, rel=1e-12)


def test_eta_min_is_the_same_absolute_rate_for_every_group() -> None:
    """Biases at twice the rate (BIAS_LR_FACTOR 2) and weights end the cosine at the same
    ETA_MIN_LR, as torch's CosineAnnealingLR(eta_min) does; halfway they are halfway."""
    cfg = load_cfg(
        opts=[
            "SOLVER.SCHEDULER", "cosine", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.MAX_EPOCHS", "10",
            "SOLVER.DELAY_EPOCHS", "4", "SOLVER.ETA_MIN_LR", "1e-4", "SOLVER.BIAS_LR_FACTOR", "2",
        ]
    )  # fmt: skip
    model = nn.Linear(2, 2)
    optimizer = make_optimizer(list(model.named_parameters()), lr=1e-2, bias_lr_factor=2.0)
    scheduler = build_scheduler(cfg, optimizer)
    assert scheduler.get_last_lr() == pytest.approx([1e-2, 2e-2], rel=1e-12)
    scheduler.step_to(7.0, 100)
    assert scheduler.get_last_lr() == pytest.approx([(1e-2 + 1e-4) / 2, (2e-2 + 1e-4) / 2])
    scheduler.step_to(10.0, 200)
    assert scheduler.get_last_lr() == pytest.approx([1e-4, 1e-4], rel=1e-12)


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [(0, 0.1), (1, 0.1 + 0.9 / 2000), (1000, 0.55), (1999, 0.1 + 0.9 * 1999 / 2000), (2000, 1.0)],
)
def test_warmup_in_iterations_is_linear_from_the_factor(iteration: int, expected: float) -> None:
    """FastReID's linear warmup: factor * (1 - a) + a with a = iteration / WARMUP_ITERS,
    whatever the position in epochs."""
    cfg = load_cfg(
        opts=["SOLVER.WARMUP_EPOCHS", "0", "SOLVER.WARMUP_ITERS", "2000",
              "SOLVER.WARMUP_FACTOR", "0.1", "SOLVER.STEPS", "[]"]
    )  # fmt: skip
    scheduler = build_scheduler(cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5))
    for position in (0.0, 3.7, 11.0):
        scheduler.step_to(position, iteration)
        assert scheduler.get_last_lr() == pytest.approx([0.5 * expected], rel=1e-12)


def test_the_sbs_schedule_warms_up_in_iterations_then_holds_then_cosines() -> None:
    """configs/market_sbs.yml's solver keys: 2000 warmup iterations from 0.1x, flat to epoch
    30, cosine to 7e-7 at epoch 60."""
    cfg = load_cfg(
        opts=[
            "SOLVER.SCHEDULER", "cosine", "SOLVER.MAX_EPOCHS", "60", "SOLVER.DELAY_EPOCHS", "30",
            "SOLVER.ETA_MIN_LR", "7e-7", "SOLVER.WARMUP_EPOCHS", "0",
            "SOLVER.WARMUP_ITERS", "2000", "SOLVER.WARMUP_FACTOR", "0.1",
        ]
    )  # fmt: skip
    scheduler = build_scheduler(cfg, torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=3.5e-4))
    assert scheduler.get_last_lr() == pytest.approx([3.5e-5])
    for position, iteration, expected in [
        (2.5, 500, 3.5e-4 * (0.1 + 0.9 * 0.25)),
        (10.0, 2000, 3.5e-4),
        (30.0, 6000, 3.5e-4),
        (45.0, 9000, 7e-7 + (3.5e-4 - 7e-7) / 2),
        (60.0, 12000, 7e-7),
    ]:
        scheduler.step_to(position, iteration)
        assert scheduler.get_last_lr() == pytest.approx([expected], rel=1e-12)


def test_unknown_scheduler_is_named() -> None:
    with pytest.raises(ReidError, match="unknown scheduler 'linear'; expected one of multistep"):
        LearningRateSchedule(scheduler="linear")


def test_parameter_groups_bias_lr_and_decay_and_frozen_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model[1].bias.requires_grad_(False)  # a BNNeck-style frozen bias
    optimizer = make_optimizer(
        list(model.named_parameters()),
        name="sgd",
        lr=0.1,
        weight_decay=5e-4,
        bias_lr_factor=2.0,
        weight_decay_bias=0.0,
    )
    weights, biases = optimizer.param_groups
    assert {id(p) for p in weights["params"]} == {id(model[0].weight), id(model[1].weight)}
    assert [id(p) for p in biases["params"]] == [id(model[0].bias)]
    assert (weights["lr"], weights["weight_decay"]) == (0.1, 5e-4)
    assert (biases["lr"], biases["weight_decay"]) == (0.2, 0.0)
    assert isinstance(optimizer, torch.optim.SGD)
    adam = make_optimizer(list(model.named_parameters()), name="adam")
    assert isinstance(adam, torch.optim.Adam)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_are_built_as_named(name: str) -> None:
    """One step by hand: AdamW decays the weight apart from the gradient (decoupled);
    Adam adds the decay to the gradient; SGD steps against it."""
    lr, decay, p0, g = 0.1, 0.5, 2.0, 0.3
    weight = nn.Parameter(torch.tensor([p0], dtype=torch.float64))
    optimizer = make_optimizer([("w", weight)], name=name, lr=lr, weight_decay=decay)
    weight.grad = torch.tensor([g], dtype=torch.float64)
    optimizer.step()
    eps = 1e-8
    expected = {
        "adamw": p0 * (1 - lr * decay) - lr * g / (abs(g) + eps),
        "adam": p0 - lr * (g + decay * p0) / (abs(g + decay * p0) + eps),
        "sgd": p0 - lr * (g + decay * p0),
    }[name]
    assert weight.item() == pytest.approx(expected, rel=1e-12)
    assert type(optimizer).__name__.lower() == name


def test_unknown_optimizer_is_one_line() -> None:
    with pytest.raises(ReidError, match="unknown optimizer 'adamx'; expected one of adam, adamw"):
        make_optimizer([("w", nn.Parameter(torch.zeros(1)))], name="adamx")
