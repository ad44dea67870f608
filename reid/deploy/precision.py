"""Reduced precision, applied to the ONNX graph before any format is written from it.

- fp16: weights and activations in float16 (ONNX Runtime's float16 converter), the
  graph's input and output keeping their types, so callers feed it as before.
- int8: ONNX Runtime's static quantisation, calibrated on images: symmetric int8
  QuantizeLinear / DequantizeLinear pairs (zero point 0, which TensorRT also requires)
  around the Conv, MatMul and Gemm layers, weights per output channel.

Both come from onnxruntime (``pip install "reidkit[export]"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from reid.deploy.formats import import_optional
from reid.deploy.metadata import ExportMetadata
from reid.deploy.modules import INPUT_NAME
from reid.deploy.onnx_runtime import write_onnx_metadata
from reid.errors import ReidError

# The layers int8 quantises: where the time goes. Norms, pooling and the final L2
# normalisation stay in float32.
INT8_OPS = ["Conv", "MatMul", "Gemm"]


def to_fp16(graph: Path, metadata: ExportMetadata, out: Path) -> None:
    """Writes ``graph`` (an fp32 ONNX file) to ``out`` with float16 weights and
    activations; the input and output keep their types."""
    onnx = import_optional("onnx", "export")
    float16 = import_optional("onnxruntime.transformers.float16", "export")
    converted = float16.convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True)
    write_onnx_metadata(converted, metadata, out)


def quantize_int8(
    graph: Path, metadata: ExportMetadata, out: Path, calibration: Iterable[np.ndarray]
) -> None:
    """Writes ``graph`` (an fp32 ONNX file) to ``out`` quantised to int8.

    Args:
        graph, metadata, out: the fp32 graph, its metadata, the int8 file to write.
        calibration: batches of the graph's input (as the graph takes it: uint8 pixels,
            or ImageNet-normalised floats for the float profile); the activation ranges
            are their minima and maxima.
    """
    onnx = import_optional("onnx", "export")
    quantization = import_optional("onnxruntime.quantization", "export")

    class Batches(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = out.with_name(f"{out.stem}.prepared.onnx")
    try:
        # Shape inference and BatchNorm folded into the convolutions first, as ONNX
        # Runtime advises, so each quantised Conv carries its BatchNorm.
        quantization.shape_inference.quant_pre_process(
            str(graph), str(prepared), skip_symbolic_shape=True
        )
        quantization.quantize_static(
            str(prepared),
            str(out),
            Batches(),
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=INT8_OPS,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    except Exception as err:  # the quantiser raises many types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReidError(f"int8 quantisation failed: {reason}") from None
    finally:
        prepared.unlink(missing_ok=True)
    write_onnx_metadata(onnx.load(str(out)), metadata, out)
