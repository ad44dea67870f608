"""The one torch Dataset: opens the images that dataset records point to."""

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from reid.data.datasets import DatasetError, Record


class ImageDataset(torch.utils.data.Dataset):
    """Loads ``records[i]`` as ``(image, pid, camid)``.

    Args:
        records: ``(path, pid, camid)`` records.
        transform: maps an RGB PIL image to a tensor (3, H, W).
    """

    def __init__(self, records: Sequence[Record], transform: Callable) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, pid, camid = self.records[index]
        return self.transform(read_image(path)), pid, camid


def read_image(path: str) -> Image.Image:
    """Opens an image as RGB; a missing or corrupt file is a DatasetError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None
