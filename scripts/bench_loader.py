"""Training images per second of the data path alone (no model), on one thread:

    python scripts/bench_loader.py [--images DIR] [--count 2048] [--size 256 128]

On Market-size crops (128x64 JPEGs of synthetic pedestrians, written to a temporary
folder, or the images under --images DIR) turned into training images at --size with the
Bag-of-Tricks recipe (flip 0.5, padding 10, random erasing 0.5), it times:

- decode: reading the files alone, the floor of any path that decodes every epoch;
- Bag-of-Tricks: its transform stack (torchvision v1 Resize, RandomHorizontalFlip, Pad,
  RandomCrop, ToTensor, Normalize and its own RandomErasing: up to 100 tries, the
  erased box filled with the mean), written here from its definition;
- per-image: reid's ImageDataset with build_train_transform (DATALOADER.CACHE none);
- cache ram: decoded and resized once (DATALOADER.CACHE ram), then augmented per image;
- cache ram + batch augment: DATALOADER.CACHE ram with INPUT.BATCH_AUGMENT, batches of
  64 collated: the loader's share alone (its augmentation runs on the training device),
  then with augment_batch run on this CPU too.

Each is the best of --repeats passes over --count samples (PK sample seeds), after a
warm-up; the cache is built before timing (its build time is printed).
"""

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T

from reid.data.datasets import Record
from reid.data.image_dataset import ImageDataset, read_image
from reid.data.sampler import Sample
from reid.data.synthetic import draw_pedestrians
from reid.data.transforms import build_train_transform
from reid.models.backbones import IMAGENET_STATS

FLIP, PADDING, ERASE = 0.5, 10, 0.5
BATCH = 64


class BagOfTricksErasing:
    """Random erasing as Bag-of-Tricks defines it (Zhong et al. 2017 with its defaults):
    with probability p, up to 100 tries of a box of area U(0.02, 0.4) of the image and
    aspect ratio U(0.3, 1 / 0.3), filled with the per-channel mean."""

    def __init__(self, probability: float, mean: tuple[float, float, float]) -> None:
        self.probability, self.mean = probability, mean

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) >= self.probability:
            return image
        _, height, width = image.shape
        for _ in range(100):
            area = random.uniform(0.02, 0.4) * height * width
            ratio = random.uniform(0.3, 1 / 0.3)
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if w < width and h < height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                for channel, value in enumerate(self.mean):
                    image[channel, top : top + h, left : left + w] = value
                return image
        return image


def bag_of_tricks(size: tuple[int, int]):
    """Bag-of-Tricks' training transform: PIL image -> normalised tensor."""
    mean, std = IMAGENET_STATS
    return T.Compose(
        [
            T.Resize(size),
            T.RandomHorizontalFlip(p=FLIP),
            T.Pad(PADDING),
            T.RandomCrop(size),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
            BagOfTricksErasing(ERASE, mean),
        ]
    )


def images_per_second(run, samples: list[Sample], repeats: int) -> float:
    """The best of ``repeats`` passes of ``run(samples)``, in samples per second."""
    run(samples[:BATCH])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(samples)
        times.append(time.perf_counter() - start)
    return len(samples) / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="a folder of person crops (default: synthetic)")
    parser.add_argument("--count", type=int, default=2048, help="samples per pass")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = tuple(args.size)
    mean, std = IMAGENET_STATS

    with tempfile.TemporaryDirectory() as folder:
        if args.images:
            paths = sorted(str(p) for p in Path(args.images).rglob("*.jpg"))
        else:
            paths = []
            for i, (_, image) in enumerate(draw_pedestrians(128, 4)):
                paths.append(f"{folder}/{i:04d}.jpg")
                image.save(paths[-1], quality=90)
        records = [Record(path, 0, 0) for path in paths]
        with Image.open(paths[0]) as first:
            source = f"{len(records)} images of {first.height}x{first.width}"
        rng = random.Random(0)
        samples = [
            Sample(rng.randrange(len(records)), rng.randrange(2**31)) for _ in range(args.count)
        ]

        per_image = ImageDataset(
            records, build_train_transform(size, mean, std, FLIP, PADDING, ERASE)
        )
        bot_transform = bag_of_tricks(size)
        paths_of = [r.path for r in records]

        def decode(batch):
            for sample in batch:
                read_image(paths_of[sample.index])

        def bag(batch):
            for sample in batch:
                with Image.open(paths_of[sample.index]) as image:
                    bot_transform(image.convert("RGB"))

        def dataset_pass(dataset):
            def run(batch):
                for sample in batch:
                    dataset[sample]

            return run

        rows = [
            ("decode", images_per_second(decode, samples, args.repeats)),
            ("Bag-of-Tricks", images_per_second(bag, samples, args.repeats)),
            ("per-image", images_per_second(dataset_pass(per_image), samples, args.repeats)),
        ]
        try:
            from reid.data.augment import AugmentSpec, BatchParams, augment_batch
            from reid.data.cache import CachedImageDataset, decoded_images
        except ImportError:  # a version without the cache: the rows above only
            pass
        else:
            start = time.perf_counter()
            decoded = decoded_images(records, size, folder)
            print(f"cache of {len(records)} images built in {time.perf_counter() - start:.1f} s")
            cached = CachedImageDataset(
                decoded,
                records,
                build_train_transform(size, mean, std, FLIP, PADDING, ERASE, resize=False),
            )
            spec = AugmentSpec(size, FLIP, PADDING, ERASE, mean, std)
            drawn = CachedImageDataset(decoded, records, BatchParams(spec))

            def batches(batch, augment: bool):
                for start in range(0, len(batch), BATCH):
                    items = [drawn[s] for s in batch[start : start + BATCH]]
                    (images, params), _, _ = default_collate(items)
                    if augment:
                        augment_batch(images, params, spec)

            rows.append(
                ("cache ram", images_per_second(dataset_pass(cached), samples, args.repeats))
            )
            rows.append(
                (
                    "cache ram + batch augment: the loader",
                    images_per_second(lambda b: batches(b, False), samples, args.repeats),
                )
            )
            rows.append(
                (
                    "cache ram + batch augment: loader and augment_batch on this CPU",
                    images_per_second(lambda b: batches(b, True), samples, args.repeats),
                )
            )
    print(f"{source} -> {size[0]}x{size[1]}, 1 thread")
    base = dict(rows)["per-image"]
    print("| path | images/s | vs per-image |")
    print("| --- | --- | --- |")
    for name, speed in rows:
        print(f"| {name} | {speed:.0f} | {speed / base:.2f}x |")


if __name__ == "__main__":
    main()
