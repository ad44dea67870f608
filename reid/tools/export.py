"""Export a trained run to ONNX, proving it computes the same features:
python tools/export.py --run OUTPUT_DIR [--weights best.pth] [--out model.onnx] [--opset N] [--flip]

The graph takes uint8 RGB (N, 3, H, W) at INPUT.SIZE_TEST and normalises inside; its
metadata records that convention and the source checkpoint. After writing, the graph
is run in ONNX Runtime on query and gallery images of the run's dataset and compared
with the PyTorch FeatureExtractor; a failed check keeps nothing and exits non-zero.
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from reid.data import build_dataset
from reid.deploy import OnnxMetadata, compare_features, export_onnx, file_sha256
from reid.errors import ReidError
from reid.extractor import FeatureExtractor, resolve_run
from reid.utils.cli import run_cli
from reid.utils.logging import setup_logging

logger = logging.getLogger("reid.export")

# Images of the run's dataset that the parity check embeds with both backends.
PARITY_QUERIES, PARITY_GALLERY = 16, 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True, help="a training's OUTPUT_DIR")
    parser.add_argument("--weights", help="checkpoint (default: the run's best.pth)")
    parser.add_argument("--out", help="the .onnx file (default: RUN/model.onnx)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: torch's choice)")
    parser.add_argument("--flip", action="store_true", help="flip averaging inside the graph")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()

    setup_logging()
    run = Path(args.run)
    if not run.is_dir():
        raise ReidError(f"run directory not found: {run}")
    out = Path(args.out) if args.out else run / "model.onnx"
    if out.suffix != ".onnx":
        raise ReidError(f"--out must end in .onnx, got {out}")
    if out.exists() and not args.overwrite:
        raise ReidError(f"{out} exists; pass --overwrite to replace it, or another --out")
    cfg, weights = resolve_run(run, args.weights)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.FLIP = args.flip
    cfg.freeze()
    pytorch = FeatureExtractor(cfg, weights, device="cpu")
    metadata = OnnxMetadata(
        input_size=tuple(cfg.INPUT.SIZE_TEST),
        pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
        pixel_std=list(cfg.INPUT.PIXEL_STD),
        feat_dim=pytorch.feat_dim,
        feat_norm=cfg.TEST.FEAT_NORM,
        flip=args.flip,
        metric=cfg.TEST.METRIC,
        source_checkpoint=str(weights.resolve()),
        source_sha256=file_sha256(weights),
        backbone=cfg.MODEL.BACKBONE,
    )
    images, num_query = _parity_images(cfg)

    tmp = out.with_name(f".tmp-{out.name}")
    try:
        export_onnx(pytorch.backend, metadata, tmp, args.opset)
        report = compare_features(
            pytorch(images), FeatureExtractor(tmp, device="cpu")(images), num_query, cfg.TEST.METRIC
        )
        print(report)
        if not report.ok:
            raise ReidError(f"parity check failed, nothing written: {report}")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    height, width = metadata.input_size
    print(f"wrote {out}: uint8 RGB (N, 3, {height}, {width}) -> {metadata.feat_dim}-d features")


def _parity_images(cfg) -> tuple[list[str], int]:
    """Paths of query images then gallery images of the run's dataset, spread over it."""
    dataset = build_dataset(cfg)
    picked = []
    for records, count in ((dataset.query, PARITY_QUERIES), (dataset.gallery, PARITY_GALLERY)):
        rows = np.linspace(0, len(records) - 1, min(count, len(records))).round().astype(int)
        picked.append([records[i].path for i in sorted(set(rows.tolist()))])
    return picked[0] + picked[1], len(picked[0])


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
