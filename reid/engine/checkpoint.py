"""Atomic checkpoint files and strict, clearly reported weight loading."""

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.models import ReidModel, build_model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` atomically: a temp file in the same folder, then rename.

    A run killed mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a checkpoint onto the CPU; a missing or unreadable file is a ReidError."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise ReidError(f"cannot read checkpoint {path}: {err}".splitlines()[0]) from None
    if not isinstance(state, dict) or "model" not in state:
        raise ReidError(f"{path} is not a reid checkpoint (no 'model' entry)")
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
