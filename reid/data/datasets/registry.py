"""The dataset registry: name -> ``factory(root, **options) -> ReidDataset``."""

from reid.registry import Registry

DATASETS = Registry("dataset")
