"""Loss terms compute in float32, also inside mixed-precision autocast."""

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _upcast(value: Any) -> Any:
    """``value`` in float32 if it is a half-precision tensor (fp16, bf16), else as is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.itemsize < 4:
        return value.float()
    return value


def float32_forward(forward: F) -> F:
    """Decorator: runs ``forward`` with autocast off and half-precision tensor arguments
    cast to float32 (float32 and float64 ones are left as they are).

    Training runs under autocast (``SOLVER.AMP``), which would compute the matrix
    products of the terms in bf16, an 8-bit mantissa: pairwise distances and cosines
    then move by ~1e-2 relative, which reorders the mined pairs and, multiplied by the
    margin classifiers' scale of 64, shifts their logits by whole units. The terms
    cost little next to the backbone, so they compute in float32. The gradient returns
    to the half-precision inputs through the cast.

    Example:
        >>> class MyTerm(nn.Module):
        ...     @float32_forward
        ...     def forward(self, feats, pids): ...
    """

    @functools.wraps(forward)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_upcast(value) for value in args)
        kwargs = {key: _upcast(value) for key, value in kwargs.items()}
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        no_autocast = (
            torch.autocast(device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            return forward(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
