"""What an exported model says about itself, whatever its format, and BoxMOT's sidecar."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from reid.deploy.modules import INPUT_PROFILES
from reid.errors import ReidError

# The numeric precisions of an export (--precision): the fp32 graph, its weights and
# activations in float16, or int8 by ONNX Runtime's static quantisation.
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported model says about itself: in an ONNX graph's ``metadata_props``,
    an OpenVINO IR's ``rt_info``, or a TensorRT engine's ``<file>.json``; every value is
    stored as JSON text."""

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
    # "uint8" or "float" (INPUT_PROFILES); graphs exported before profiles are uint8.
    input_profile: str = "uint8"
    # One of PRECISIONS; exports made before precisions are fp32.
    precision: str = "fp32"

    def to_props(self) -> dict[str, str]:
        """Every field, and the input convention, as JSON text."""
        values = {**self.__dict__, "input": INPUT_PROFILES[self.input_profile]}
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> ExportMetadata:
        """The metadata stored by :meth:`to_props`; ReidError naming ``source`` when it
        has none or an unknown value."""
        optional = {"input_profile", "precision"}
        try:
            values = {
                key: json.loads(props[key])
                for key in cls.__dataclass_fields__
                if key in props or key not in optional
            }
        except (KeyError, ValueError) as err:
            raise ReidError(
                f"{source} has no reid metadata ({err}); export it with tools/export.py"
            ) from None
        for key, known in (("input_profile", INPUT_PROFILES), ("precision", PRECISIONS)):
            if values.get(key, cls.__dataclass_fields__[key].default) not in known:
                raise ReidError(
                    f"{source}: unknown {key.replace('_', ' ')} {values[key]!r}; "
                    f"expected one of {', '.join(known)}"
                )
        return cls(**{**values, "input_size": tuple(values["input_size"])})

    def boxmot_sidecar(self, num_classes: int | None) -> dict:
        """BoxMOT's artifact metadata (``<file>.onnx.metadata.json``) of a float graph.

        BoxMOT reads the crop size from ``model_kwargs.img_size`` ([H, W]) and picks its
        normalisation by ``model_name`` (0.5 / 0.5 for names containing "clip", ImageNet
        otherwise); the float graph expects ImageNet, so the name never contains "clip".
        """
        height, width = self.input_size
        name = self.backbone.replace("clip", "vl")
        return {
            "schema_version": 1,
            "model_name": name,
            "num_classes": num_classes,
            "source": self.source_checkpoint,
            "source_sha256": self.source_sha256,
            "preprocess": "resize",
            "model_kwargs_schema_version": 1,
            "model_kwargs": {"img_size": [height, width]},
            "img_size": [height, width],
        }


def boxmot_sidecar_path(graph: str | Path) -> Path:
    """Where BoxMOT looks for a graph's metadata: ``<file>.onnx.metadata.json``."""
    graph = Path(graph)
    return graph.with_name(f"{graph.name}.metadata.json")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
