"""Deployment: the evaluation model as one images-in, features-out module, its exports
(ONNX, OpenVINO, TensorRT; fp32, fp16 or int8) with the input convention and provenance
stored in them, the runtimes that run them, and the gates that prove an export computes
the PyTorch features (fp32) or keeps its accuracy (fp16, int8).

Every runtime is optional and imported only by the functions that need it.
"""

from reid.deploy import onnx_runtime, openvino_ir, tensorrt_engine  # noqa: F401 (formats)
from reid.deploy.formats import FORMATS, ExportedModel, ExportFormat, format_of, load_exported
from reid.deploy.gate import (
    AccuracyReport,
    ParityReport,
    compare_accuracy,
    compare_features,
)
from reid.deploy.metadata import (
    PRECISIONS,
    ExportMetadata,
    boxmot_sidecar_path,
    file_sha256,
)
from reid.deploy.modules import (
    INPUT_PROFILES,
    DeployModel,
    FloatInputDeployModel,
    tracker_input,
)
from reid.deploy.onnx_runtime import OnnxModel, export_onnx
from reid.deploy.precision import quantize_int8, to_fp16

__all__ = [
    "FORMATS",
    "INPUT_PROFILES",
    "PRECISIONS",
    "AccuracyReport",
    "DeployModel",
    "ExportFormat",
    "ExportMetadata",
    "ExportedModel",
    "FloatInputDeployModel",
    "OnnxModel",
    "ParityReport",
    "boxmot_sidecar_path",
    "compare_accuracy",
    "compare_features",
    "export_onnx",
    "file_sha256",
    "format_of",
    "load_exported",
    "quantize_int8",
    "to_fp16",
    "tracker_input",
]
