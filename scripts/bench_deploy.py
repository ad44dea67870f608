"""CPU feature-extraction throughput of each deployment format, same model and inputs:

    python scripts/bench_deploy.py [--backbones resnet50 osnet_x1_0] [--size 256 128]
        [--batches 1 32] [--repeats 10]

For each backbone: PyTorch eager, ONNX Runtime fp32, ONNX Runtime int8 and OpenVINO
fp32, each running the deployed model (reid.deploy.DeployModel: uint8 in, normalisation
and the BNNeck feature inside) with random weights, which do not change the speed; int8
is calibrated on synthetic pedestrians. Prints one table of images per second per batch
size (the median of timed repeats after a warm-up), with the machine it ran on.
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reid.config import load_cfg
from reid.data.synthetic import draw_pedestrians
from reid.deploy import (
    FORMATS,
    DeployModel,
    ExportMetadata,
    export_onnx,
    load_exported,
    quantize_int8,
)
from reid.models import build_model


def throughput(run, batch: np.ndarray, repeats: int) -> float:
    """Images per second of ``run(batch)``: the median of ``repeats`` timed calls."""
    run(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def cpu_name() -> str:
    """The CPU's model name, as Linux reports it."""
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def runners(backbone: str, size: list[int], folder: Path) -> dict:
    """The backbone's deployed model in each format: ``{name: batch -> features}``."""
    cfg = load_cfg(opts=["MODEL.BACKBONE", backbone, "INPUT.SIZE_TEST", f"[{size[0]}, {size[1]}]"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=751, load_pretrained_weights=False)
    module = DeployModel(model, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, flip=False).eval()
    metadata = ExportMetadata(
        input_size=tuple(size), pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
        pixel_std=list(cfg.INPUT.PIXEL_STD), feat_dim=model.feat_dim, feat_norm=True,
        flip=False, metric="cosine", source_checkpoint="random", source_sha256="",
        backbone=backbone,
    )  # fmt: skip
    graph = folder / f"{backbone}.onnx"
    export_onnx(module, metadata, graph, opset=None)
    people = [image.resize((size[1], size[0])) for _, image in draw_pedestrians(16, 4)]
    pixels = np.stack([np.asarray(image).transpose(2, 0, 1) for image in people])
    int8 = folder / f"{backbone}_int8.onnx"
    quantize_int8(graph, metadata, int8, (pixels[i : i + 16] for i in range(0, len(pixels), 16)))
    ir = folder / f"{backbone}.xml"
    FORMATS.get("openvino").write(graph, metadata, ir)

    def eager(batch: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return module(torch.from_numpy(batch))

    return {
        "PyTorch eager": eager,
        "ORT fp32": load_exported(graph, "cpu"),
        "ORT int8": load_exported(int8, "cpu"),
        "OpenVINO fp32": load_exported(ir, "cpu"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "osnet_x1_0"])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    height, width = args.size
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; images/s at {height}x{width}")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            for name, run in runners(backbone, args.size, Path(folder)).items():
                speeds = []
                for batch_size in args.batches:
                    batch = rng.integers(0, 256, (batch_size, 3, *args.size), dtype=np.uint8)
                    speeds.append(throughput(run, batch, args.repeats))
                rows.append((backbone, name, speeds))
    header = " | ".join(f"batch {b}" for b in args.batches)
    print(f"| backbone | runtime | {header} |")
    print("|" + " --- |" * (2 + len(args.batches)))
    for backbone, name, speeds in rows:
        print(f"| {backbone} | {name} | " + " | ".join(f"{s:.1f}" for s in speeds) + " |")


if __name__ == "__main__":
    main()
