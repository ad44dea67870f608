"""Evaluate a checkpoint: python tools/test.py --config FILE TEST.WEIGHT CKPT [KEY VALUE ...]

Results go to OUTPUT_DIR/test/ (metrics.json, log.txt, TensorBoard) and pictures to
OUTPUT_DIR/visual/, never over a training's files. Flags may come before, between or
after the KEY VALUE overrides.

The config file may come from someone else (a run folder's config.yaml): the plugin
modules its IMPORTS lists are not imported, since importing runs their code. Allow
them by giving IMPORTS on the command line, e.g. IMPORTS "[my_project.backbones]".
"""

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from reid.config import load_cfg
from reid.data import build_dataset, build_test_loader
from reid.engine.checkpoint import build_trained_model
from reid.errors import ReidError
from reid.evaluation import Ranking, build_eval_options, extract_features
from reid.evaluation.evaluator import summarize
from reid.evaluation.report import format_results, write_metrics
from reid.utils.cli import ToolParser, run_cli
from reid.utils.env import resolve_device
from reid.utils.io import make_output_dir
from reid.utils.logging import setup_logging
from reid.utils.visualization import (
    draw_cmc_curve,
    draw_embedding,
    draw_ranked_lists,
    embedding_rows,
    log_embedding,
    log_images_to_tensorboard,
)


def main() -> None:
    parser = ToolParser(__doc__, overrides=True)
    parser.add_argument("--config", required=True, help="YAML file of keys that differ")
    args = parser.parse_args()

    cfg = load_cfg(args.config, args.opts, trust_file_imports=False)
    if not cfg.TEST.WEIGHT:
        raise ReidError("no checkpoint to evaluate: pass TEST.WEIGHT path/to/best.pth")
    out = make_output_dir(Path(cfg.OUTPUT_DIR) / "test")
    setup_logging(out)
    device = resolve_device(cfg.MODEL.DEVICE)
    model = build_trained_model(cfg, cfg.TEST.WEIGHT)

    dataset = build_dataset(cfg)
    test_loader, num_query = build_test_loader(cfg, dataset)

    options = build_eval_options(cfg)
    feats, pids, camids = extract_features(model.to(device), test_loader, device, options.flip)
    ranking = Ranking(feats, pids, camids, num_query, options, device)
    cmc, mean_ap, mean_inp = ranking.metrics()
    metrics = summarize(cmc, mean_ap, mean_inp)
    write_metrics(
        out / "metrics.json",
        {**metrics, "cmc": cmc.tolist(), "weight": cfg.TEST.WEIGHT},
    )
    print(format_results(metrics))

    # Pictures go to OUTPUT_DIR/visual/, which a training never writes.
    visual = Path(cfg.OUTPUT_DIR) / "visual"
    if cfg.TEST.VISUALIZE_QUERIES:
        rows = np.linspace(0, num_query - 1, min(cfg.TEST.VISUALIZE_QUERIES, num_query))
        rows = sorted(set(rows.round().astype(int).tolist()))  # spread over identities
        distmat = ranking.distances(rows)  # re-ranked: the matrix the metrics used
        queries = [dataset.query[i] for i in rows]
        ranked = draw_ranked_lists(
            distmat, queries, dataset.gallery, visual / "ranked", max_queries=None
        )
        curve = draw_cmc_curve(cmc, visual / "cmc.png")
        with SummaryWriter(out / "tensorboard") as writer:
            log_images_to_tensorboard(writer, ranked, "ranked_lists")
            log_images_to_tensorboard(writer, [curve], "cmc")
        print(f"ranked lists and CMC curve in {visual}")
    if cfg.TEST.EMBEDDING_PLOT:
        rows = embedding_rows(pids, num_query, cfg.TEST.EMBEDDING_PLOT)
        records = [(dataset.query + dataset.gallery)[i] for i in rows]
        is_query = (rows < num_query).tolist()
        plot = draw_embedding(
            feats[rows], [r.pid for r in records], is_query, visual / "embedding.png"
        )
        with SummaryWriter(out / "tensorboard") as writer:
            log_embedding(writer, feats[rows], records, is_query)
        print(f"embedding of {len(rows)} images in {plot} and TensorBoard's projector")


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
