"""Gallery search over any folder of images: a cached feature index and top-k retrieval."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from yacs.config import CfgNode

from reid import __version__
from reid.config import flatten
from reid.data.datasets.market import IMAGE_SUFFIXES
from reid.deploy import DeployModel, file_sha256, format_of
from reid.errors import ReidError
from reid.extractor import FeatureExtractor
from reid.utils.io import atomic_write, user_cache_dir

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
# The index's file name inside a gallery folder that can be written.
INDEX_NAME = ".reid_index.npz"
# The config values that change the features a run computes ("X." covers the subtree X):
# the model (its plugins define what its names mean), the test input and the test feature.
FEATURE_KEYS = (
    "IMPORTS",
    "MODEL.",
    "INPUT.SIZE_TRAIN",  # a ViT's position embedding is built for it
    "INPUT.SIZE_TEST",
    "INPUT.PIXEL_MEAN",
    "INPUT.PIXEL_STD",
    "TEST.NECK_FEAT",
    "TEST.FEAT_NORM",
    "TEST.FLIP",
)
# What a corrupt or foreign index file can raise while it is read (np.load runs no code).
_UNREADABLE = (OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile)


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
    """Identifies the features an extractor computes: :func:`run_fingerprint` of its run,
    or for an exported model the content of its files (which hold its input options)."""
    if not isinstance(extractor.backend, DeployModel):
        hashes = [file_sha256(path) for path in format_of(extractor.source).files(extractor.source)]
        # One file (ONNX) is hashed as before formats, so its indexes stay valid.
        return _digest({"graph": hashes[0] if len(hashes) == 1 else hashes})
    return run_fingerprint(extractor.cfg, extractor.source)


def run_fingerprint(cfg: CfgNode, weights: str | Path) -> str:
    """Identifies the features a run computes: the content of its ``weights`` and the
    :data:`FEATURE_KEYS` values of ``cfg``; any other key (``SOLVER.*``, ``OUTPUT_DIR``,
    ``TEST.METRIC``...) leaves it unchanged.

    Returns:
        A hex SHA-256.
    """
    return _digest({"weights": file_sha256(weights), "config": feature_config(cfg)})


def feature_config(cfg: CfgNode) -> dict[str, Any]:
    """``{dotted key: value}`` of the :data:`FEATURE_KEYS` in ``cfg``."""
    return {
        key: value
        for key, value in flatten(cfg).items()
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in FEATURE_KEYS)
    }


def _digest(options: dict[str, Any]) -> str:
    # The package version too: the resize and the model code change features as well.
    options = {**options, "reid": __version__}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()


def default_index_path(gallery: str | Path) -> Path:
    """Where a gallery's index is kept when no path is given: ``GALLERY/.reid_index.npz``
    when that folder can be written, else one file per gallery in the user's cache,
    ``$XDG_CACHE_HOME/reid/search`` (``~/.cache/reid/search``), named by a hash of the
    gallery's resolved path (a read-only share, or a gallery that is one image file)."""
    gallery = Path(gallery)
    if gallery.is_dir() and os.access(gallery, os.W_OK | os.X_OK):
        return gallery / INDEX_NAME
    key = hashlib.sha256(str(gallery.resolve()).encode()).hexdigest()[:32]
    path = user_cache_dir("search") / f"{key}.npz"
    logger.info("gallery %s is not a writable folder: its index is kept in %s", gallery, path)
    return path


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
    def load(cls, path: Path, fingerprint: str, feat_dim: int) -> GalleryIndex | None:
        """The index saved at ``path`` if it was made by the same model, else None.

        A missing file or another model's index gives None; so does a corrupt,
        truncated or foreign file, with a one-line warning. The index is then rebuilt.
        Nothing in the file is unpickled.
        """
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                if (
                    int(saved["version"]) != INDEX_VERSION
                    or str(saved["fingerprint"]) != fingerprint
                ):
                    return None
                index = cls(
                    fingerprint,
                    saved["paths"].tolist(),
                    saved["stamps"],
                    torch.from_numpy(saved["features"]),
                )
            index.check(feat_dim)
            return index
        except _UNREADABLE as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            logger.warning("ignoring unreadable index %s (%s); rebuilding it", path, reason)
            return None

    def check(self, feat_dim: int) -> None:
        """Raises ValueError unless the arrays have the shapes and types of an index."""
        n = len(self.paths)
        if not all(isinstance(name, str) for name in self.paths):
            raise ValueError("paths are not a list of strings")
        if self.stamps.shape != (n, 2) or self.stamps.dtype != np.int64:
            raise ValueError(
                f"stamps are {self.stamps.dtype} {self.stamps.shape}, not int64 ({n}, 2)"
            )
        if self.features.shape != (n, feat_dim) or self.features.dtype != torch.float32:
            raise ValueError(
                f"features are {self.features.dtype} {tuple(self.features.shape)}, "
                f"not float32 ({n}, {feat_dim})"
            )

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

    New and changed images are embedded (with a progress bar) and the index is saved;
    an index that cannot be saved is reported as a warning, and the features are
    still returned.

    Returns:
        ``(paths, features (N, D), number of images embedded now)``.
    """
    images = find_images(gallery)
    names = [str(p.relative_to(gallery)) if gallery.is_dir() else p.name for p in images]
    stamps = np.array([[p.stat().st_size, p.stat().st_mtime_ns] for p in images], dtype=np.int64)
    fingerprint = model_fingerprint(extractor)
    saved = GalleryIndex.load(index_path, fingerprint, extractor.feat_dim)
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
        try:
            GalleryIndex(fingerprint, names, stamps, features).save(index_path)
        except ReidError as err:
            logger.warning("%s; the gallery will be embedded again next time", err)
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
