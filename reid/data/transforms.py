"""Image transforms: the Bag-of-Tricks training recipe and the test resize."""

import functools
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from reid.data.batch_augment import ERASE_RATIO, ERASE_SCALE


def build_train_transform(
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    flip_prob: float = 0.5,
    padding: int = 10,
    erase_prob: float = 0.5,
    autoaugment_prob: float = 0.0,
    resize: bool = True,
) -> v2.Compose:
    """AutoAugment, resize, random flip, pad + random crop, normalise, random erasing.

    Each augmentation is left out when its probability / padding is 0. Erased
    regions are filled with 0, the mean pixel after normalisation. AutoAugment
    (torchvision's ImageNet policy) sees the image as loaded, before the resize, as in
    FastReID. Every random draw comes from torch's global generator, which
    :class:`reid.data.ImageDataset` seeds per sample.

    Args:
        size: output ``[H, W]``.
        autoaugment_prob: probability of AutoAugment per image.
        resize: resize to ``size`` first; False for images already at ``size`` (the
            decoded-image cache), which then may be uint8 tensors (3, H, W) too.

    Returns:
        A transform from a PIL image to a float tensor (3, H, W).
    """
    steps: list[torch.nn.Module] = []
    if autoaugment_prob > 0:
        autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
        # Always on: no coin drawn, so the draws are exactly torchvision's AutoAugment's.
        steps.append(
            autoaugment
            if autoaugment_prob >= 1
            else v2.RandomApply([autoaugment], autoaugment_prob)
        )
    if resize:
        steps.append(v2.Resize(tuple(size)))
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    if padding > 0:
        steps += [v2.Pad(padding), v2.RandomCrop(tuple(size))]
    steps += _to_normalized_tensor(mean, std)
    if erase_prob > 0:
        steps.append(v2.RandomErasing(erase_prob, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0))
    return v2.Compose(steps)


def build_test_transform(
    size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Resize (:func:`resize_for_test`) and normalise: a PIL image to a float tensor (3, H, W)."""
    resize = v2.Lambda(functools.partial(resize_for_test, size=tuple(size)))
    return v2.Compose([resize, *_to_normalized_tensor(mean, std)])


def resize_for_test(image: Image.Image, size: Sequence[int]) -> Image.Image:
    """The test-time resize to ``[H, W]``: Pillow's bilinear (antialiased) filter.

    The one resize of evaluation, :class:`reid.FeatureExtractor` (PyTorch and ONNX
    Runtime alike) and the parity check of exported models, so that the same picture
    gives the same pixels in all of them.
    """
    height, width = size
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[torch.nn.Module]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
