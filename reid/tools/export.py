"""Export a trained run for deployment, proving it computes the same features:
python tools/export.py --run OUTPUT_DIR [--format onnx | openvino | tensorrt]
    [--precision fp32 | fp16 | int8] [--input uint8 | float] [--weights best.pth]
    [--out FILE] [--opset N] [--flip | --no-flip] [--parity-images DIR]
    [--calibration-images DIR] [--max-map-drop POINTS]

Formats: onnx (ONNX Runtime; the default), openvino (an OpenVINO IR, model.xml with
model.bin; pip install "reidkit[openvino]") and tensorrt (a serialized engine built on
this machine's NVIDIA GPU with a dynamic batch profile, its metadata in
model.engine.json; pip install "reidkit[tensorrt]"). Every format is converted from the
ONNX graph, which holds the precision: fp32, fp16 (weights and activations) or int8
(ONNX Runtime's static quantisation, calibrated on 256 training images of the run's
dataset or of --calibration-images DIR).

With --input uint8 (the default) the model takes uint8 RGB (N, 3, H, W) at
INPUT.SIZE_TEST and normalises inside. With --input float, the profile of trackers such
as BoxMOT, it takes float32 RGB (N, 3, H, W) that the caller scaled to [0, 1] and
normalised with ImageNet's mean and std, and converts to the run's INPUT.PIXEL_MEAN /
PIXEL_STD inside; it is written at opset 17 unless --opset says otherwise, with BoxMOT's
sidecar <out>.metadata.json (the crop size) beside it. The model's metadata records the
input convention, the precision and the source checkpoint. Flip averaging is inside
the model when the run evaluated with it (TEST.FLIP), unless --flip / --no-flip says
otherwise.

Before anything is written, a gate runs the exported model (tensorrt: on the GPU):
- fp32: parity with the PyTorch model on parity images, fed as the model is fed
  (float: resized, /255, ImageNet-normalised). The parity images are, in this order of
  preference:
  - --parity-images DIR: up to 64 images found under DIR (recursively, any names),
    spread evenly over their sorted paths; every fourth of those is a query, the others
    the gallery (16 queries x 48 gallery images from 64 or more images);
  - the run's dataset, when it is on disk: 16 query and 48 gallery images spread over it;
  - otherwise 64 synthetic pedestrians drawn in memory (seed 0): 16 identities, each
    with one query and three gallery images, so that no dataset is needed to export.
- fp16 and int8: accuracy. The PyTorch model and the export are evaluated on the same
  labelled images (--parity-images DIR, each subfolder one identity; else the run's
  whole test set under its protocol; else the synthetic pedestrians), their rank-1 and
  mAP printed side by side; more than --max-map-drop mAP points lost (default 1.0)
  writes nothing.
A failed gate keeps nothing and exits non-zero. The first line printed says which
images were used.
"""

import argparse
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from yacs.config import CfgNode

from reid.data import ReidDataset, build_dataset, test_set_names
from reid.data.datasets import DatasetError
from reid.data.synthetic import draw_pedestrians
from reid.deploy import (
    FORMATS,
    INPUT_PROFILES,
    PRECISIONS,
    ExportMetadata,
    FloatInputDeployModel,
    boxmot_sidecar_path,
    compare_accuracy,
    compare_features,
    export_onnx,
    file_sha256,
    quantize_int8,
    to_fp16,
    tracker_input,
)
from reid.errors import ReidError
from reid.evaluation.evaluator import EvalOptions
from reid.extractor import FeatureExtractor, ImageInput, resolve_run
from reid.protocol.rule import NO_CAMERA
from reid.search import find_images
from reid.utils.cli import IMPORTS_HELP, ToolParser, module_list, run_cli
from reid.utils.io import make_output_dir, write_text
from reid.utils.logging import setup_logging

logger = logging.getLogger("reid.export")

# Images that the parity check embeds with both backends: queries, then gallery images.
PARITY_QUERIES, PARITY_GALLERY = 16, 48
# --parity-images: one query and enough gallery images for a ranking to compare.
MIN_PARITY_IMAGES = 4
# Without images on disk: identities drawn, each seen once as a query, then in the gallery.
SYNTHETIC_IDENTITIES, SYNTHETIC_VIEWS = PARITY_QUERIES, 4
# The float profile's opset: what trackers' ONNX Runtime builds all run.
FLOAT_OPSET = 17
# int8: images the activation ranges are calibrated on.
CALIBRATION_IMAGES = 256
# Images per batch when the gate embeds or calibrates on many.
GATE_BATCH = 32


