"""Probing a backbone's feature map and removing its last downsampling (last stride 1),
for families that wrap models they did not write (``torchvision/``, ``timm/``)."""

import torch
from torch import nn

from reid.errors import ReidError

# Input used to discover a model's channels and strides (H, W).
PROBE_SIZE = (128, 64)


def probe(body: nn.Module) -> tuple[int, int, int]:
    """``(C, h, w)`` of the map ``body`` gives for a ``PROBE_SIZE`` input (leaves it in
    eval mode)."""
    with torch.no_grad():
        fmap = body.eval()(torch.zeros(1, 3, *PROBE_SIZE))
    if fmap.dim() != 4:
        raise ReidError(f"expected a (B, C, h, w) feature map, got shape {tuple(fmap.shape)}")
    return tuple(fmap.shape[1:])


def remove_last_downsampling(body: nn.Module, name: str, size: tuple[int, int, int]) -> None:
    """Sets stride 1 on the layers that produce the final resolution from a larger one.

    A stride-1 convolution keeps its kernel; a pooling whose kernel equals its stride
    becomes ``1x1``.

    Args:
        body: maps images to the final map.
        name: the backbone's name, for messages.
        size: ``probe(body)`` before the change.

    Raises:
        ReidError: no strided convolution or pooling makes the final resolution, or
            removing its stride does not enlarge the map.
    """
    final = size[1:]
    strided = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    found: list[nn.Module] = []

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if tuple(output.shape[2:]) == final and inputs[0].shape[2] > output.shape[2]:
            found.append(module)

    hooks = [m.register_forward_hook(record) for m in body.modules() if isinstance(m, strided)]
    probe(body)
    for hook in hooks:
        hook.remove()
    if not found:
        raise ReidError(
            f"{name} has no strided convolution or pooling at its last downsampling to set "
            "to 1; use MODEL.LAST_STRIDE 2"
        )
    for module in found:
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            continue
        # A pooling that only downsamples (kernel = stride, e.g. ResNet-D's average-pool
        # shortcut) becomes the identity, so it keeps the size of its parallel branch.
        if _pair(module.kernel_size) == _pair(module.stride):
            module.kernel_size, module.padding = 1, 0
        module.stride = 1
    if probe(body)[1] <= final[0]:
        raise ReidError(f"{name}: removing the last stride did not enlarge the feature map")


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
