"""TensorRT (``--format tensorrt``): a serialized engine built from the ONNX graph on
the GPU it will run on, with a dynamic batch profile, and its metadata in
``<file>.json`` beside it (an engine has no room for it).

The network is strongly typed: the precision is the graph's own (fp32, the fp16
graph of ``--precision fp16``, or int8's QuantizeLinear / DequantizeLinear pairs), which
is how TensorRT 11 builds every network and how TensorRT 10 builds it when asked.
tensorrt is optional (``pip install "reidkit[tensorrt]"``) and needs an NVIDIA GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from reid.deploy.formats import FORMATS, ExportedModel, ExportFormat, import_optional
from reid.deploy.metadata import ExportMetadata
from reid.deploy.modules import INPUT_NAME, OUTPUT_NAME
from reid.errors import ReidError
from reid.utils.io import write_text

# The engine's batch sizes: from 1 to MAX_BATCH, tuned for OPT_BATCH.
OPT_BATCH, MAX_BATCH = 32, 64
# Memory the builder may use for its tactics.
WORKSPACE_BYTES = 4 << 30


def sidecar_path(engine: Path) -> Path:
    """Where an engine's metadata lives: ``<file>.json``."""
    return engine.with_name(f"{engine.name}.json")


def _tensorrt():
    """The tensorrt module, with a GPU to build and run on; ReidError saying what is
    missing otherwise."""
    trt = import_optional("tensorrt", "tensorrt")
    if not torch.cuda.is_available():
        raise ReidError("TensorRT needs an NVIDIA GPU, and torch sees no CUDA device")
    return trt


def build_engine(graph: Path, metadata: ExportMetadata, out: Path) -> None:
    """Builds an engine from the ONNX file ``graph`` for batches of 1 to ``MAX_BATCH``,
    writes it to ``out`` and the metadata to :func:`sidecar_path`."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flags is None else 1 << int(flags))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ReidError(f"TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if hasattr(trt.BuilderFlag, "TF32"):  # fp32 means fp32, not TensorFloat-32
        config.clear_flag(trt.BuilderFlag.TF32)
    height, width = metadata.input_size
    profile = builder.create_optimization_profile()
    shape = (3, height, width)
    profile.set_shape(INPUT_NAME, (1, *shape), (OPT_BATCH, *shape), (MAX_BATCH, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ReidError("TensorRT could not build an engine from the graph (see its log above)")
    out.write_bytes(bytes(engine))
    write_text(sidecar_path(out), json.dumps(metadata.to_props(), indent=2) + "\n")


class TensorRTModel(ExportedModel):
    """An engine run by TensorRT on the GPU (see :class:`ExportedModel`); batches larger
    than the engine's profile are run in parts.

    Args:
        path: the ``.engine`` file, its ``.engine.json`` beside it.
        device: ``"auto"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ReidError: tensorrt or a GPU missing, a missing or unreadable engine or
            metadata file.
    """

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        trt = _tensorrt()
        path = Path(path)
        if device == "cpu":
            raise ReidError("a TensorRT engine runs on the GPU; device 'cpu' cannot run it")
        self.cuda = torch.device("cuda" if device == "auto" else device)
        sidecar = sidecar_path(path)
        if not path.is_file() or not sidecar.is_file():
            missing = path if not path.is_file() else sidecar
            raise ReidError(f"TensorRT model not found: {missing}")
        try:
            props = json.loads(sidecar.read_text())
        except ValueError as err:
            raise ReidError(f"{sidecar}: not JSON ({err})") from None
        self.metadata = ExportMetadata.from_props(props, str(sidecar))
        with torch.cuda.device(self.cuda):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ReidError(
                    f"cannot load TensorRT engine {path}: built by another TensorRT version "
                    "or for another GPU? Export it again on this machine"
                )
            self.context = self.engine.create_execution_context()
        self.path, self.device = path, str(self.cuda)
        self.max_batch = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0]

    def run(self, inputs: np.ndarray) -> np.ndarray:
        parts = []
        with torch.cuda.device(self.cuda):
            stream = torch.cuda.current_stream()
            for start in range(0, len(inputs), self.max_batch):
                batch = torch.from_numpy(inputs[start : start + self.max_batch]).to(self.cuda)
                features = torch.empty(
                    len(batch), self.metadata.feat_dim, dtype=torch.float32, device=self.cuda
                )
                self.context.set_input_shape(INPUT_NAME, tuple(batch.shape))
                self.context.set_tensor_address(INPUT_NAME, batch.data_ptr())
                self.context.set_tensor_address(OUTPUT_NAME, features.data_ptr())
                if not self.context.execute_async_v3(stream.cuda_stream):
                    raise ReidError(f"TensorRT failed to run {self.path}")
                parts.append(features)
            stream.synchronize()
        return torch.cat(parts).cpu().numpy() if parts else np.empty((0, self.metadata.feat_dim))


FORMATS.register("tensorrt")(
    ExportFormat(
        suffix=".engine",
        write=build_engine,
        load=TensorRTModel,
        files=lambda out: [out, sidecar_path(out)],
        check=_tensorrt,
        parity_device="cuda",
    )
)
