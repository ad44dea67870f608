"""The export formats (``tools/export.py --format``): a registry of what each one writes
from the ONNX graph and how :class:`reid.FeatureExtractor` runs what it wrote.

A format lives in a file of its own (``onnx_runtime.py``, ``openvino_ir.py``,
``tensorrt_engine.py``) and imports its runtime only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reid.deploy.metadata import ExportMetadata
from reid.deploy.modules import tracker_input
from reid.errors import ReidError
from reid.registry import Registry


def import_optional(module: str, extra: str):
    """``import module``, or ReidError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ReidError(
            f'{module} is not installed; this export format needs pip install "reidkit[{extra}]"'
        ) from None


class ExportedModel:
    """An exported model run by its runtime: uint8 RGB ``(N, 3, H, W)`` -> features ``(N, D)``.

    A float-profile model is fed the pixels converted by :func:`tracker_input`, as a
    tracker would, so every format and profile takes the same call. Subclasses load the
    file, set ``metadata``, ``device`` and ``path``, and implement :meth:`run`.
    """

    metadata: ExportMetadata
    device: str
    path: Path

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Features of a uint8 ``(N, 3, H, W)`` batch, float32 ``(N, D)`` on the CPU."""
        if self.metadata.input_profile == "float":
            images = tracker_input(images)
        return torch.from_numpy(np.asarray(self.run(np.ascontiguousarray(images)), np.float32))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output ``(N, D)`` for its input as the graph takes it."""
        raise NotImplementedError


@dataclass(frozen=True)
class ExportFormat:
    """One ``--format``.

    Attributes:
        suffix: the file it writes, e.g. ``".onnx"``; :func:`load_exported` picks the
            format by it.
        write: ``(graph, metadata, out)`` writes ``out`` from the ONNX file ``graph``,
            which holds the precision already (fp16 weights, or int8 QuantizeLinear /
            DequantizeLinear pairs), with ``metadata`` stored where the format keeps it.
        load: ``(path, device)`` -> the :class:`ExportedModel` that runs the file.
        files: the files a written model consists of (``out`` and its companions), for
            moving them into place together.
        check: raises ReidError, in one line, when what the format needs to be written
            (its runtime, a GPU) is missing.
        parity_device: the device the export's gate runs the written model on.
    """

    suffix: str
    write: Callable[[Path, ExportMetadata, Path], None]
    load: Callable[[Path, str], ExportedModel]
    files: Callable[[Path], list[Path]]
    check: Callable[[], object]
    parity_device: str = "cpu"


FORMATS: Registry[ExportFormat] = Registry("export format")


def format_of(path: str | Path) -> ExportFormat | None:
    """The export format that writes files named like ``path`` (by suffix), if any."""
    for name in FORMATS.names():
        if FORMATS.get(name).suffix == Path(path).suffix:
            return FORMATS.get(name)
    return None


def load_exported(path: str | Path, device: str = "auto") -> ExportedModel:
    """The model in an exported file, run by its format's runtime (chosen by its suffix)."""
    found = format_of(path)
    if found is None:
        suffixes = ", ".join(FORMATS.get(name).suffix for name in FORMATS.names())
        raise ReidError(f"{path}: not an exported model; expected a file ending in {suffixes}")
    return found.load(Path(path), device)
