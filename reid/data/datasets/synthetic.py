"""The built-in synthetic pedestrians, generated on first use, read as a Market folder."""

from pathlib import Path

from reid.data.datasets.base import ReidDataset
from reid.data.datasets.market import read_market_layout
from reid.data.datasets.registry import DATASETS
from reid.data.synthetic import MANIFEST, generate_synthetic


@DATASETS.register("synthetic")
def synthetic(
    root: str | Path, num_identities: int = 300, num_cameras: int = 6, seed: int = 0
) -> ReidDataset:
    """Procedurally drawn pedestrians in Market-1501 layout (see reid.data.synthetic).

    Args:
        root: a generated set (holding its manifest), or a parent folder under
            which one is generated per (num_identities, num_cameras, seed).
    """
    root = Path(root)
    folder = root / f"synthetic-{num_identities}ids-{num_cameras}cams-seed{seed}"
    if (root / MANIFEST).is_file():  # root is itself a generated set
        folder = root
    generate_synthetic(folder, num_identities=num_identities, num_cameras=num_cameras, seed=seed)
    return read_market_layout("synthetic", folder)
