"""Dataset registry. Each entry parses files into ``(path, pid, camid)`` records only."""

from reid.data.datasets import (  # noqa: F401  (register entries)
    cuhk03,
    image_folder,
    market,
    msmt17,
    synthetic,
    vehicleid,
    veri776,
)
from reid.data.datasets.base import DatasetError, Record, ReidDataset
from reid.data.datasets.registry import DATASETS

__all__ = ["DATASETS", "DatasetError", "Record", "ReidDataset"]
