"""CUHK03 under the "new protocol" of Zhong et al. (CVPR 2017): CUHK03-NP.

767 training and 700 test identities, evaluated like Market-1501 (one query per
identity and camera, the rest gallery; same-camera matches removed). The CUHK03-NP
release holds two versions of the crops in Market-1501 layout: ``labeled/`` (hand-drawn
boxes) and ``detected/`` (DPM detections, the harder and more often reported one).
"""

from pathlib import Path

from reid.data.datasets.base import ReidDataset, find_dataset_dir
from reid.data.datasets.market import read_market_layout
from reid.data.datasets.registry import DATASETS
from reid.data.layout import MARKET_SPLIT_DIRS

USUAL_NAMES = ("cuhk03-np", "CUHK03-NP", "cuhk03_np", "cuhk03")


@DATASETS.register("cuhk03")
def cuhk03(root: str | Path, labeled: bool = False) -> ReidDataset:
    """CUHK03-NP, its ``detected`` crops, or ``labeled`` ones with ``labeled=True``.

    Args:
        root: the CUHK03-NP folder (holding ``labeled/`` and ``detected/``) or a parent
            holding it under one of :data:`USUAL_NAMES`.
        labeled: read ``labeled/`` instead of ``detected/`` (``DATASETS.CUHK03_LABELED``).
    """
    crops = "labeled" if labeled else "detected"
    folder = find_dataset_dir(root, USUAL_NAMES, f"{crops}/{MARKET_SPLIT_DIRS['train']}")
    return read_market_layout(f"cuhk03-np ({crops})", folder / crops)
