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
import torch
from torch.utils.tensorboard import SummaryWriter
from yacs.config import CfgNode

from reid.config import load_cfg
from reid.data import ReidDataset, build_datasets, build_test_loader, test_set_names
from reid.engine.checkpoint import build_trained_model
from reid.errors import ReidError
from reid.evaluation import ProtocolRanking, build_eval_options, extract_features
from reid.evaluation.evaluator import summarize
from reid.evaluation.report import format_report, metrics_report, write_metrics
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
    model = build_trained_model(cfg, cfg.TEST.WEIGHT).to(device)
    datasets = build_datasets(cfg, test_set_names(cfg))

    options = build_eval_options(cfg)
    per_set = {}
    for name, dataset in datasets.items():
        test_loader, num_query = build_test_loader(cfg, dataset)
        feats, pids, camids = extract_features(model, test_loader, device, options.flip)
        ranking = ProtocolRanking(feats, pids, camids, num_query, dataset.protocol, options, device)
        cmc, mean_ap, mean_inp = ranking.metrics()
        per_set[name] = {
            **summarize(cmc, mean_ap, mean_inp), "cmc": cmc.tolist(), "weight": cfg.TEST.WEIGHT
        }  # fmt: skip
        # Pictures go to OUTPUT_DIR/visual/, which a training never writes.
        visual = Path(cfg.OUTPUT_DIR) / "visual"
        pictures(cfg, dataset, ranking, feats, cmc, visual if len(datasets) == 1 else visual / name)
    report = metrics_report(per_set)
    write_metrics(out / "metrics.json", report)
    print(format_report(report))


def pictures(
    cfg: CfgNode,
    dataset: ReidDataset,
    ranking: ProtocolRanking,
    feats: torch.Tensor,
    cmc: np.ndarray,
    visual: Path,
) -> None:
    """The CMC curve (the mean over the protocol's splits) and the ranked lists of its
    first split (``TEST.VISUALIZE_QUERIES``), and the embedding plot
    (``TEST.EMBEDDING_PLOT``), in ``visual`` and TensorBoard."""
    records = dataset.query + dataset.gallery
    tensorboard = Path(cfg.OUTPUT_DIR) / "test" / "tensorboard"
    if cfg.TEST.VISUALIZE_QUERIES:
        split = ranking.splits[0]
        ranked = [records[i] for i in np.arange(len(records))[split.rows]]
        # The camera labels the split's ranking compared, so matches are marked as counted.
        ranked = [r._replace(camid=int(c)) for r, c in zip(ranked, split.camids, strict=True)]
        queries, gallery = ranked[: split.num_query], ranked[split.num_query :]
        rows = np.linspace(0, len(queries) - 1, min(cfg.TEST.VISUALIZE_QUERIES, len(queries)))
        rows = sorted(set(rows.round().astype(int).tolist()))  # spread over identities
        distmat = ranking.first.distances(rows)  # re-ranked: the matrix the metrics used
        lists = draw_ranked_lists(
            distmat, [queries[i] for i in rows], gallery, visual / "ranked", max_queries=None
        )
        curve = draw_cmc_curve(cmc, visual / "cmc.png")
        with SummaryWriter(tensorboard) as writer:
            log_images_to_tensorboard(writer, lists, "ranked_lists")
            log_images_to_tensorboard(writer, [curve], "cmc")
        print(f"ranked lists and CMC curve in {visual}")
    if cfg.TEST.EMBEDDING_PLOT:
        pids = np.array([r.pid for r in records])
        rows = embedding_rows(pids, len(dataset.query), cfg.TEST.EMBEDDING_PLOT)
        shown, is_query = [records[i] for i in rows], (rows < len(dataset.query)).tolist()
        plot = draw_embedding(feats[rows], pids[rows].tolist(), is_query, visual / "embedding.png")
        with SummaryWriter(tensorboard) as writer:
            log_embedding(writer, feats[rows], shown, is_query)
        print(f"embedding of {len(rows)} images in {plot} and TensorBoard's projector")


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
