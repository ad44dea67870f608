"""The training augmentation applied to a whole batch on the training device.

With ``INPUT.BATCH_AUGMENT`` the loader only decodes and resizes each image (uint8,
(3, H, W)) and, in the same per-sample seeded context as the per-image transform
(:class:`reid.data.ImageDataset`), draws that sample's augmentation parameters with
:class:`BatchParams`. The trainer then runs :func:`augment_batch`: flip, pad + crop,
scaling to [0, 1], normalisation and random erasing as a handful of tensor operations
over the batch. Both paths give the same pixels for the same sample seed: the draws
are the very calls :func:`reid.data.transforms.build_train_transform` makes after its
resize, in the same order.
"""

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from reid.errors import InputError

# Random erasing's box: its area as a fraction of the image, and its height / width.
# build_train_transform's RandomErasing uses the same values.
ERASE_SCALE = (0.02, 0.4)
ERASE_RATIO = (0.3, 3.33)

# torchvision's RandomErasing tries this many boxes, then erases nothing.
_ERASE_ATTEMPTS = 10

# The columns of a params row (see draw_params).
PARAM_NAMES = ("flip", "top", "left", "erase", "i", "j", "h", "w")


@dataclass(frozen=True)
class AugmentSpec:
    """What :func:`build_train_transform` does after its resize, as plain values.

    Each augmentation is off when its probability / padding is 0, as there. Erased
    boxes are filled with 0, the mean pixel after normalisation.

    Args:
        size: ``(H, W)`` of the images, before and after the augmentation.
        flip_prob: probability of a horizontal flip.
        padding: zero padding on each side before the random ``(H, W)`` crop.
        erase_prob: probability of random erasing.
        mean: per-channel mean of the [0, 1] pixels, subtracted.
        std: per-channel standard deviation, divided by.
        erase_scale: ``(min, max)`` erased area as a fraction of ``H * W``.
        erase_ratio: ``(min, max)`` height / width of the erased box.
    """

    size: tuple[int, int]
    flip_prob: float
    padding: int
    erase_prob: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    erase_scale: tuple[float, float] = field(default=ERASE_SCALE)
    erase_ratio: tuple[float, float] = field(default=ERASE_RATIO)

    def __post_init__(self) -> None:
        # Configs hand over lists; tuples keep the spec hashable and its repr stable.
        size = tuple(int(v) for v in self.size)
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"AugmentSpec size {list(self.size)} is not a positive [H, W]")
        for name in ("flip_prob", "erase_prob"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise InputError(f"AugmentSpec {name} {value} is outside [0, 1]")
            object.__setattr__(self, name, value)
        if int(self.padding) != self.padding or self.padding < 0:
            raise InputError(f"AugmentSpec padding {self.padding} is not an integer >= 0")
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise InputError(
                f"AugmentSpec mean {list(mean)} / std {list(std)} need 3 values each (RGB)"
            )
        if 0.0 in std:
            raise InputError(f"AugmentSpec std {list(std)} has a zero: division by zero")
        scale = tuple(float(v) for v in self.erase_scale)
        if len(scale) != 2 or not 0.0 <= scale[0] <= scale[1] <= 1.0:
            raise InputError(f"AugmentSpec erase_scale {list(scale)} is not 0 <= min <= max <= 1")
        ratio = tuple(float(v) for v in self.erase_ratio)
        if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
            raise InputError(f"AugmentSpec erase_ratio {list(ratio)} is not 0 < min <= max")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "padding", int(self.padding))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "erase_scale", scale)
        object.__setattr__(self, "erase_ratio", ratio)


def draw_params(spec: AugmentSpec) -> torch.Tensor:
    """One sample's augmentation parameters, drawn from torch's global generator.

    The draws are torchvision's own (v2 ``RandomHorizontalFlip``, ``RandomCrop`` of the
    padded image, ``RandomErasing`` with a constant fill), call for call, so seeding the
    generator with a sample's seed gives the same augmentation as the per-image
    transform (and leaves the generator in the same state).

    Returns:
        int64 ``(8,)``: ``[flip, top, left, erase, i, j, h, w]`` (:data:`PARAM_NAMES`):
        flip 0/1; the crop's top-left corner in the padded image (0, 0 without
        padding); erase 0/1 and the erased box's top, left, height and width in the
        output (all 0 when nothing is erased).
    """
    return torch.tensor(draw_values(spec), dtype=torch.int64)


