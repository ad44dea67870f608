"""The one torch Dataset: opens the images that dataset records point to."""

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from reid.data.datasets import DatasetError, Record
from reid.data.sampler import Sample


class ImageDataset(torch.utils.data.Dataset):
    """Loads ``records[i]`` as ``(image, pid, camid)``.

    Indexed by a :class:`reid.data.sampler.Sample` ``(index, seed)``, the random
    transforms draw from a generator seeded with ``seed`` alone, not from the global
    RNG of whichever worker process loads the item: the augmentation of an item is
    then the same whatever the number of workers or processes.

    Args:
        records: ``(path, pid, camid)`` records.
        transform: maps an RGB PIL image to a tensor (3, H, W).
    """

    def __init__(self, records: Sequence[Record], transform: Callable) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | Sample) -> tuple[torch.Tensor, int, int]:
        if isinstance(item, Sample):
            with torch.random.fork_rng(devices=[]):
                # The CPU generator alone: the transforms draw only from it, and
                # torch.manual_seed, which seeds every device's too, costs far more.
                torch.default_generator.manual_seed(item.seed)
                return self._item(item.index)
        return self._item(item)

    def _item(self, index: int) -> tuple[torch.Tensor, int, int]:
        _, pid, camid = self.records[index]
        return self.transform(self.image(index)), pid, camid

    def image(self, index: int) -> Image.Image | torch.Tensor:
        """Record ``index``'s image as the transform takes it: the file, opened."""
        return read_image(self.records[index].path)


def read_image(path: str) -> Image.Image:
    """Opens an image file as the RGB picture a viewer shows (see :func:`to_rgb`).

    Raises:
        DatasetError: the file is missing, empty, corrupt, not an image, or holds pixels
            that are not a picture (floating point); the message names the file.
    """
    try:
        if os.path.getsize(path) == 0:
            raise DatasetError(f"cannot read image {path}: the file is empty (0 bytes)")
        with Image.open(path) as image:
            return to_rgb(ImageOps.exif_transpose(image), str(path))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


# Pillow's own conversion of 16-bit pixels to 8 bits clips at 255 instead of scaling,
# turning a 16-bit PNG into a white picture; these modes are scaled by hand.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """An image as 8-bit RGB, whatever its mode (CMYK, palette, grayscale, 16-bit, alpha).

    16-bit grayscale (``I;16*``, and ``I`` as Pillow opens 16-bit PGM/TIFF) is scaled from
    0..65535 to 0..255, as a viewer shows it; alpha is dropped.

    Raises:
        DatasetError: floating-point pixels (mode ``F``), which have no fixed range.
    """
    if image.mode == "F":
        raise DatasetError(
            f"cannot read image {name}: it holds floating-point pixels (mode F), not a "
            "picture; expected 8- or 16-bit RGB or grayscale"
        )
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values / 257), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns when a transparent palette goes to RGB
    return image.convert("RGB")
