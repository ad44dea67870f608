"""Image transforms: the Bag-of-Tricks training recipe and the test resize."""

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def build_train_transform(
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    flip_prob: float = 0.5,
    padding: int = 10,
    erase_prob: float = 0.5,
) -> v2.Compose:
    """Resize, random flip, pad + random crop, normalise, random erasing.

    Each augmentation is left out when its probability / padding is 0. Erased
    regions are filled with 0, the mean pixel after normalisation.

    Args:
        size: output ``[H, W]``.

    Returns:
        A transform from a PIL image to a float tensor (3, H, W).
    """
    steps: list[torch.nn.Module] = [v2.Resize(tuple(size))]
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    if padding > 0:
        steps += [v2.Pad(padding), v2.RandomCrop(tuple(size))]
    steps += _to_normalized_tensor(mean, std)
    if erase_prob > 0:
        steps.append(v2.RandomErasing(erase_prob, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=0))
    return v2.Compose(steps)


def build_test_transform(
    size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Resize and normalise: a PIL image to a float tensor (3, H, W)."""
    return v2.Compose([v2.Resize(tuple(size)), *_to_normalized_tensor(mean, std)])


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[torch.nn.Module]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