def draw_values(spec: AugmentSpec) -> tuple[int, ...]:
    """:func:`draw_params` as a tuple of ints (no tensor to build and read back)."""
    height, width = spec.size
    # _RandomApplyTransform skips when `torch.rand(1) >= p`; no coin when the step is absent.
    flip = spec.flip_prob > 0 and bool(torch.rand(1) < spec.flip_prob)
    top = left = 0
    if spec.padding > 0:
        # The padded image is larger in both directions, so RandomCrop draws both offsets.
        top = int(torch.randint(0, 2 * spec.padding + 1, size=()))
        left = int(torch.randint(0, 2 * spec.padding + 1, size=()))
    box = None
    if spec.erase_prob > 0 and bool(torch.rand(1) < spec.erase_prob):
        box = _draw_erase_box(height, width, spec.erase_scale, spec.erase_ratio)
    erase = box is not None
    i, j, h, w = box if erase else (0, 0, 0, 0)
    return int(flip), top, left, int(erase), i, j, h, w


def _draw_erase_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int] | None:
    """RandomErasing.make_params: ``(i, j, h, w)``, or None when no box fits."""
    area = height * width
    log_ratio = _log_ratio(ratio)
    for _ in range(_ERASE_ATTEMPTS):
        # torch.empty(1) in the default dtype, like torchvision: the same values even
        # under torch.set_default_dtype(torch.float64).
        erase_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if not (h < height and w < width):
            continue
        i = int(torch.randint(0, height - h + 1, size=(1,)).item())
        j = int(torch.randint(0, width - w + 1, size=(1,)).item())
        return i, j, h, w
    return None


