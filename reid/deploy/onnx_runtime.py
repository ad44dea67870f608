"""ONNX: the graph every format starts from (:func:`export_onnx`), and ONNX Runtime
running it (``--format onnx``, the default).

onnx, onnxscript and onnxruntime are optional (``pip install "reidkit[export]"``).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from reid.deploy.formats import FORMATS, ExportedModel, ExportFormat, import_optional
from reid.deploy.metadata import ExportMetadata
from reid.deploy.modules import INPUT_NAME, OUTPUT_NAME, DeployModel, FloatInputDeployModel
from reid.errors import ReidError

# torch's dynamo exporter writes opset 18 or later; older opsets (trackers' runtimes ask
# for 17) come from its TorchScript exporter, whose graphs every ONNX Runtime runs.
DYNAMO_MIN_OPSET = 18


def export_onnx(
    module: DeployModel | FloatInputDeployModel,
    metadata: ExportMetadata,
    out: Path,
    opset: int | None,
) -> None:
    """Writes ``module`` as an ONNX graph with a dynamic batch axis and ``metadata``.

    Args:
        module: the model to export, on the CPU.
        metadata: stored in the graph's ``metadata_props``.
        out: the ``.onnx`` file to write.
        opset: ONNX opset; None lets torch choose. Below 18 the graph is traced by
            torch's TorchScript exporter, which writes those opsets natively.

    Raises:
        ReidError: onnx / onnxscript missing, the exporter failed, or it could not
            write the asked opset.
    """
    onnx = import_optional("onnx", "export")
    height, width = metadata.input_size
    example = torch.zeros(2, 3, height, width, dtype=module.input_dtype)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    try:
        if opset is not None and opset < DYNAMO_MIN_OPSET:
            with warnings.catch_warnings():  # its deprecation notice
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module.eval(), (example,), str(out), **names, opset_version=opset,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    dynamo=False,
                )  # fmt: skip
        else:
            import_optional("onnxscript", "export")  # the dynamo exporter builds with it
            torch.onnx.export(
                module.eval(), (example,), str(out), **names, opset_version=opset,
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                dynamo=True, external_data=False, verbose=False,
            )  # fmt: skip
    except Exception as err:  # the exporters raise many types
        at = "" if opset is None else f" at --opset {opset}"
        raise ReidError(f"ONNX export failed{at}: {str(err).strip().splitlines()[0]}") from None
    graph = onnx.load(str(out))
    written = next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:  # torch falls back to its lowest quietly
        raise ReidError(
            f"--opset {opset} cannot be honoured: torch's exporter wrote opset {written} "
            f"instead; ask for {written}, or leave --opset out"
        )
    # The TorchScript exporter leaves the feature size symbolic; it is known.
    (output,) = graph.graph.output
    output.type.tensor_type.shape.dim[1].dim_value = metadata.feat_dim
    write_onnx_metadata(graph, metadata, out)


def write_onnx_metadata(graph, metadata: ExportMetadata, out: Path) -> None:
    """Saves the ONNX ``graph`` (a ModelProto) to ``out`` with ``metadata`` as its
    ``metadata_props``, replacing what it had."""
    del graph.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    import_optional("onnx", "export").save(graph, str(out))


class OnnxModel(ExportedModel):
    """An exported graph run by ONNX Runtime (see :class:`ExportedModel`).

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA when onnxruntime-gpu has it, else CPU), ``"cpu"`` or
            ``"cuda"``.

    Raises:
        ReidError: onnxruntime missing, a file that is not a reid ONNX graph, or CUDA
            asked for but unavailable to onnxruntime.
    """

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        ort = import_optional("onnxruntime", "export")
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
        self.metadata = ExportMetadata.from_props(props, str(path))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        return features


FORMATS.register("onnx")(
    ExportFormat(
        suffix=".onnx",
        write=lambda graph, metadata, out: shutil.copyfile(graph, out),
        load=OnnxModel,
        files=lambda out: [out],
        check=lambda: import_optional("onnxruntime", "export"),
    )
)
