"""Datasets and loaders from the config."""

import functools
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from yacs.config import CfgNode

from reid.data.augment import AugmentSpec, BatchParams, augment_batch
from reid.data.cache import CachedImageDataset, decoded_images
from reid.data.datasets import DATASETS, DatasetError, Record, ReidDataset
from reid.data.datasets.base import relabel
from reid.data.image_dataset import ImageDataset
from reid.data.sampler import PKSampler
from reid.data.transforms import build_test_transform, build_train_transform
from reid.protocol import DISTRACTOR_PID, NO_CAMERA
from reid.utils import distributed

logger = logging.getLogger(__name__)


# The factory options each dataset reads from the config (DATASETS.<its keys>).
CONFIG_OPTIONS: dict[str, Callable[[CfgNode], dict[str, Any]]] = {
    "cuhk03": lambda cfg: {"labeled": cfg.DATASETS.CUHK03_LABELED},
    "vehicleid": lambda cfg: {"test_size": cfg.DATASETS.VEHICLEID_TEST_SIZE},
    "synthetic": lambda cfg: {
        "num_identities": cfg.DATASETS.SYNTHETIC.NUM_IDENTITIES,
        "num_cameras": cfg.DATASETS.SYNTHETIC.NUM_CAMERAS,
        "seed": cfg.DATASETS.SYNTHETIC.SEED,
    },
}


def build_dataset(cfg: CfgNode, name: str) -> ReidDataset:
    """Parses the dataset ``name`` under ``DATASETS.ROOT`` and logs its statistics.

    Raises:
        DatasetError: ``DATASETS.ROOT`` is a file, or the dataset's own checks fail.
        UnknownNameError: ``name`` is not a registered dataset (the message lists them).
    """
    if Path(cfg.DATASETS.ROOT).is_file():
        raise DatasetError(f"DATASETS.ROOT {cfg.DATASETS.ROOT} is a file; expected a folder")
    factory = DATASETS.get(name)
    options = CONFIG_OPTIONS[name](cfg) if name in CONFIG_OPTIONS else {}
    dataset = factory(cfg.DATASETS.ROOT, **options)
    logger.info("%s", dataset.stats_table())
    return dataset


def test_set_names(cfg: CfgNode) -> list[str]:
    """The datasets evaluated: ``DATASETS.TESTS``, or the ``DATASETS.NAMES`` trained on."""
    return list(cfg.DATASETS.TESTS or cfg.DATASETS.NAMES)


def build_datasets(cfg: CfgNode, names: Sequence[str]) -> dict[str, ReidDataset]:
    """:func:`build_dataset` of each name, in order, each parsed once; every name is
    looked up first, so a misspelt one stops the run before any parsing."""
    names = list(dict.fromkeys(names))
    for name in names:
        DATASETS.get(name)
    return {name: build_dataset(cfg, name) for name in names}


def combine_train(datasets: Sequence[ReidDataset], combine_all: bool = False) -> list[Record]:
    """The training images of several datasets as one set.

    Each dataset's identities get their own range of labels, in the order given, so the
    labels run over ``0..P-1`` with no identity shared between datasets; its cameras
    likewise get their own range of ids (``NO_CAMERA`` stays). One dataset's training
    records come back unchanged.

    Args:
        datasets: the datasets trained on.
        combine_all: also train on each dataset's query and gallery images: its test
            identities (query and gallery as one; distractors, pid 0 that no query
            has, left out) become new classes after its training identities.

    Returns:
        The records, dataset by dataset, with labels ``0..P-1`` and disjoint cameras.
    """
    combined: list[Record] = []
    next_pid = next_camera = 0  # the first label and camera id of the next dataset's
    for dataset in datasets:
        parts = [dataset.train]
        if combine_all:  # pid 0 marks distractors, unless a query has it (VehicleID's 0)
            queried = {r.pid for r in dataset.query}
            tested = [
                r
                for r in dataset.query + dataset.gallery
                if r.pid > DISTRACTOR_PID or r.pid in queried
            ]
            parts.append(relabel(tested))
        camera_offset = next_camera
        for part in parts:  # each part's labels run over 0..n-1
            combined += [
                Record(
                    r.path,
                    r.pid + next_pid,
                    r.camid if r.camid == NO_CAMERA else r.camid + camera_offset,
                )
                for r in part
            ]
            next_pid += len({r.pid for r in part})
            cameras = [r.camid for r in part if r.camid != NO_CAMERA]
            next_camera = max(next_camera, camera_offset + 1 + max(cameras, default=-1))
    if combine_all or len(datasets) > 1:
        logger.info(
            "training on %s%s: %d identities, %d images",
            " + ".join(d.name for d in datasets),
            " (train + query + gallery)" if combine_all else "",
            next_pid,
            len(combined),
        )
    return combined


@dataclass(frozen=True)
class RunData:
    """What a training run reads: the combined training images and the test sets.

    Attributes:
        train: :func:`combine_train` of ``DATASETS.NAMES`` (labels ``0..num_classes-1``).
        tests: the ``DATASETS.TESTS`` (or ``NAMES``) by name, each with its protocol.
    """

    train: list[Record]
    tests: dict[str, ReidDataset]

    @property
    def num_classes(self) -> int:
        """The number of training identities (the classifier's size)."""
        return len({r.pid for r in self.train})


