"""Train a ReID model: python tools/train.py --config FILE [KEY VALUE ...] [--resume|--overwrite]

Flags may come before, between or after the KEY VALUE overrides. The config file is
your own: the plugin modules its IMPORTS lists are imported.

On several GPUs or machines: torchrun --nproc_per_node N tools/train.py ... (same arguments).
"""

import logging

from reid.config import load_cfg, resume_conflicts
from reid.data import build_run_data, build_test_loader
from reid.engine.build import build_trainer
from reid.engine.checkpoint import load_checkpoint
from reid.engine.run_dir import open_run_dir
from reid.errors import ReidError
from reid.evaluation import build_eval_options, check_test_set, evaluate_model
from reid.evaluation.report import format_report
from reid.utils import distributed
from reid.utils.cli import ToolParser, run_cli
from reid.utils.env import seed_everything
from reid.utils.logging import setup_logging

logger = logging.getLogger("reid.train")

# What a checkpoint must hold for --resume.
RESUME_ENTRIES = ("model", "optimizer", "scheduler", "scaler", "loss", "epoch", "rng", "config")


def main() -> None:
    parser = ToolParser(__doc__, overrides=True)
    parser.add_argument("--config", required=True, help="YAML file of keys that differ")
    parser.add_argument("--resume", action="store_true", help="continue OUTPUT_DIR/last.pth")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run already in OUTPUT_DIR"
    )
    args = parser.parse_args()

    cfg = load_cfg(args.config, args.opts)
    timeout = cfg.DISTRIBUTED.TIMEOUT_MINUTES
    with (
        distributed.process_group(cfg.MODEL.DEVICE, timeout) as device,
        open_run_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=args.overwrite) as out,
    ):
        setup_logging(out)
        seed_everything(cfg.SEED)
        with distributed.main_first():  # rank 0 generates the synthetic set, if needed
            data = build_run_data(cfg)
        for test in data.tests.values():
            check_test_set(test)  # before the first epoch, not after it
        test_loaders = {name: build_test_loader(cfg, test) for name, test in data.tests.items()}
        options = build_eval_options(cfg)
        trainer = build_trainer(
            cfg,
            data,
            device,
            out,
            evaluate=lambda model: {
                name: evaluate_model(model, *test_loaders[name], device, options, test.protocol)
                for name, test in data.tests.items()
            },
        )
        if args.resume:
            state = load_checkpoint(out / "last.pth", RESUME_ENTRIES, purpose="resume training")
            if conflicts := resume_conflicts(state["config"], cfg):
                raise ReidError(
                    f"cannot resume {out / 'last.pth'}, the config changed: {'; '.join(conflicts)}"
                )
            trainer.load_state(state, str(out / "last.pth"))
        metrics = trainer.train()
        if distributed.is_main_process():
            print(format_report(metrics))


def cli() -> int:
    """Runs :func:`main` with one-line errors; returns the exit code."""
    return run_cli(main)
