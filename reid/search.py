"""Gallery search over any folder of images: a cached feature index and top-k retrieval."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from reid.data.datasets.market import IMAGE_SUFFIXES
from reid.deploy import OnnxModel, file_sha256
from reid.errors import ReidError
from reid.extractor import FeatureExtractor
from reid.utils.io import atomic_write

logger = logging.getLogger(__name__)

INDEX_VERSION = 1


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted); ``root`` may be one image file.

    Raises:
        ReidError: ``root`` does not exist, or holds no image.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ReidError(f"not found: {root}")
    images = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ReidError(f"no images ({suffixes}) in {root} or its subfolders")
    return images


def model_fingerprint(extractor: FeatureExtractor) -> str:
    """Identifies what an extractor computes: its weights or graph, and its input options."""
    if isinstance(extractor.backend, OnnxModel):
        options = {"graph": file_sha256(extractor.source)}
    else:
        test = extractor.cfg.TEST
        options = {
            "weights": file_sha256(extractor.source),
            "config": [extractor.cfg.INPUT.dump(), test.NECK_FEAT, test.FEAT_NORM, test.FLIP],
        }
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


@dataclass
class GalleryIndex:
    """Features of a gallery folder's images, with what they were computed from.

    An image is identified by its path relative to the gallery folder, its size and
    its modification time; its feature is reused while all three and the model are
    unchanged. Saved as a plain ``.npz`` (no pickled objects).
    """

    fingerprint: str
    paths: list[str]
    stamps: np.ndarray  # (N, 2) int64: size in bytes, mtime in ns
    features: torch.Tensor  # (N, D) float32

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> GalleryIndex | None:
        """The index saved at ``path`` if it was made by the same model, else None."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                if (
                    int(saved["version"]) != INDEX_VERSION
                    or str(saved["fingerprint"]) != fingerprint
                ):
                    return None
                return cls(
                    fingerprint,
                    saved["paths"].tolist(),
                    saved["stamps"],
                    torch.from_numpy(saved["features"]),
                )
        except (OSError, ValueError, KeyError) as err:
            logger.warning("ignoring unreadable index %s (%s); rebuilding it", path, err)
            return None

    def save(self, path: Path) -> None:
        """Writes the index atomically."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            version=INDEX_VERSION,
            fingerprint=self.fingerprint,
            paths=np.array(self.paths, dtype=str),
            stamps=self.stamps,
            features=self.features.numpy(),
        )
        atomic_write(path, lambda file: file.write(buffer.getvalue()))


def index_gallery(
    extractor: FeatureExtractor, gallery: Path, index_path: Path
) -> tuple[list[Path], torch.Tensor, int]:
    """The features of every image under ``gallery``, from the index where still valid.

    New and changed images are embedded (with a progress bar) and the index is saved.

    Returns:
        ``(paths, features (N, D), number of images embedded now)``.
    """
    images = find_images(gallery)
    names = [str(p.relative_to(gallery)) if gallery.is_dir() else p.name for p in images]
    stamps = np.array([[p.stat().st_size, p.stat().st_mtime_ns] for p in images], dtype=np.int64)
    fingerprint = model_fingerprint(extractor)
    saved = GalleryIndex.load(index_path, fingerprint)
    known = {}
    if saved is not None:
        known = {name: i for i, name in enumerate(saved.paths)}
    features = torch.empty(len(images), extractor.feat_dim)
    todo = []
    for i, name in enumerate(names):
        j = known.get(name)
        if j is not None and np.array_equal(saved.stamps[j], stamps[i]):
            features[i] = saved.features[j]
        else:
            todo.append(i)
    batch = extractor.batch_size
    for start in tqdm(range(0, len(todo), batch), desc="indexing gallery", unit="batch"):
        rows = todo[start : start + batch]
        features[rows] = extractor([images[i] for i in rows])
    if todo or saved is None or len(saved.paths) != len(names):
        GalleryIndex(fingerprint, names, stamps, features).save(index_path)
    return images, features, len(todo)


def results_table(
    queries: Sequence[Path], gallery: Sequence[Path], distances: torch.Tensor, indices: torch.Tensor
) -> dict[str, list[dict[str, str | float]]]:
    """``{query path: [{"path", "distance"}, ...]}``, nearest first."""
    return {
        str(query): [
            {"path": str(gallery[int(j)]), "distance": float(d)}
            for d, j in zip(row_d, row_i, strict=True)
        ]
        for query, row_d, row_i in zip(queries, distances, indices, strict=True)
    }