@functools.lru_cache(maxsize=8)
def _channel_stats(mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 CPU ``(3, 1, 1)`` tensors of the statistics, made once (read, never written)."""
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


@functools.lru_cache(maxsize=8)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    # torchvision takes the log in the default dtype (float32), not in double: bounds
    # computed with math.log would shift the rounding of a rare h or w.
    log_ratio = torch.log(torch.tensor(ratio))
    return float(log_ratio[0]), float(log_ratio[1])


def augment_image(
    pixels: torch.Tensor, params: torch.Tensor | Sequence[int], spec: AugmentSpec
) -> torch.Tensor:
    """Flip, pad + crop, scale to [0, 1], normalise and erase one image: the per-image
    path, with torchvision's pixel operations (exact ones: a mirror, zero padding, a
    crop) and its float operations, in its order, so the result is torchvision's to the
    bit.

    Args:
        pixels: uint8 ``(3, H, W)``, ``(H, W) == spec.size``.
        params: int64 ``(8,)``, a row of :func:`draw_params`, or its
            :func:`draw_values`.
        spec: the augmentation the params were drawn for.

    Returns:
        float32 ``(3, H, W)``.
    """
    values = params.tolist() if isinstance(params, torch.Tensor) else params
    flip, top, left, erase, i, j, h, w = values
    height, width = spec.size
    if flip:
        pixels = pixels.flip(-1)
    if spec.padding:
        pad = spec.padding
        padded = pixels.new_zeros((3, height + 2 * pad, width + 2 * pad))
        padded[:, pad : pad + height, pad : pad + width] = pixels
        pixels = padded[:, top : top + height, left : left + width]
    mean, std = _channel_stats(spec.mean, spec.std)
    out = pixels.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
    if erase:
        out[:, i : i + h, j : j + w] = 0.0
    return out


def augment_batch(images: torch.Tensor, params: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """Flip, pad + crop, scale to [0, 1], normalise and erase a batch, all at once.

    Equal to the per-image transform (``build_train_transform(..., resize=False)``) of
    each image under the seed its params were drawn with; no loop over the samples.

    Args:
        images: uint8 ``(B, 3, H, W)``, ``(H, W) == spec.size``.
        params: int64 ``(B, 8)`` rows of :func:`draw_params`, on the device of ``images``.
        spec: the augmentation the params were drawn for.

    Returns:
        float32 ``(B, 3, H, W)`` on the device of ``images``.

    Raises:
        InputError: a wrong dtype, shape or device of ``images`` or ``params``.
    """
    _check_batch(images, params, spec)
    height, width = spec.size
    pad = spec.padding
    device = images.device
    flip, top, left, erase, box_top, box_left, box_h, box_w = params.unbind(dim=1)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)

    # Where each output pixel comes from in its unpadded image: the crop starts at
    # (top, left) of the image padded by ``pad``, and the flip, which comes before the
    # padding, mirrors the column.
    src_rows = top[:, None] + rows - pad  # (B, H)
    src_cols = left[:, None] + cols - pad  # (B, W)
    src_cols = torch.where(flip[:, None].bool(), width - 1 - src_cols, src_cols)
    # One gather of those places, shared by the three channels (an expanded index, not a
    # copy): on a CPU ten times faster than indexing with four broadcast index tensors,
    # and no padded copy of the batch is made.
    count = images.shape[0]
    places = src_rows.clamp(0, height - 1)[:, :, None] * width
    places = (places + src_cols.clamp(0, width - 1)[:, None, :]).view(count, 1, -1)
    crops = images.reshape(count, 3, -1).gather(2, places.expand(count, 3, -1))
    crops = crops.view(count, 3, height, width)
    if pad:  # the padding's pixels are 0 before the normalisation, as Pad's zeros
        outside_rows = (src_rows < 0) | (src_rows >= height)
        outside_cols = (src_cols < 0) | (src_cols >= width)
        crops.masked_fill_((outside_rows[:, :, None] | outside_cols[:, None, :])[:, None], 0)

    # torchvision's ToDtype(scale=True) and Normalize, operation for operation, so the
    # floats match the per-image path bit for bit on the CPU.
    out = crops.to(torch.float32).mul_(1.0 / 255)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out = out.sub_(mean).div_(std)

    in_rows = (rows >= box_top[:, None]) & (rows < (box_top + box_h)[:, None])  # (B, H)
    in_cols = (cols >= box_left[:, None]) & (cols < (box_left + box_w)[:, None])  # (B, W)
    erased = erase.bool()[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]
    return out.masked_fill_(erased[:, None], 0.0)


def _check_batch(images: torch.Tensor, params: torch.Tensor, spec: AugmentSpec) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(
            f"augment_batch images are {images.dtype} {tuple(images.shape)}, "
            "expected uint8 (B, 3, H, W)"
        )
    if tuple(images.shape[2:]) != spec.size:
        raise InputError(
            f"augment_batch images are {tuple(images.shape[2:])} (H, W), "
            f"expected the spec's size {spec.size}"
        )
    if params.dtype != torch.int64 or tuple(params.shape) != (images.shape[0], len(PARAM_NAMES)):
        raise InputError(
            f"augment_batch params are {params.dtype} {tuple(params.shape)}, "
            f"expected int64 ({images.shape[0]}, {len(PARAM_NAMES)})"
        )
    if params.device != images.device:
        raise InputError(f"augment_batch params are on {params.device}, images on {images.device}")


class BatchParams:
    """The loader's per-image transform in batch mode: the image and its params.

    Called where the per-image transform would be (after any resize, inside
    :class:`reid.data.ImageDataset`'s seeded context), so the params are the draws that
    transform would make. Picklable, for DataLoader workers.

    Args:
        spec: the augmentation :func:`augment_batch` will apply.
    """

    def __init__(self, spec: AugmentSpec) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` (an RGB PIL image or uint8 (3, H, W), at ``spec.size``) as uint8
        ``(3, H, W)``, and its int64 ``(8,)`` params (:func:`draw_params`).

        Raises:
            InputError: the image is not 3-channel uint8 at ``spec.size``.
        """
        if isinstance(image, Image.Image):
            image = TF.pil_to_tensor(image)
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise InputError(
                f"BatchParams image is {image.dtype} {tuple(image.shape)}, "
                "expected an RGB PIL image or uint8 (3, H, W)"
            )
        if tuple(image.shape[1:]) != self.spec.size:
            raise InputError(
                f"BatchParams image is {tuple(image.shape[1:])} (H, W), expected "
                f"{self.spec.size}: resize before drawing the params"
            )
        return image, draw_params(self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"
