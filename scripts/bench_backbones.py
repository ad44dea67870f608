"""Sizes of every registered backbone and the training throughput of one.

For each backbone: parameters (alone, and with a BNNeck head of NUM_CLASSES
identities), the output map and feature dimension at 256x128 with last stride 1.
Then forward+backward images/s of one backbone (ResNet-50 by default) in training
mode with a 751-class head (Market-1501's training identities).

    python scripts/bench_backbones.py [--backbone resnet50] [--batch-size 16]

(with the package installed, ``pip install -e .``, or ``PYTHONPATH=.``).
"""

import argparse
import time

import torch

from reid.models import BACKBONES, BNNeckHead, ReidModel

HEIGHT, WIDTH = 256, 128
NUM_CLASSES = 751


def count_params(module: torch.nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in module.parameters())


def describe(name: str) -> str:
    """One table row: parameter counts, output map and feature size of a backbone."""
    backbone = BACKBONES.get(name)(last_stride=1).eval()
    model = ReidModel(backbone, BNNeckHead(backbone.out_channels, NUM_CLASSES))
    with torch.no_grad():
        fmap = backbone(torch.zeros(1, 3, HEIGHT, WIDTH))
    shape = "x".join(str(s) for s in fmap.shape[1:])
    return (
        f"{name:<16}{count_params(backbone) / 1e6:>12.2f}M{count_params(model) / 1e6:>12.2f}M"
        f"{shape:>14}{backbone.out_channels:>10}"
    )


def throughput(name: str, batch_size: int, warmup: int, iters: int, device: str) -> float:
    """Training images per second (forward, cross-entropy, backward) of one backbone."""
    backbone = BACKBONES.get(name)(last_stride=1)
    model = ReidModel(backbone, BNNeckHead(backbone.out_channels, NUM_CLASSES)).to(device)
    model.train()
    images = torch.randn(batch_size, 3, HEIGHT, WIDTH, device=device)
    pids = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

    def step() -> None:
        outputs = model(images)
        loss = torch.nn.functional.cross_entropy(outputs["logits"], pids) + outputs["feat"].mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch_size * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", help="backbone to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-table", action="store_true", help="only time --backbone")
    args = parser.parse_args()

    torch.manual_seed(0)
    if not args.skip_table:
        print(f"input {HEIGHT}x{WIDTH}, last stride 1, head with {NUM_CLASSES} classes")
        print(f"{'backbone':<16}{'params':>13}{'+head':>13}{'map CxHxW':>14}{'feat dim':>10}")
        for name in BACKBONES.names():
            print(describe(name))
    rate = throughput(args.backbone, args.batch_size, args.warmup, args.iters, args.device)
    threads = torch.get_num_threads()
    print(
        f"{args.backbone} train fwd+bwd {HEIGHT}x{WIDTH} batch {args.batch_size} on "
        f"{args.device} ({threads} threads): {rate:.1f} img/s"
    )


if __name__ == "__main__":
    main()