def main() -> None:
    parser = ToolParser(__doc__)
    parser.add_argument("--run", required=True, help="a training's OUTPUT_DIR")
    parser.add_argument("--weights", help="checkpoint (default: the run's best.pth)")
    parser.add_argument(
        "--format",
        default="onnx",
        choices=FORMATS.names(),
        help="onnx (ONNX Runtime; default), openvino (an IR: .xml and .bin) or tensorrt (an "
        "engine built on this machine's GPU)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="fp32 (default; parity-checked), fp16 or int8 (accuracy-checked on labelled images)",
    )
    parser.add_argument(
        "--out", help="the file to write (default: RUN/model[_fp16|_int8] + the format's suffix)"
    )
    parser.add_argument(
        "--opset",
        type=int,
        help=f"ONNX opset (default: {FLOAT_OPSET} for --input float, else torch's choice)",
    )
    parser.add_argument(
        "--input",
        default="uint8",
        choices=list(INPUT_PROFILES),
        help="the model's input: uint8 RGB pixels (default), or float32 RGB scaled to [0, 1] "
        "and ImageNet-normalised, as trackers such as BoxMOT send",
    )
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="flip averaging inside the model (default: the run's TEST.FLIP)",
    )
    parser.add_argument(
        "--parity-images",
        metavar="DIR",
        help="a folder of person images for the gate (default: the run's dataset if it is on "
        "disk, else generated synthetic pedestrians); for fp16 and int8, one subfolder per "
        "identity",
    )
    parser.add_argument(
        "--calibration-images",
        metavar="DIR",
        help=f"int8: a folder of person images to calibrate on ({CALIBRATION_IMAGES} spread over "
        "it; default: the run's training images)",
    )
    parser.add_argument(
        "--max-map-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="fp16 and int8: the most mAP the export may lose, in points (default: 1.0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--imports", type=module_list, metavar="MODULES", help=IMPORTS_HELP)
    args = parser.parse_args()

    setup_logging()
    export_format = FORMATS.get(args.format)
    export_format.check()  # a missing runtime or GPU is said before any work
    run = Path(args.run)
    if not run.is_dir():
        raise ReidError(f"run directory not found: {run}")
    if args.calibration_images is not None and args.precision != "int8":
        raise ReidError("--calibration-images is for --precision int8")
    if args.max_map_drop < 0:
        raise ReidError(f"--max-map-drop must be >= 0 points, got {args.max_map_drop}")
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    out = Path(args.out) if args.out else run / f"model{suffix}{export_format.suffix}"
    if out.suffix != export_format.suffix:
        raise ReidError(
            f"--out must end in {export_format.suffix} for --format {args.format}, got {out}"
        )
    if out.is_dir():
        raise ReidError(f"--out {out} is a folder; expected a {export_format.suffix} file path")
    existing = [path for path in export_format.files(out) if path.exists()]
    if existing and not args.overwrite:
        raise ReidError(f"{existing[0]} exists; pass --overwrite to replace it, or another --out")
    make_output_dir(out.parent, key="--out's folder")
    cfg, weights = resolve_run(run, args.weights, imports=args.imports)
    # The model computes what was evaluated unless the user asks otherwise.
    flip = cfg.TEST.FLIP if args.flip is None else args.flip
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.FLIP = flip
    cfg.freeze()
    pytorch = FeatureExtractor(cfg, weights, device="cpu")
    metadata = ExportMetadata(
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
        input_profile=args.input,
        precision=args.precision,
    )
    if args.precision == "int8":
        calibration, origin = _calibration_images(cfg, args.calibration_images)
        print(f"calibration images: {origin}")
    if args.precision == "fp32":
        images, num_query, origin = _parity_images(cfg, args.parity_images)
        print(f"parity images: {origin}")
    else:
        labelled = _labelled_images(cfg, args.parity_images)
        print(f"accuracy images: {labelled.origin}")

    if args.input == "float":
        module = FloatInputDeployModel(
            pytorch.backend.model, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, flip
        )
        opset = FLOAT_OPSET if args.opset is None else args.opset
    else:
        module, opset = pytorch.backend, args.opset
    # A folder of its own, so that two exports to the same --out never share files.
    with tempfile.TemporaryDirectory(prefix=f".tmp-{out.stem}-", dir=out.parent) as folder:
        graph = Path(folder) / "fp32.onnx"
        export_onnx(module, metadata, graph, opset)
        if args.precision == "fp16":
            to_fp16(graph, metadata, graph.with_name("fp16.onnx"))
            graph = graph.with_name("fp16.onnx")
        elif args.precision == "int8":
            batches = _graph_inputs(pytorch, calibration, args.input)
            quantize_int8(graph, metadata, graph.with_name("int8.onnx"), batches)
            graph = graph.with_name("int8.onnx")
        written = Path(folder) / f"model{export_format.suffix}"
        export_format.write(graph, metadata, written)
        exported = FeatureExtractor(written, device=export_format.parity_device)
        if args.precision == "fp32":
            if args.input == "float":  # PyTorch fed what the model is fed
                with torch.inference_mode():
                    inputs = torch.from_numpy(tracker_input(pytorch.batch_pixels(images)))
                    reference = module(inputs)
            else:
                reference = pytorch(images)
            # The extractor feeds a float model tracker_input(pixels), as above.
            candidate = exported(images)
            report = compare_features(reference, candidate, num_query, cfg.TEST.METRIC)
        else:
            reference = _embed(pytorch, labelled.images, "PyTorch fp32")
            candidate = _embed(exported, labelled.images, f"{args.format} {args.precision}")
            options = EvalOptions(metric=cfg.TEST.METRIC, ap=cfg.TEST.AP)
            report = compare_accuracy(
                reference, candidate, labelled.pids, labelled.camids, labelled.num_query,
                labelled.protocol, options, args.max_map_drop,
            )  # fmt: skip
        print(report)
        if not report.ok:
            gate = "parity" if args.precision == "fp32" else "accuracy"
            raise ReidError(f"{gate} check failed, nothing written: {report}")
        for source, target in zip(
            export_format.files(written), export_format.files(out), strict=True
        ):
            source.replace(target)
    if args.input == "float":
        num_classes = getattr(pytorch.backend.model.head, "num_classes", None)
        sidecar = json.dumps(metadata.boxmot_sidecar(num_classes), indent=2) + "\n"
        write_text(boxmot_sidecar_path(out), sidecar)
    height, width = metadata.input_size
    kind = "uint8 RGB" if args.input == "uint8" else "ImageNet-normalised float32 RGB"
    print(
        f"wrote {out} ({args.format}, {args.precision}): {kind} (N, 3, {height}, {width}) -> "
        f"{metadata.feat_dim}-d features"
    )
    if args.input == "float":
        print(f"wrote {boxmot_sidecar_path(out)}: BoxMOT's metadata (img_size [{height}, {width}])")


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
    name = test_set_names(cfg)[0]
    dataset, reason = _dataset_on_disk(cfg, name)
    if dataset is None:
        return _drawn_images(reason)
    queries = _spread([r.path for r in dataset.query], PARITY_QUERIES)
    gallery = _spread([r.path for r in dataset.gallery], PARITY_GALLERY)
    images = queries + gallery
    origin = f"{len(images)} from the dataset {name} at {cfg.DATASETS.ROOT}"
    return images, len(queries), origin


def _dataset_on_disk(cfg: CfgNode, name: str) -> tuple[ReidDataset | None, str]:
    """The dataset ``name`` when it is on disk and usable, else None and why not."""
    root = Path(cfg.DATASETS.ROOT)
    # A missing root is checked first: the synthetic dataset would be drawn into it.
    if not root.is_dir():
        return None, f"the dataset {name} is not at {root}"
    try:
        return build_dataset(cfg, name), ""
    except DatasetError as err:
        return None, f"the dataset {name} is not usable: {err}"


@dataclass(frozen=True)
class LabelledImages:
    """Images with identities for the accuracy gate, the ``num_query`` queries first."""

    images: list[ImageInput]
    pids: np.ndarray
    camids: np.ndarray
    num_query: int
    protocol: str
    origin: str


def _labelled_images(cfg: CfgNode, folder: str | None) -> LabelledImages:
    """The accuracy gate's images (see the module docstring)."""
    if folder is not None:
        paths = _folder_images(Path(folder), limit=None)
        names = [path.parent.name for path in paths]
        identities = {name: pid for pid, name in enumerate(sorted(set(names)))}
        if len(identities) < 2:
            raise ReidError(
                f"--parity-images {folder}: {len(identities)} subfolder(s) of images; the "
                "fp16 / int8 gate needs one subfolder per identity, at least 2"
            )
        pids = np.array([identities[name] for name in names])
        # Each identity's first image is its query, the others its gallery.
        first = np.zeros(len(paths), bool)
        first[np.unique(pids, return_index=True)[1]] = True
        order = np.argsort(~first, kind="stable")
        return LabelledImages(
            [paths[i] for i in order], pids[order], np.full(len(paths), NO_CAMERA),
            int(first.sum()), "no_cameras",
            f"{len(paths)} images of {len(identities)} identities from --parity-images {folder}",
        )  # fmt: skip
    dataset, reason = _dataset_on_disk(cfg, test_set_names(cfg)[0])
    if dataset is not None:
        records = dataset.query + dataset.gallery
        return LabelledImages(
            [record.path for record in records],
            np.array([record.pid for record in records]),
            np.array([record.camid for record in records]),
            len(dataset.query), dataset.protocol,
            f"the test set of {dataset.name} at {cfg.DATASETS.ROOT}: {len(dataset.query)} "
            f"queries, {len(dataset.gallery)} gallery images",
        )  # fmt: skip
    drawn = draw_pedestrians(SYNTHETIC_IDENTITIES, SYNTHETIC_VIEWS)
    items, num_query = _queries_first(drawn, every=SYNTHETIC_VIEWS)
    return LabelledImages(
        [image for _, image in items], np.array([pid for pid, _ in items]),
        np.full(len(items), NO_CAMERA), num_query, "no_cameras",
        f"{len(items)} generated synthetic pedestrians ({reason})",
    )  # fmt: skip


def _calibration_images(cfg: CfgNode, folder: str | None) -> tuple[list[Path], str]:
    """int8's calibration images: ``CALIBRATION_IMAGES`` spread over ``folder``, else over
    the training images of the run's first dataset."""
    if folder is not None:
        paths = _folder_images(Path(folder), limit=CALIBRATION_IMAGES, flag="--calibration-images")
        return paths, f"{len(paths)} from --calibration-images {folder}"
    name = cfg.DATASETS.NAMES[0]
    dataset, reason = _dataset_on_disk(cfg, name)
    if dataset is None:
        raise ReidError(
            f"int8 needs calibration images and {reason}; pass --calibration-images DIR "
            "(person crops like the ones it will see)"
        )
    paths = _spread([record.path for record in dataset.train], CALIBRATION_IMAGES)
    return paths, f"{len(paths)} training images of {name} at {cfg.DATASETS.ROOT}"


def _graph_inputs(
    pytorch: FeatureExtractor, images: list[Path], profile: str
) -> Iterator[np.ndarray]:
    """Batches of ``images`` as the graph takes them: uint8 pixels at the test size, or
    for the float profile ImageNet-normalised floats."""
    for start in tqdm(range(0, len(images), GATE_BATCH), desc="calibrating", unit="batch"):
        pixels = pytorch.batch_pixels(images[start : start + GATE_BATCH])
        yield tracker_input(pixels) if profile == "float" else pixels


def _embed(extractor: FeatureExtractor, images: list[ImageInput], name: str) -> torch.Tensor:
    """``(N, D)`` features of many images, with a progress bar."""
    batches = range(0, len(images), GATE_BATCH)
    parts = [
        extractor(images[start : start + GATE_BATCH])
        for start in tqdm(batches, desc=f"embedding ({name})", unit="batch")
    ]
    return torch.cat(parts) if parts else torch.empty(0, extractor.feat_dim)


def _folder_images(
    folder: Path, limit: int | None = PARITY_QUERIES + PARITY_GALLERY, flag: str = "--parity-images"
) -> list[Path]:
    """The images under ``folder``, at most ``limit`` of them spread over their sorted
    paths."""
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "not found"
        raise ReidError(f"{flag} {folder}: {problem}; expected a folder of images")
    try:
        paths = find_images(folder)
    except ReidError as err:
        raise ReidError(f"{flag}: {err}") from None
    if len(paths) < MIN_PARITY_IMAGES:
        raise ReidError(
            f"{flag} {folder}: {len(paths)} image(s), expected at least "
            f"{MIN_PARITY_IMAGES} (queries and a gallery to rank)"
        )
    return paths if limit is None else _spread(paths, limit)


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
