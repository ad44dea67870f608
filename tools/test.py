"""Evaluate a checkpoint: python tools/test.py --config FILE TEST.WEIGHT CKPT [KEY VALUE ...]"""

import argparse
import sys
from pathlib import Path

from reid.config import load_cfg
from reid.data import build_dataset, build_test_loader
from reid.engine.checkpoint import checkpoint_num_classes, load_checkpoint, load_model_weights
from reid.errors import ReidError
from reid.evaluation import evaluate_model
from reid.evaluation.report import format_results, write_metrics
from reid.models import build_model
from reid.utils.cli import run_cli
from reid.utils.env import resolve_device
from reid.utils.logging import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML file of keys that differ")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args()

    cfg = load_cfg(args.config, args.opts)
    if not cfg.TEST.WEIGHT:
        raise ReidError("no checkpoint to evaluate: pass TEST.WEIGHT path/to/best.pth")
    setup_logging(cfg.OUTPUT_DIR)
    device = resolve_device(cfg.MODEL.DEVICE)
    state = load_checkpoint(cfg.TEST.WEIGHT)

    dataset = build_dataset(cfg)
    test_loader, num_query = build_test_loader(cfg, dataset)
    # The classifier size comes from the checkpoint: a model trained on one dataset
    # may be evaluated on another.
    num_classes = checkpoint_num_classes(state["model"], cfg.TEST.WEIGHT)
    model = build_model(cfg, num_classes=num_classes, load_pretrained_weights=False)
    load_model_weights(model, state["model"], source=cfg.TEST.WEIGHT)
    metrics = evaluate_model(model.to(device), test_loader, num_query, device)
    write_metrics(Path(cfg.OUTPUT_DIR) / "metrics.json", {**metrics, "weight": cfg.TEST.WEIGHT})
    print(format_results(metrics))


if __name__ == "__main__":
    sys.exit(run_cli(main))
