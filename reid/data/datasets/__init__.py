"""Dataset registry. Each entry parses files into ``(path, pid, camid)`` records only."""

from reid.data.datasets import cuhk03, market, msmt17, synthetic  # noqa: F401  (register entries)
from reid.data.datasets.base import DatasetError, Record, ReidDataset
from reid.data.datasets.registry import DATASETS

__all__ = ["DATASETS", "DatasetError", "Record", "ReidDataset"]
