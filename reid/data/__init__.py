"""Data: dataset records, the image Dataset, PK sampling, transforms, loaders."""

from reid.data.build import (
    build_batch_augment,
    build_dataset,
    build_datasets,
    build_run_data,
    build_test_loader,
    build_train_loader,
    combine_train,
    test_set_names,
)
from reid.data.datasets import DATASETS, DatasetError, Record, ReidDataset
from reid.data.image_dataset import ImageDataset
from reid.data.sampler import PKSampler

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageDataset",
    "PKSampler",
    "Record",
    "ReidDataset",
    "build_batch_augment",
    "build_dataset",
    "build_datasets",
    "build_run_data",
    "build_test_loader",
    "build_train_loader",
    "combine_train",
    "test_set_names",
]
