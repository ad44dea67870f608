"""Export a trained run to ONNX, proving it computes the same features:
python tools/export.py --run OUTPUT_DIR [--weights best.pth] [--out model.onnx] [--opset N]
    [--flip | --no-flip] [--parity-images DIR]

The graph takes uint8 RGB (N, 3, H, W) at INPUT.SIZE_TEST and normalises inside; its
metadata records that convention and the source checkpoint. Flip averaging is inside
the graph when the run evaluated with it (TEST.FLIP), unless --flip / --no-flip says
otherwise. After writing, the graph is run in ONNX Runtime and compared with the
PyTorch FeatureExtractor on parity images; a failed check keeps nothing and exits
non-zero. The parity images are, in this order of preference:
- --parity-images DIR: up to 64 images found under DIR (recursively, any names), spread
  evenly over their sorted paths; every fourth of those is a query, the others the
  gallery (16 queries x 48 gallery images from 64 or more images);
- the run's dataset, when it is on disk: 16 query and 48 gallery images spread over it;
- otherwise 64 synthetic pedestrians drawn in memory (seed 0): 16 identities, each with
  one query and three gallery images, so that no dataset is needed to export.
The first line printed says which were used.
"""

import argparse
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from yacs.config import CfgNode

from reid.data import build_dataset, test_set_names
from reid.data.datasets import DatasetError
from reid.data.synthetic import draw_pedestrians
from reid.deploy import OnnxMetadata, compare_features, export_onnx, file_sha256
from reid.errors import ReidError
from reid.extractor import FeatureExtractor, ImageInput, resolve_run
from reid.search import find_images
from reid.utils.cli import IMPORTS_HELP, ToolParser, module_list, run_cli
from reid.utils.io import make_output_dir
from reid.utils.logging import setup_logging

logger = logging.getLogger("reid.export")

# Images that the parity check embeds with both backends: queries, then gallery images.
PARITY_QUERIES, PARITY_GALLERY = 16, 48
# --parity-images: one query and enough gallery images for a ranking to compare.
MIN_PARITY_IMAGES = 4
# Without images on disk: identities drawn, each seen once as a query, then in the gallery.
SYNTHETIC_IDENTITIES, SYNTHETIC_VIEWS = PARITY_QUERIES, 4


def main() -> None:
    parser = ToolParser(__doc__)
    parser.add_argument("--run", required=True, help="a training's OUTPUT_DIR")
    parser.add_argument("--weights", help="checkpoint (default: the run's best.pth)")
    parser.add_argument("--out", help="the .onnx file (default: RUN/model.onnx)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: torch's choice)")
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="flip averaging inside the graph (default: the run's TEST.FLIP)",
    )
    parser.add_argument(
        "--parity-images",
        metavar="DIR",
        help="a folder of person images for the parity check (default: the run's dataset if "
        "it is on disk, else generated synthetic pedestrians)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--imports", type=module_list, metavar="MODULES", help=IMPORTS_HELP)
    args = parser.parse_args()

    setup_logging()
    run = Path(args.run)
    if not run.is_dir():
        raise ReidError(f"run directory not found: {run}")
    out = Path(args.out) if args.out else run / "model.onnx"
    if out.suffix != ".onnx":
        raise ReidError(f"--out must end in .onnx, got {out}")
    if out.is_dir():
        raise ReidError(f"--out {out} is a folder; expected an .onnx file path")
    if out.exists() and not args.overwrite:
        raise ReidError(f"{out} exists; pass --overwrite to replace it, or another --out")
    make_output_dir(out.parent, key="--out's folder")
    cfg, weights = resolve_run(run, args.weights, imports=args.imports)
    # The graph computes what was evaluated unless the user asks otherwise.
    flip = cfg.TEST.FLIP if args.flip is None else args.flip
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.FLIP = flip
    cfg.freeze()
    pytorch = FeatureExtractor(cfg, weights, device="cpu")
    metadata = OnnxMetadata(
        input_size=tuple(cfg.INPUT.SIZE_TEST),
        pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
        pixel_std=list(cfg.INPUT.PIXEL_STD),
        feat_dim=pytorch.feat_dim,
        feat_norm=cfg.TEST.FEAT_NORM,
        flip=flip,
        metric=cfg.TEST.METRIC,
        source_checkpoint=str(weights.resolve()),
        source_sha256=file_sha256(weights),
        backbone=cfg.MODEL.BACKBONE,
    )
    images, num_query, origin = _parity_images(cfg, args.parity_images)
    print(f"parity images: {origin}")

    # A name of its own, so that two exports to the same --out never share it.
    handle, name = tempfile.mkstemp(prefix=f".tmp-{out.stem}-", suffix=".onnx", dir=out.parent)
    os.close(handle)
    tmp = Path(name)
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


def _parity_images(cfg: CfgNode, folder: str | None) -> tuple[list[ImageInput], int, str]:
    """Query images then gallery images for the parity check (see the module docstring).

    Returns:
        The images, the number of queries among them, and where they came from.
    """
    if folder is not None:
        paths = _folder_images(Path(folder))
        # Every fourth a query: 16 x 48 of 64, as from a dataset, and both spread over DIR.
        images, num_query = _queries_first(paths, every=4)
        return images, num_query, f"{len(paths)} from --parity-images {folder}"
    name, root = test_set_names(cfg)[0], Path(cfg.DATASETS.ROOT)
    # A missing root is checked first: the synthetic dataset would be drawn into it.
    if not root.is_dir():
        return _drawn_images(f"the dataset {name} is not at {root}")
    try:
        dataset = build_dataset(cfg, name)
    except DatasetError as err:
        return _drawn_images(f"the dataset {name} is not usable: {err}")
    queries = _spread([r.path for r in dataset.query], PARITY_QUERIES)
    gallery = _spread([r.path for r in dataset.gallery], PARITY_GALLERY)
    images = queries + gallery
    return images, len(queries), f"{len(images)} from the dataset {name} at {root}"


def _folder_images(folder: Path) -> list[Path]:
    """Up to 64 images under ``folder``, spread over their sorted paths."""
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "not found"
        raise ReidError(f"--parity-images {folder}: {problem}; expected a folder of images")
    try:
        paths = find_images(folder)
    except ReidError as err:
        raise ReidError(f"--parity-images: {err}") from None
    if len(paths) < MIN_PARITY_IMAGES:
        raise ReidError(
            f"--parity-images {folder}: {len(paths)} image(s), expected at least "
            f"{MIN_PARITY_IMAGES} (queries and a gallery to rank)"
        )
    return _spread(paths, PARITY_QUERIES + PARITY_GALLERY)


def _drawn_images(reason: str) -> tuple[list[ImageInput], int, str]:
    """Synthetic pedestrians (the extractors resize them): one query per identity, then
    the rest."""
    drawn = [image for _, image in draw_pedestrians(SYNTHETIC_IDENTITIES, SYNTHETIC_VIEWS)]
    images, num_query = _queries_first(drawn, every=SYNTHETIC_VIEWS)
    return images, num_query, f"{len(drawn)} generated synthetic pedestrians ({reason})"


def _queries_first(items: list, every: int) -> tuple[list, int]:
    """Every ``every``-th item as a query, the others as the gallery: ``(queries then
    gallery, number of queries)``."""
    queries = items[::every]
    gallery = [item for i, item in enumerate(items) if i % every]
    return queries + gallery, len(queries)


def _spread(items: list, count: int) -> list:
    """At most ``count`` of ``items``, evenly spaced from the first to the last, in order."""
    rows = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    return [items[i] for i in sorted(set(rows.tolist()))]


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
