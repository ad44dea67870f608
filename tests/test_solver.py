import math

import pytest
import torch
from torch import nn

from reid.config import load_cfg
from reid.errors import ReidError
from reid.solver import build_scheduler, make_optimizer, warmup_factor


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.01), (5, 0.01 + 0.99 * 0.5), (10, 1.0), (39.9, 1.0), (40, 0.1), (69, 0.1), (70, 0.01)],
)
def test_bag_of_tricks_warmup_multistep(epoch: float, expected: float) -> None:
    factor = warmup_factor(epoch, 10, 0.01, "multistep", steps=(40, 70), gamma=0.1)
    assert factor == pytest.approx(expected)


def test_cosine_after_warmup() -> None:
    assert warmup_factor(2, 2, 0.1, "cosine", max_epochs=12) == pytest.approx(1.0)
    assert warmup_factor(7, 2, 0.1, "cosine", max_epochs=12) == pytest.approx(0.5)
    assert warmup_factor(12, 2, 0.1, "cosine", max_epochs=12) == pytest.approx(0.0, abs=1e-12)
    assert warmup_factor(4.5, 2, 0.1, "cosine", max_epochs=12) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 2.5 / 10))
    )


def test_scheduler_sets_the_rate_of_a_fractional_epoch() -> None:
    cfg = load_cfg(opts=["SOLVER.WARMUP_EPOCHS", "2", "SOLVER.STEPS", "[3]"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(cfg, optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # set when built
    for position, expected in [(0.25, 0.01 + 0.99 * 0.125), (2.0, 1.0), (2.999, 1.0), (3.0, 0.1)]:
        scheduler.step_to(position)
        assert scheduler.get_last_lr() == pytest.approx([expected], rel=1e-12)
    restored = build_scheduler(cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0))
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == pytest.approx([0.1])


def test_cosine_never_passes_its_end() -> None:
    assert warmup_factor(13.5, 2, 0.1, "cosine", max_epochs=12) == 0.0


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
