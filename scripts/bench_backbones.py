"""Every registered backbone (and some torchvision and timm ones): size, cost, speed.

For each: parameters (backbone alone), output map at 256x128 with last stride 1 where
the model allows it (ViTs are built for 256x128 and give one pooled token, their last
stride shown as "-"), GFLOPs of one image's forward pass (torch.utils.flop_counter,
counting a multiply-add as 2 FLOPs), and CPU images/s in training (forward, loss,
backward, with a BNNeck head of 751 identities) and in inference (test features).

    python scripts/bench_backbones.py [--batch-size 16] [--iters 3] [--only resnet50 ...]

Timings are the median of --iters timed steps after one warm-up step, on this
process's torch threads.
"""

import argparse
import importlib.util
import inspect
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from reid.errors import ReidError
from reid.models import BACKBONES, BNNeckHead, ReidModel

HEIGHT, WIDTH = 256, 128
NUM_CLASSES = 751
TORCHVISION = [
    "torchvision/resnet50",
    "torchvision/convnext_tiny",
    "torchvision/efficientnet_b0",
    "torchvision/mobilenet_v3_large",
    "torchvision/regnet_y_800mf",
]
# Benchmarked when timm is installed (pip install "reidkit[timm]"); built with random
# weights, so nothing is downloaded.
TIMM = [
    "timm/resnet50",
    "timm/convnext_tiny",
    "timm/vit_base_patch16_224",
    "timm/vit_base_patch16_clip_224.openai",
    "timm/vit_small_patch14_dinov2.lvd142m",
]


def build(name: str) -> tuple[ReidModel, int | str]:
    """The backbone with a BNNeck head, at last stride 1 if it can, else 2 ("-" for a
    ViT, built for HEIGHT x WIDTH)."""
    factory = BACKBONES.get(name)
    sized = (
        {"img_size": (HEIGHT, WIDTH)} if "img_size" in inspect.signature(factory).parameters else {}
    )
    for last_stride in (1, 2):
        try:
            backbone = factory(last_stride=last_stride, **sized)
        except ReidError:
            continue
        model = ReidModel(backbone, BNNeckHead(backbone.out_channels, NUM_CLASSES))
        return model, "-" if getattr(backbone, "pooled", False) else last_stride
    raise ReidError(f"{name} builds with neither last stride")


def median_seconds(step, iters: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, batch_size: int, iters: int) -> str:
    """One table row."""
    model, last_stride = build(name)
    params = sum(p.numel() for p in model.backbone.parameters())
    images = torch.randn(batch_size, 3, HEIGHT, WIDTH)
    pids = torch.randint(0, NUM_CLASSES, (batch_size,))
    model.eval()
    with torch.no_grad():
        fmap = model.backbone(images[:1])
        counter = FlopCounterMode(display=False)
        with counter:
            model(images[:1])
    shape = "x".join(str(s) for s in fmap.shape[1:])

    def train_step() -> None:
        outputs = model(images)
        loss = torch.nn.functional.cross_entropy(outputs["logits"], pids) + outputs["feat"].mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    def inference_step() -> None:
        with torch.inference_mode():
            model(images)

    model.train()
    train = batch_size / median_seconds(train_step, iters)
    model.eval()
    infer = batch_size / median_seconds(inference_step, iters)
    return (
        f"| {name} | {last_stride} | {params / 1e6:.2f} | {shape} | "
        f"{counter.get_total_flops() / 1e9:.2f} | {train:.1f} | {infer:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per figure")
    parser.add_argument("--only", nargs="+", help="backbone names (default: all)")
    args = parser.parse_args()

    torch.manual_seed(0)
    timm = TIMM if importlib.util.find_spec("timm") else []
    names = args.only or BACKBONES.names() + TORCHVISION + timm
    print(
        f"input {HEIGHT}x{WIDTH}, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads"
    )
    print("| backbone | last stride | params (M) | map CxHxW | GFLOPs/img | train img/s | "
          "inference img/s |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name in names:
        print(measure(name, args.batch_size, args.iters), flush=True)


if __name__ == "__main__":
    main()
