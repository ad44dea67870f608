"""Datasets and loaders from the config."""

import logging
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from reid.data.datasets import DATASETS, DatasetError, ReidDataset
from reid.data.image_dataset import ImageDataset
from reid.data.sampler import PKSampler
from reid.data.transforms import build_test_transform, build_train_transform
from reid.utils import distributed

logger = logging.getLogger(__name__)


def build_dataset(cfg: CfgNode) -> ReidDataset:
    """Parses ``DATASETS.NAME`` under ``DATASETS.ROOT`` and logs its statistics.

    Raises:
        DatasetError: ``DATASETS.ROOT`` is a file, or the dataset's own checks fail.
    """
    if Path(cfg.DATASETS.ROOT).is_file():
        raise DatasetError(f"DATASETS.ROOT {cfg.DATASETS.ROOT} is a file; expected a folder")
    options = {}
    if cfg.DATASETS.NAME == "cuhk03":
        options = {"labeled": cfg.DATASETS.CUHK03_LABELED}
    elif cfg.DATASETS.NAME == "synthetic":
        synthetic = cfg.DATASETS.SYNTHETIC
        options = {
            "num_identities": synthetic.NUM_IDENTITIES,
            "num_cameras": synthetic.NUM_CAMERAS,
            "seed": synthetic.SEED,
        }
    dataset = DATASETS.get(cfg.DATASETS.NAME)(cfg.DATASETS.ROOT, **options)
    logger.info("%s", dataset.stats_table())
    return dataset


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT / SIGTERM to the main process, which stops cleanly.

    A Ctrl-C reaches every process of the terminal's group, and a scheduler's SIGTERM
    often every process of the job; a worker killed by it while the main process waits
    for its batch would turn the clean stop into a "worker exited unexpectedly" error.
    Workers still end with the main process.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def build_train_loader(cfg: CfgNode, dataset: ReidDataset) -> DataLoader:
    """Training loader: augmented images in PK batches (``SOLVER.IMS_PER_BATCH`` = P x K).

    Batches are ``(images (B, 3, H, W), pids (B,), camids (B,))`` with relabelled pids.
    Under torchrun each of W ranks loads its P / W identities of every global batch.
    """
    transform = build_train_transform(
        cfg.INPUT.SIZE_TRAIN,
        cfg.INPUT.PIXEL_MEAN,
        cfg.INPUT.PIXEL_STD,
        flip_prob=cfg.INPUT.FLIP_PROB,
        padding=cfg.INPUT.PADDING,
        erase_prob=cfg.INPUT.RE_PROB,
    )
    sampler = PKSampler(
        [r.pid for r in dataset.train],
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        num_instances=cfg.DATALOADER.NUM_INSTANCES,
        seed=cfg.SEED,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
    )
    return DataLoader(
        ImageDataset(dataset.train, transform),
        batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
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
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_stop_signals,
    )
    return loader, len(dataset.query)