def build_run_data(cfg: CfgNode) -> RunData:
    """Parses every dataset of ``DATASETS.NAMES`` and the test sets once, combines the
    training sets (with ``DATASETS.COMBINEALL``, their test images too)."""
    names, tests = list(cfg.DATASETS.NAMES), test_set_names(cfg)
    datasets = build_datasets(cfg, names + tests)
    train = combine_train([datasets[n] for n in names], cfg.DATASETS.COMBINEALL)
    if cfg.DATASETS.COMBINEALL and (seen := [n for n in tests if n in names]):
        logger.warning(
            "DATASETS.COMBINEALL: the metrics of %s are on images trained on", ", ".join(seen)
        )
    return RunData(train, {n: datasets[n] for n in tests})


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT / SIGTERM to the main process, which stops cleanly.

    A Ctrl-C reaches every process of the terminal's group, and a scheduler's SIGTERM
    often every process of the job; a worker killed by it while the main process waits
    for its batch would turn the clean stop into a "worker exited unexpectedly" error.
    Workers still end with the main process.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def build_train_loader(cfg: CfgNode, records: Sequence[Record]) -> DataLoader:
    """Training loader of ``records`` (:func:`combine_train`, labels ``0..P-1``):
    augmented images in PK batches (``SOLVER.IMS_PER_BATCH`` = P x K).

    Batches are ``(images (B, 3, H, W), pids (B,), camids (B,))`` with relabelled pids.
    With ``INPUT.BATCH_AUGMENT`` the images are ``(uint8 (B, 3, H, W), params (B, 8))``,
    resized but not augmented, for :func:`build_batch_augment`'s function to augment on
    the training device. With ``DATALOADER.CACHE ram`` the images come decoded and
    resized from :func:`reid.data.cache.decoded_images`. Under torchrun each of W ranks
    loads its P / W identities of every global batch.
    """
    size, cached = cfg.INPUT.SIZE_TRAIN, cfg.DATALOADER.CACHE == "ram"
    if cfg.INPUT.BATCH_AUGMENT:
        draw = BatchParams(_augment_spec(cfg))
        transform = draw if cached else v2.Compose([v2.Resize(tuple(size)), draw])
    else:
        transform = build_train_transform(
            size,
            cfg.INPUT.PIXEL_MEAN,
            cfg.INPUT.PIXEL_STD,
            flip_prob=cfg.INPUT.FLIP_PROB,
            padding=cfg.INPUT.PADDING,
            erase_prob=cfg.INPUT.RE_PROB,
            autoaugment_prob=cfg.INPUT.AUTOAUGMENT_PROB,
            resize=not cached,
        )
    if cached:
        images = decoded_images(records, size, cfg.DATASETS.ROOT)
        dataset = CachedImageDataset(images, records, transform)
    else:
        dataset = ImageDataset(records, transform)
    sampler = PKSampler(
        [r.pid for r in records],
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        num_instances=cfg.DATALOADER.NUM_INSTANCES,
        seed=cfg.SEED,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.DATALOADER.PIN_MEMORY and torch.cuda.is_available(),
        persistent_workers=cfg.DATALOADER.PERSISTENT_WORKERS and workers > 0,
        prefetch_factor=cfg.DATALOADER.PREFETCH_FACTOR if workers > 0 else None,
        worker_init_fn=ignore_stop_signals,
    )


def build_batch_augment(
    cfg: CfgNode,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """With ``INPUT.BATCH_AUGMENT``, the function the trainer applies to each batch on its
    device: :func:`reid.data.augment.augment_batch` of ``(images, params)``; None
    otherwise."""
    if not cfg.INPUT.BATCH_AUGMENT:
        return None
    return functools.partial(augment_batch, spec=_augment_spec(cfg))


def _augment_spec(cfg: CfgNode) -> AugmentSpec:
    """``INPUT.*``'s training augmentation as an :class:`AugmentSpec`."""
    return AugmentSpec(
        size=tuple(cfg.INPUT.SIZE_TRAIN),
        flip_prob=cfg.INPUT.FLIP_PROB,
        padding=cfg.INPUT.PADDING,
        erase_prob=cfg.INPUT.RE_PROB,
        mean=tuple(cfg.INPUT.PIXEL_MEAN),
        std=tuple(cfg.INPUT.PIXEL_STD),
    )


def build_test_loader(cfg: CfgNode, dataset: ReidDataset) -> tuple[DataLoader, int]:
    """Query followed by gallery in one pass.

    Under torchrun each rank loads its contiguous share of that list
    (:func:`reid.utils.distributed.shard`); ``extract_features`` puts the shares
    back together in order.

    Returns:
        The loader, yielding ``(images (B, 3, H, W), pids (B,), camids (B,))``, and
        the number of query images (the first items of the whole list).
    """
    transform = build_test_transform(cfg.INPUT.SIZE_TEST, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
    records = dataset.query + dataset.gallery
    share = distributed.shard(len(records))
    loader = DataLoader(
        ImageDataset(records[share.start : share.stop], transform),
        batch_size=cfg.TEST.IMS_PER_BATCH,
        shuffle=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=cfg.DATALOADER.PIN_MEMORY and torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
    )
    return loader, len(dataset.query)
