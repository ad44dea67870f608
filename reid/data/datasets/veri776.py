"""VeRi-776 (Liu et al., "A Deep Learning-Based Approach to Progressive Vehicle
Re-identification for Urban Surveillance", ECCV 2016): vehicles, Market-style names."""

from pathlib import Path

from reid.data.datasets.base import ReidDataset, find_dataset_dir
from reid.data.datasets.market import read_market_layout
from reid.data.datasets.registry import DATASETS

# The release's split folders, as the Market-layout parser reads them.
SPLIT_DIRS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}


@DATASETS.register("veri776")
def veri776(root: str | Path) -> ReidDataset:
    """VeRi-776: 576 train / 200 test vehicles, 20 cameras; images named
    ``VVVV_cCCC_FFFFFFFF_N.jpg`` (vehicle, camera, frame), evaluated with the Market
    protocol (a query's own camera is left out of its ranking)."""
    usual = ("VeRi", "VeRi-776", "veri776", "VeRi_with_plate")
    folder = find_dataset_dir(root, usual, SPLIT_DIRS["train"])
    return read_market_layout("veri776", folder, SPLIT_DIRS)
