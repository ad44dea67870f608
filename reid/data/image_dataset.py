"""The one torch Dataset: opens the images that dataset records point to."""

from collections.abc import Callable, Sequence

import torch
from PIL import Image

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
            path, pid, camid = self.records[item.index]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item.seed)
                return self.transform(read_image(path)), pid, camid
        path, pid, camid = self.records[item]
        return self.transform(read_image(path)), pid, camid


def read_image(path: str) -> Image.Image:
    """Opens an image as RGB; a missing or corrupt file is a DatasetError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None
