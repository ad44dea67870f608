"""Seeding and device selection."""

import random

import numpy as np
import torch

from reid.errors import ReidError


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    ``"auto"`` picks cuda when available, else cpu.

    Raises:
        ReidError: an unknown name, or a device this machine does not have.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    expected = "expected auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ReidError(f"unknown device {name!r}; {expected}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ReidError(
                f"device {name!r} asked for but CUDA is not available here; use auto or cpu"
            )
        if device.index is not None and device.index >= count:
            raise ReidError(
                f"device {name!r} does not exist: this machine has {count} CUDA devices"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ReidError(f"device {name!r} asked for but MPS is not available; use auto or cpu")
    elif device.type != "cpu":
        raise ReidError(f"unsupported device {name!r}; {expected}")
    return device
