"""Deployment: the evaluation model as one uint8-in, features-out module, its ONNX export
(input convention and provenance in the graph's metadata), ONNX Runtime inference, and
the parity check that proves the exported graph computes the PyTorch features.

onnx, onnxscript and onnxruntime are optional (``pip install "reidkit[export]"``) and
imported only by the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from reid.errors import ReidError
from reid.evaluation.evaluator import embed
from reid.evaluation.feature_ranking import pairwise_distance
from reid.models import ReidModel

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "features"
# What the graph takes, written into its metadata for whoever runs it.
INPUT_CONVENTION = "uint8 RGB (N, 3, H, W) at input_size, not normalised"
# Parity thresholds of every export (fp32).
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.99999
PARITY_TOPK = 10


def _import_optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise ReidError(
            f'{name} is not installed; ONNX export and inference need pip install "reidkit[export]"'
        ) from None


class DeployModel(nn.Module):
    """uint8 RGB images at the test size -> test features, everything in between inside.

    Scaling to [0, 1] and mean/std normalisation use the same torchvision kernels as
    the evaluation transform, and flip averaging is evaluation's own :func:`embed`,
    so this module computes exactly the features that were evaluated. It is what
    :class:`reid.FeatureExtractor` runs and what :func:`export_onnx` exports.

    Args:
        model: the trained model.
        mean, std: ``INPUT.PIXEL_MEAN`` / ``INPUT.PIXEL_STD``, RGB in [0, 1].
        flip: average each image's features with its mirror's (``TEST.FLIP``).
    """

    def __init__(
        self, model: ReidModel, mean: Sequence[float], std: Sequence[float], flip: bool
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean, self.std = list(mean), list(std)
        self.flip = flip

    @property
    def feat_dim(self) -> int:
        return self.model.feat_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Maps uint8 ``(N, 3, H, W)`` to float32 features ``(N, D)``."""
        x = TF.to_dtype(images, torch.float32, scale=True)
        return embed(self.model, TF.normalize(x, self.mean, self.std), self.flip)


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported graph says about itself (its ``metadata_props``)."""

    input_size: tuple[int, int]
    pixel_mean: list[float]
    pixel_std: list[float]
    feat_dim: int
    feat_norm: bool
    flip: bool
    metric: str
    source_checkpoint: str
    source_sha256: str
    backbone: str

    def to_props(self) -> dict[str, str]:
        """Every field, and the input convention, as JSON text."""
        values = {**self.__dict__, "input": INPUT_CONVENTION}
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> OnnxMetadata:
        try:
            values = {key: json.loads(props[key]) for key in cls.__dataclass_fields__}
        except (KeyError, ValueError) as err:
            raise ReidError(
                f"{source} has no reid metadata ({err}); export it with tools/export.py"
            ) from None
        return cls(**{**values, "input_size": tuple(values["input_size"])})


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(module: DeployModel, metadata: OnnxMetadata, out: Path, opset: int | None) -> None:
    """Writes ``module`` as an ONNX graph with a dynamic batch axis and ``metadata``.

    Args:
        module: the model to export, on the CPU.
        metadata: stored in the graph's ``metadata_props``.
        out: the ``.onnx`` file to write.
        opset: ONNX opset; None lets torch choose.

    Raises:
        ReidError: onnx / onnxscript missing, the exporter failed, or it could not
            write the asked opset.
    """
    onnx = _import_optional("onnx")
    _import_optional("onnxscript")  # torch.onnx's exporter builds the graph with it
    height, width = metadata.input_size
    example = torch.zeros(2, 3, height, width, dtype=torch.uint8)
    # An opset torch cannot convert to is logged by onnxscript with a traceback; the
    # opset check below says it in one line instead.
    converter = logging.getLogger("onnxscript.version_converter")
    level = converter.level
    converter.setLevel(logging.ERROR)
    try:
        torch.onnx.export(
            module.eval(),
            (example,),
            str(out),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as err:  # the exporter raises many types
        raise ReidError(f"ONNX export failed: {str(err).strip().splitlines()[0]}") from None
    finally:
        converter.setLevel(level)
    graph = onnx.load(str(out))
    written = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:  # torch falls back to its lowest quietly
        raise ReidError(
            f"--opset {opset} cannot be honoured: torch's exporter wrote opset {written}; "
            f"ask for {written} or more, or leave --opset out"
        )
    for key, value in metadata.to_props().items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(out))


class OnnxModel:
    """An exported graph run by ONNX Runtime: uint8 ``(N, 3, H, W)`` -> features ``(N, D)``.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA when onnxruntime-gpu has it, else CPU), ``"cpu"`` or
            ``"cuda"``.

    Raises:
        ReidError: onnxruntime missing, a file that is not a reid ONNX graph, or CUDA
            asked for but unavailable to onnxruntime.
    """

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        ort = _import_optional("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise ReidError(f"ONNX model not found: {path}")
        available = ort.get_available_providers()
        gpu = "CUDAExecutionProvider"
        if device.startswith("cuda") and gpu not in available:
            raise ReidError(f"device {device!r}: onnxruntime has no CUDA (install onnxruntime-gpu)")
        use_gpu = gpu in available and device != "cpu"
        providers = [gpu, "CPUExecutionProvider"] if use_gpu else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own types for bad files
            reason = str(err).strip().splitlines()[0]
            raise ReidError(f"cannot load ONNX model {path}: {reason}") from None
        self.path = path
        self.device = "cuda" if use_gpu else "cpu"
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = OnnxMetadata.from_props(props, str(path))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Features of a uint8 ``(N, 3, H, W)`` batch, float32 ``(N, D)`` on the CPU."""
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return torch.from_numpy(features)


@dataclass(frozen=True)
class ParityReport:
    """How closely two sets of features of the same images agree."""

    num_query: int
    num_gallery: int
    max_abs_diff: float
    min_cosine: float
    same_topk: int  # queries whose top-k gallery lists are identical

    @property
    def ok(self) -> bool:
        return (
            self.max_abs_diff <= MAX_ABS_DIFF
            and self.min_cosine >= MIN_COSINE
            and self.same_topk == self.num_query
        )

    def __str__(self) -> str:
        return (
            f"parity on {self.num_query} queries x {self.num_gallery} gallery images: "
            f"max |diff| {self.max_abs_diff:.2e} (<= {MAX_ABS_DIFF:g}), min cosine "
            f"{self.min_cosine:.7f} (>= {MIN_COSINE}), identical top-{PARITY_TOPK} rankings "
            f"{self.same_topk}/{self.num_query}"
        )


def compare_features(
    reference: torch.Tensor, candidate: torch.Tensor, num_query: int, metric: str
) -> ParityReport:
    """Compares two ``(N, D)`` feature sets of the same images, queries first.

    The rankings are each query's top-k gallery items by ``metric`` distance.
    """
    if reference.shape != candidate.shape:
        raise ReidError(
            f"feature shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        )
    cosine = torch.nn.functional.cosine_similarity(reference.double(), candidate.double(), dim=1)
    k = min(PARITY_TOPK, len(reference) - num_query)

    def topk(feats: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distance(feats[:num_query], feats[num_query:], metric)
        return torch.argsort(torch.as_tensor(dist), dim=1, stable=True)[:, :k]

    same = (topk(reference) == topk(candidate)).all(dim=1)
    return ParityReport(
        num_query=num_query,
        num_gallery=len(reference) - num_query,
        max_abs_diff=float((reference - candidate).abs().max()),
        min_cosine=float(cosine.min()),
        same_topk=int(same.sum()),
    )
