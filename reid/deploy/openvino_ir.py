"""OpenVINO (``--format openvino``): the ONNX graph converted to OpenVINO's IR
(``model.xml`` with its weights in ``model.bin``), the metadata in the IR's ``rt_info``,
run by the OpenVINO runtime on Intel CPUs, GPUs and NPUs.

openvino is optional (``pip install "reidkit[openvino]"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reid.deploy.formats import FORMATS, ExportedModel, ExportFormat, import_optional
from reid.deploy.metadata import ExportMetadata
from reid.deploy.modules import OUTPUT_NAME
from reid.errors import ReidError

# Where the metadata lives in the IR's rt_info.
RT_INFO_SECTION = "reid"


def write_ir(graph: Path, metadata: ExportMetadata, out: Path) -> None:
    """Converts the ONNX file ``graph`` to an IR at ``out`` (and ``out.with_suffix(".bin")``),
    keeping the graph's weight types: fp32 stays fp32, fp16 and int8 stay as they are."""
    ov = import_optional("openvino", "openvino")
    try:
        model = ov.convert_model(str(graph))
    except Exception as err:  # the converter raises its own types
        reason = str(err).strip().splitlines()[-1]
        raise ReidError(f"OpenVINO cannot convert the graph: {reason}") from None
    for key, value in metadata.to_props().items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    # OpenVINO halves fp32 weights by default; the precision is --precision's to choose.
    ov.save_model(model, str(out), compress_to_fp16=False)


class OpenVinoModel(ExportedModel):
    """An IR run by OpenVINO (see :class:`ExportedModel`).

    Args:
        path: the ``.xml`` file, its ``.bin`` beside it.
        device: ``"auto"`` or ``"cpu"`` for the CPU, or an OpenVINO device name such as
            ``"GPU"`` or ``"NPU"``.

    Raises:
        ReidError: openvino missing, a file that is not a reid IR, or a device OpenVINO
            does not have.
    """

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        ov = import_optional("openvino", "openvino")
        path = Path(path)
        if not path.is_file():
            raise ReidError(f"OpenVINO model not found: {path}")
        core = ov.Core()
        target = "CPU" if device in ("auto", "cpu") else device.upper()
        if target not in core.available_devices:
            raise ReidError(f"device {device!r}: OpenVINO has {', '.join(core.available_devices)}")
        try:
            model = core.read_model(str(path))
        except Exception as err:  # OpenVINO raises its own types for bad files
            # OpenVINO's messages say where in its sources first, what went wrong last.
            reason = str(err).strip().splitlines()[-1]
            raise ReidError(f"cannot load OpenVINO model {path}: {reason}") from None
        props = {
            key: model.get_rt_info([RT_INFO_SECTION, key]).astype(str)
            for key in ExportMetadata.__dataclass_fields__
            if model.has_rt_info([RT_INFO_SECTION, key])
        }
        self.metadata = ExportMetadata.from_props(props, str(path))
        # Some CPUs would run fp32 layers in bf16 by default; the export's precision is
        # in its weights, and everything else is computed in fp32.
        self.compiled = core.compile_model(model, target, {"INFERENCE_PRECISION_HINT": "f32"})
        self.path, self.device = path, target.lower()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.compiled(inputs)[self.compiled.output(OUTPUT_NAME)]


FORMATS.register("openvino")(
    ExportFormat(
        suffix=".xml",
        write=write_ir,
        load=OpenVinoModel,
        files=lambda out: [out, out.with_suffix(".bin")],
        check=lambda: import_optional("openvino", "openvino"),
    )
)
