"""Deployment API: a trained model as a function from images to feature vectors.

Example::

    from reid import FeatureExtractor

    extract = FeatureExtractor("output/market_r50")  # run dir: config.yaml + best.pth
    feats = extract(["a.jpg", "b.jpg"])  # (2, D) float32 on the CPU
    distmat = torch.cdist(feats, feats)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image
from yacs.config import CfgNode

from reid.config import load_cfg
from reid.data.image_dataset import read_image
from reid.data.transforms import build_test_transform
from reid.engine.checkpoint import build_trained_model
from reid.errors import ReidError
from reid.evaluation.evaluator import embed
from reid.utils.env import resolve_device

logger = logging.getLogger(__name__)

ImageInput: TypeAlias = str | Path | Image.Image | np.ndarray | torch.Tensor

# Checkpoints looked for in a run directory when no weights are given, best first.
RUN_DIR_WEIGHTS = ("best.pth", "last.pth")

_EXPECTED = "an image path, a PIL image, a uint8 array (H, W, 3) or a uint8 tensor (3, H, W)"


class FeatureExtractor:
    """Loads a trained model once and maps images to its test features.

    Images go through the model's test-time preprocessing (resize to
    ``INPUT.SIZE_TEST``, normalise by ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``) in batches,
    with gradients off. Features are what evaluation ranks with: ``TEST.NECK_FEAT``
    selects the feature, and rows are L2-normalised when ``TEST.FEAT_NORM`` is True.

    With ``TEST.FLIP`` True, each image's
    feature is the mean of the model's features of the image and of its horizontal
    mirror, re-normalised when ``TEST.FEAT_NORM``. The batch step is evaluation's own
    :func:`reid.evaluation.evaluator.embed`, so deployed features are exactly the ones
    that were evaluated.

    Args:
        config_or_run_dir: a YAML config file, a run directory (its ``config.yaml`` is
            read) or a config tree.
        weights: a checkpoint (``{"model": state_dict, ...}``). By default a run
            directory's ``best.pth``, else its ``last.pth``; for a config file or tree,
            its ``TEST.WEIGHT``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"``-style names.
        batch_size: images per forward pass.

    Raises:
        ReidError: a missing or unreadable config or checkpoint, no weights to load,
            weights that do not fit the configured model, or ``batch_size`` below 1.
    """

    def __init__(
        self,
        config_or_run_dir: str | Path | CfgNode,
        weights: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 64,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ReidError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.cfg, weights = _resolve_config_and_weights(config_or_run_dir, weights)
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.flip = self.cfg.TEST.FLIP
        self.transform = build_test_transform(
            self.cfg.INPUT.SIZE_TEST, self.cfg.INPUT.PIXEL_MEAN, self.cfg.INPUT.PIXEL_STD
        )

        self.model = build_trained_model(self.cfg, weights).to(self.device).eval()
        self.weights = Path(weights)
        logger.info(
            "feature extractor: %s from %s on %s (D=%d, flip=%s)",
            self.cfg.MODEL.BACKBONE,
            weights,
            self.device,
            self.feat_dim,
            self.flip,
        )

    @property
    def feat_dim(self) -> int:
        """Dimension ``D`` of the returned features."""
        return self.model.feat_dim

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """Extracts one feature per image.

        Args:
            images: one image or a sequence of them; each an image path (str or Path),
                a PIL image (converted to RGB), a uint8 numpy array (H, W, 3) in RGB
                order, or a uint8 tensor (3, H, W). A 4-D uint8 array (N, H, W, 3) or
                tensor (N, 3, H, W) is a batch of N images.

        Returns:
            (N, D) float32 features on the CPU, in input order; (0, D) for no images.

        Raises:
            ReidError: an item that is missing, unreadable or of an unsupported type,
                shape or dtype; the message names the item's index.
        """
        items = _as_list(images)
        for index, item in enumerate(items):
            _check_item(index, item)
        feats = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                batch = torch.stack(
                    [self.transform(_to_pil(start + i, item)) for i, item in enumerate(chunk)]
                )
                feats.append(embed(self.model, batch.to(self.device), self.flip).cpu())
        if not feats:
            return torch.empty(0, self.feat_dim)
        # Concatenating outside inference mode returns an ordinary tensor, which callers
        # may modify in place.
        return torch.cat(feats)


def _resolve_config_and_weights(
    source: str | Path | CfgNode, weights: str | Path | None
) -> tuple[CfgNode, Path]:
    """The config tree and the checkpoint path that ``FeatureExtractor`` loads."""
    if isinstance(source, CfgNode):
        cfg = source
    elif not isinstance(source, str | Path):
        raise ReidError(
            "FeatureExtractor takes a run directory, a config file or a config tree, "
            f"got {type(source).__name__}"
        )
    else:
        path = Path(source)
        if path.is_dir():
            cfg = load_cfg(path / "config.yaml")
            if weights is None:
                found = [path / name for name in RUN_DIR_WEIGHTS if (path / name).is_file()]
                if not found:
                    raise ReidError(
                        f"no {' or '.join(RUN_DIR_WEIGHTS)} in run directory {path}; "
                        "pass weights=path/to/checkpoint.pth"
                    )
                weights = found[0]
        elif path.is_file():
            cfg = load_cfg(path)
        else:
            raise ReidError(f"config file or run directory not found: {path}")
    if weights is None:
        weights = cfg.TEST.get("WEIGHT", "")
        if not weights:
            raise ReidError("no weights to load: pass weights=path/to/checkpoint.pth")
    return cfg, Path(weights)


def _as_list(images: Any) -> list[Any]:
    """Splits the accepted batch forms into a list of single images."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if isinstance(images, np.ndarray | torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    raise ReidError(f"images must be {_EXPECTED}, or a list of them; got {type(images).__name__}")


def _check_item(index: int, item: Any) -> None:
    """Raises ReidError naming ``index`` unless ``item`` is a usable image."""
    if isinstance(item, str | Path):
        if not Path(item).is_file():
            raise ReidError(f"image {index}: file not found: {item}")
    elif isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ReidError(
                f"image {index}: expected a uint8 array of shape (H, W, 3) in RGB order, "
                f"got {item.dtype} of shape {tuple(item.shape)}"
            )
    elif isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] != 3:
            raise ReidError(
                f"image {index}: expected a uint8 tensor of shape (3, H, W), "
                f"got {item.dtype} of shape {tuple(item.shape)}"
            )
    elif not isinstance(item, Image.Image):
        raise ReidError(f"image {index}: expected {_EXPECTED}; got {type(item).__name__}")


def _to_pil(index: int, item: ImageInput) -> Image.Image:
    """One checked item as an RGB PIL image.

    Every input kind goes through PIL so that the same picture gives the same feature
    whichever way it is passed (PIL and tensor resizing differ slightly).
    """
    if isinstance(item, str | Path):
        try:
            return read_image(str(item))
        except ReidError as err:
            raise ReidError(f"image {index}: {err}") from None
    if isinstance(item, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(item))
    if isinstance(item, torch.Tensor):
        return Image.fromarray(item.permute(1, 2, 0).contiguous().cpu().numpy())
    return item if item.mode == "RGB" else item.convert("RGB")
