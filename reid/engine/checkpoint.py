"""Atomic checkpoint files and strict, clearly reported weight loading."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.models import ReidModel, build_model
from reid.utils.io import atomic_write, safe_torch_load


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically (see :func:`reid.utils.io.atomic_write`).

    A run killed mid-write, or a full disk, leaves the previous file intact.

    Raises:
        ReidError: the file cannot be written; the message names it and the reason.
    """
    atomic_write(path, lambda file: torch.save(state, file))


def load_checkpoint(
    path: str | Path, required: Sequence[str] = ("model",), purpose: str = "load a model"
) -> dict[str, Any]:
    """Reads a checkpoint onto the CPU without letting it run code.

    Args:
        path: the ``.pth`` file.
        required: entries the caller needs, e.g. the training state to resume.
        purpose: what they are needed for, to complete the message when one is missing.

    Raises:
        ReidError: a missing, unreadable or possibly unsafe file (see
            :func:`reid.utils.io.safe_torch_load`), or one without a required entry.
    """
    state = safe_torch_load(path, "checkpoint")
    if not isinstance(state, dict):
        raise ReidError(f"{path} is not a reid checkpoint (it holds a {type(state).__name__})")
    if missing := [key for key in required if key not in state]:
        names = ", ".join(map(repr, missing))
        raise ReidError(
            f"{path} has no {names} entry, needed to {purpose}; is it a reid checkpoint?"
        )
    return state


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Loads a full state dict, requiring every key and shape to match.

    Raises:
        ReidError: naming the first mismatches, e.g. a checkpoint of another
            backbone or trained with another number of classes.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ReidError(f"{source} does not fit this model: {'; '.join(problems)}")
    model.load_state_dict(weights)


def checkpoint_num_classes(weights: dict[str, torch.Tensor], source: str) -> int:
    """Number of training identities of a checkpoint: rows of its classifier weight."""
    rows = [v.shape[0] for k, v in weights.items() if k.endswith("classifier.weight")]
    if len(rows) != 1:
        raise ReidError(f"{source} holds no classifier weight; is it a reid checkpoint?")
    return rows[0]


def build_trained_model(cfg: CfgNode, weights: str | Path) -> ReidModel:
    """The model of ``cfg`` with a checkpoint's weights, for evaluation or deployment.

    The classifier size comes from the checkpoint, so a model trained on one
    dataset can be evaluated on another; ``MODEL.PRETRAINED`` is skipped since
    every weight is overwritten.

    Raises:
        ReidError: a missing or unreadable checkpoint, or one of another model.
    """
    state = load_checkpoint(weights)
    num_classes = checkpoint_num_classes(state["model"], str(weights))
    model = build_model(cfg, num_classes=num_classes, load_pretrained_weights=False)
    load_model_weights(model, state["model"], source=str(weights))
    return model
