"""CPU feature-extraction throughput: PyTorch eager vs ONNX Runtime, same model and inputs.

    python scripts/bench_onnx.py [--backbone resnet50] [--size 256 128] [--batches 1 32]

The model is the deployed one (reid.deploy.DeployModel: uint8 in, normalisation and the
BNNeck feature inside) with random weights, which do not change the speed. Prints img/s
per batch size, median of timed repeats after a warm-up, and the largest difference
between the two backends' features.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reid.config import load_cfg
from reid.deploy import DeployModel, OnnxMetadata, OnnxModel, export_onnx
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    size = [str(s) for s in args.size]
    cfg = load_cfg(opts=["MODEL.BACKBONE", args.backbone, "INPUT.SIZE_TEST", f"[{','.join(size)}]"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=751, load_pretrained_weights=False)
    module = DeployModel(model, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, flip=False).eval()
    metadata = OnnxMetadata(
        input_size=tuple(args.size), pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
        pixel_std=list(cfg.INPUT.PIXEL_STD), feat_dim=model.feat_dim, feat_norm=True,
        flip=False, metric="cosine", source_checkpoint="random", source_sha256="",
        backbone=args.backbone,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(module, metadata, path, opset=None)
        onnx = OnnxModel(path, device="cpu")

        def eager(batch: np.ndarray) -> torch.Tensor:
            with torch.inference_mode():
                return module(torch.from_numpy(batch))

        print(
            f"{args.backbone} at {args.size[0]}x{args.size[1]}, {torch.get_num_threads()} threads"
        )
        print(f"{'batch':>5} | {'PyTorch img/s':>13} | {'ONNX Runtime img/s':>18} | max |diff|")
        rng = np.random.default_rng(0)
        for batch_size in args.batches:
            batch = rng.integers(0, 256, (batch_size, 3, *args.size), dtype=np.uint8)
            diff = (eager(batch) - onnx(batch)).abs().max().item()
            torch_speed = throughput(eager, batch, args.repeats)
            onnx_speed = throughput(onnx, batch, args.repeats)
            print(f"{batch_size:>5} | {torch_speed:>13.1f} | {onnx_speed:>18.1f} | {diff:.1e}")


if __name__ == "__main__":
    main()
