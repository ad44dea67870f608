"""Search a folder of images with query images, with a trained run or an exported model:
python tools/search.py --model RUN|MODEL.onnx --gallery DIR --query IMG|DIR [--topk K] [--out DIR]

Any images will do (no Market-style names). Gallery features are cached in an index
file (--index; default GALLERY/.reid_index.npz, or a file under ~/.cache/reid/search when
GALLERY cannot be written) and recomputed only for new or changed files. Writes
OUT/results.json, OUT/results.csv and one ranked-list image per query.
"""

import csv
import io
import json
import logging
from pathlib import Path

from reid.evaluation.feature_ranking import nearest_gallery
from reid.extractor import FeatureExtractor
from reid.search import default_index_path, find_images, index_gallery, results_table
from reid.utils.cli import IMPORTS_HELP, ToolParser, module_list, run_cli
from reid.utils.io import atomic_write, make_output_dir, write_text
from reid.utils.logging import setup_logging
from reid.utils.visualization import draw_search_result

logger = logging.getLogger("reid.search")


def main() -> None:
    parser = ToolParser(__doc__)
    parser.add_argument("--model", required=True, help="a run directory or an exported .onnx")
    parser.add_argument("--gallery", required=True, help="folder of images (recursive)")
    parser.add_argument("--query", required=True, help="an image, or a folder of them")
    parser.add_argument("--topk", type=int, default=10, help="results per query")
    parser.add_argument("--out", default="search_results", help="output folder")
    parser.add_argument(
        "--index",
        help="gallery feature cache (default GALLERY/.reid_index.npz, or the user's cache "
        "folder ~/.cache/reid/search when GALLERY is read-only)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--imports", type=module_list, metavar="MODULES", help=IMPORTS_HELP)
    args = parser.parse_args()

    # The model first: a refused or broken one leaves no results folder behind.
    extractor = FeatureExtractor(args.model, device=args.device, imports=args.imports)
    out = make_output_dir(args.out, key="--out")
    setup_logging(out)
    gallery_dir = Path(args.gallery)
    index = Path(args.index) if args.index else default_index_path(gallery_dir)
    gallery, gallery_feats, embedded = index_gallery(extractor, gallery_dir, index)
    queries = find_images(args.query)
    distances, indices = nearest_gallery(
        extractor(queries), gallery_feats, args.topk, extractor.metric
    )

    results = results_table(queries, gallery, distances, indices)
    write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["query", "rank", "path", "distance"])
    for query, ranked in results.items():
        for rank, item in enumerate(ranked, start=1):
            writer.writerow([query, rank, item["path"], f"{item['distance']:.6f}"])
    # A file name that is not UTF-8 is written as its own bytes, so the path still opens.
    csv_bytes = table.getvalue().encode("utf-8", "surrogateescape")
    atomic_write(out / "results.csv", lambda file: file.write(csv_bytes))
    for number, (query, ranked) in enumerate(results.items()):
        pairs = [(item["path"], item["distance"]) for item in ranked]
        name = f"query_{number:04d}_{Path(query).stem}.png"
        draw_search_result(query, pairs, out / "ranked" / name)
    print(
        f"{len(queries)} queries against {len(gallery)} gallery images "
        f"({embedded} newly indexed, index {index}); results in {out}"
    )


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
