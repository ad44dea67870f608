"""Image transforms: the Bag-of-Tricks training recipe and the test resize."""

import functools
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from reid.data.augment import AugmentSpec, augment_image, draw_values


def build_train_transform(
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    flip_prob: float = 0.5,
    padding: int = 10,
    erase_prob: float = 0.5,
    autoaugment_prob: float = 0.0,
    resize: bool = True,
) -> "TrainTransform":
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
    autoaugment = None
    if autoaugment_prob > 0:
        policy = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
        # Always on: no coin drawn, so the draws are exactly torchvision's AutoAugment's.
        always = autoaugment_prob >= 1
        autoaugment = policy if always else v2.RandomApply([policy], autoaugment_prob)
    spec = AugmentSpec(tuple(size), flip_prob, padding, erase_prob, tuple(mean), tuple(std))
    return TrainTransform(spec, resize, autoaugment)


class TrainTransform:
    """The training transform of :func:`build_train_transform`.

    It is torchvision's v2 pipeline (``RandomHorizontalFlip``, ``Pad`` + ``RandomCrop``,
    ``ToImage``, ``ToDtype``, ``Normalize``, ``RandomErasing``) to the bit, with the same
    draws (:func:`reid.data.augment.draw_values`), but applied by
    :func:`reid.data.augment.augment_image` in a handful of tensor operations: at ReID
    image sizes torchvision's per-step dispatch cost more than the pixel work.

    Attributes:
        spec: the augmentation after the resize.
        resize: whether the image is resized to ``spec.size`` first.
        autoaugment: AutoAugment (in a ``RandomApply`` when not always on), or None.
    """

    def __init__(self, spec: AugmentSpec, resize: bool, autoaugment: nn.Module | None) -> None:
        self.spec, self.resize, self.autoaugment = spec, resize, autoaugment
        self._resize = v2.Resize(spec.size)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """An RGB PIL image (or uint8 (3, H, W) at the size, when not resizing) -> the
        augmented float tensor (3, H, W)."""
        if self.autoaugment is not None:
            image = self.autoaugment(image)
        if self.resize:
            image = self._resize(image)
        pixels = TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        return augment_image(pixels, draw_values(self.spec), self.spec)


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
