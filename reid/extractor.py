"""Deployment API: a trained model as a function from images to feature vectors.

Example::

    from reid import FeatureExtractor

    extract = FeatureExtractor("output/market_r50")  # run dir: config.yaml + best.pth
    feats = extract(["a.jpg", "b.jpg"])  # (2, D) float32 on the CPU
    distmat = torch.cdist(feats, feats)

    onnx = FeatureExtractor("output/market_r50/model.onnx")  # the same, in ONNX Runtime
    ir = FeatureExtractor("output/market_r50/model.xml")  # the same, in OpenVINO
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image
from yacs.config import CfgNode

from reid.config import import_plugins, load_cfg
from reid.data.image_dataset import read_image, to_rgb
from reid.data.transforms import resize_for_test
from reid.deploy import DeployModel, format_of, load_exported
from reid.engine.checkpoint import build_trained_model
from reid.errors import ReidError
from reid.utils.env import resolve_device

logger = logging.getLogger(__name__)

ImageInput: TypeAlias = str | Path | Image.Image | np.ndarray | torch.Tensor

# Checkpoints looked for in a run directory when no weights are given, best first.
RUN_DIR_WEIGHTS = ("best.pth", "last.pth")

_EXPECTED = "an image path, a PIL image, a uint8 array (H, W, 3) or a uint8 tensor (3, H, W)"


class FeatureExtractor:
    """Loads a trained model once and maps images to its test features.

    The model is a run (PyTorch) or a model exported by ``tools/export.py`` (ONNX
    Runtime, OpenVINO or TensorRT); all take the same inputs and give the same
    features. Each image is resized to the test size by
    :func:`reid.data.transforms.resize_for_test`, the resize evaluation uses, and fed
    as uint8 pixels to the model, which normalises
    them (``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``) and returns what evaluation ranks
    with: the ``TEST.NECK_FEAT`` feature, L2-normalised when ``TEST.FEAT_NORM``, and
    with ``TEST.FLIP`` the mean of the image's and its mirror's features. With
    PyTorch this is :class:`reid.deploy.DeployModel`, built on evaluation's own
    functions, so deployed features are exactly the ones that were evaluated.

    Args:
        model: a run directory (its ``config.yaml`` is read), a YAML config file or
            a config tree, or an exported model: ``.onnx``, ``.xml`` (OpenVINO) or
            ``.engine`` (TensorRT).
        weights: for a run: a checkpoint (``{"model": state_dict, ...}``). By default
            a run directory's ``best.pth``, else its ``last.pth``; for a config file or
            tree, its ``TEST.WEIGHT``. Not used with an exported model.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:1"``-style names (ONNX
            Runtime: CUDA when onnxruntime-gpu provides it; OpenVINO: ``"auto"`` is the
            CPU, or an OpenVINO device such as ``"GPU"``; TensorRT: a CUDA device).
        batch_size: images per forward pass.
        imports: the plugin modules (backbones, poolings...) to import, e.g.
            ``("my_project.backbones",)``. A run's ``config.yaml`` may list ``IMPORTS``;
            importing a module runs its code, so a config file's list is imported only
            when you name the modules here (your list replaces the file's). By default a
            config file that lists ``IMPORTS`` is refused with one line naming them.
            For a config tree, these modules are imported. Not used with an exported model.

    Raises:
        ReidError: a missing or unreadable config, checkpoint or graph, no weights to
            load, weights that do not fit the configured model, a bad argument, or a
            config file listing ``IMPORTS`` not named in ``imports``.
    """

    def __init__(
        self,
        model: str | Path | CfgNode,
        weights: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 64,
        *,
        imports: Sequence[str] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ReidError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        if isinstance(model, str | Path) and format_of(model) is not None:
            self.backend = load_exported(model, device)
            self.size = self.backend.metadata.input_size
            self.feat_dim = self.backend.metadata.feat_dim
            self.metric = self.backend.metadata.metric
            self.device = torch.device(self.backend.device)
            self.source = Path(model)
        else:
            cfg, weights = resolve_run(model, weights, imports=imports)
            self.device = resolve_device(device)
            trained = build_trained_model(cfg, weights)
            self.backend = DeployModel(
                trained, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.TEST.FLIP
            ).to(self.device)
            self.cfg = cfg
            self.size = tuple(cfg.INPUT.SIZE_TEST)
            self.feat_dim = trained.feat_dim
            self.metric = cfg.TEST.METRIC
            self.source = Path(weights)
        logger.info(
            "feature extractor: %s on %s (D=%d, input %dx%d)",
            self.source,
            self.device,
            self.feat_dim,
            *self.size,
        )

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
        items = _checked(images)
        feats = [
            self.embed_pixels(self._stack(items[start : start + self.batch_size], start))
            for start in range(0, len(items), self.batch_size)
        ]
        if not feats:
            return torch.empty(0, self.feat_dim)
        return torch.cat(feats)

    def batch_pixels(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """The model's uint8 input ``(N, 3, H, W)`` of the images that :meth:`__call__`
        accepts, resized as it resizes them."""
        return self._stack(_checked(images), 0)

    def _stack(self, items: list[ImageInput], first: int) -> np.ndarray:
        """uint8 ``(N, 3, H, W)`` of checked items, the first being item ``first`` of
        the caller's list (errors name that index)."""
        height, width = self.size
        pixels = [self.pixels(_to_pil(first + i, item)) for i, item in enumerate(items)]
        return np.stack(pixels) if pixels else np.empty((0, 3, height, width), np.uint8)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """An RGB image as the model's input: uint8 ``(3, H, W)`` at the test size."""
        return np.asarray(resize_for_test(image, self.size)).transpose(2, 0, 1)

    def embed_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """Features ``(N, D)`` float32 on the CPU of a uint8 ``(N, 3, H, W)`` batch."""
        if not isinstance(self.backend, DeployModel):
            return self.backend(pixels)
        with torch.inference_mode():
            feats = self.backend(torch.from_numpy(pixels).to(self.device)).cpu()
        # Cloned outside inference mode: an ordinary tensor, which callers may modify.
        return feats.clone()


def resolve_run(
    source: str | Path | CfgNode,
    weights: str | Path | None,
    imports: Sequence[str] | None = None,
) -> tuple[CfgNode, Path]:
    """The config tree and the checkpoint path that ``FeatureExtractor`` loads.

    A config file's ``IMPORTS`` are imported only when named in ``imports`` (see
    :class:`FeatureExtractor`); for a config tree, ``imports`` are imported.
    """
    if imports is not None and (
        not isinstance(imports, list | tuple) or not all(isinstance(n, str) for n in imports)
    ):
        raise ReidError(
            f"imports must be a list of module names such as ['my_project.backbones'], "
            f"got {imports!r}"
        )
    # Passed as an IMPORTS override: what the user names replaces the file's list.
    opts = () if imports is None else ("IMPORTS", json.dumps(list(imports)))
    if isinstance(source, CfgNode):
        import_plugins(imports or ())
        cfg = source
    elif not isinstance(source, str | Path):
        raise ReidError(
            "FeatureExtractor takes a run directory, a config file or a config tree, "
            f"got {type(source).__name__}"
        )
    else:
        path = Path(source)
        if path.is_dir():
            cfg = load_cfg(
                path / "config.yaml", opts, trust_file_imports=False, opt_in=_imports_opt_in
            )
            if weights is None:
                found = [path / name for name in RUN_DIR_WEIGHTS if (path / name).is_file()]
                if not found:
                    raise ReidError(
                        f"no {' or '.join(RUN_DIR_WEIGHTS)} in run directory {path}; "
                        "pass weights=path/to/checkpoint.pth"
                    )
                weights = found[0]
        elif path.is_file():
            cfg = load_cfg(path, opts, trust_file_imports=False, opt_in=_imports_opt_in)
        else:
            raise ReidError(f"config file or run directory not found: {path}")
    if weights is None:
        weights = cfg.TEST.get("WEIGHT", "")
        if not weights:
            raise ReidError("no weights to load: pass weights=path/to/checkpoint.pth")
    return cfg, Path(weights)


def _imports_opt_in(modules: list[str]) -> str:
    """How a user of the extractor or of the tools built on it allows a file's plugins."""
    names = ",".join(map(str, modules))
    return f"pass imports={modules!r} (FeatureExtractor) or --imports {names} (export, search)"


def _checked(images: Any) -> list[Any]:
    """The accepted batch forms as a list of single images, each checked (the message
    names the first bad one's index)."""
    items = _as_list(images)
    for index, item in enumerate(items):
        _check_item(index, item)
    return items


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
    if isinstance(item, str | Path):
        return  # read (and checked) later
    if isinstance(item, Image.Image):
        width, height = item.size
    else:
        height, width = item.shape[:2] if isinstance(item, np.ndarray) else item.shape[1:]
    if not (width and height):
        raise ReidError(f"image {index}: has size {width}x{height}; expected a non-empty image")


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
    return to_rgb(item, f"{index}")
