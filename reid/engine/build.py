"""The Trainer of a config: model, loss, optimizers, schedule, loader and options."""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from yacs.config import CfgNode

from reid.data import build_batch_augment, build_train_loader
from reid.data.build import RunData
from reid.engine.trainer import Trainer
from reid.losses import build_loss
from reid.models import build_model
from reid.solver import build_loss_optimizer, build_optimizer, build_scheduler


def build_trainer(
    cfg: CfgNode,
    data: RunData,
    device: torch.device,
    output_dir: str | Path,
    evaluate: Callable[[nn.Module], dict[str, dict[str, float]]] | None = None,
) -> Trainer:
    """The :class:`Trainer` of ``cfg`` on ``data``'s training records, its model on
    ``device``.

    Args:
        evaluate: the metrics of a model on each test set, by the set's name (see
            :class:`Trainer`); None trains without evaluating.
    """
    num_classes = data.num_classes
    model = build_model(cfg, num_classes=num_classes).to(device)
    loss_fn = build_loss(cfg, num_classes=num_classes, feat_dim=model.feat_dim).to(device)
    optimizer = build_optimizer(cfg, model, loss_fn)
    return Trainer(
        model,
        loss_fn,
        optimizer,
        build_scheduler(cfg, optimizer),
        build_train_loader(cfg, data.train),
        device=device,
        max_epochs=cfg.SOLVER.MAX_EPOCHS,
        output_dir=output_dir,
        evaluate=None if evaluate is None else lambda: evaluate(model),
        eval_period=cfg.TEST.EVAL_PERIOD,
        best_metric=cfg.TEST.BEST_METRIC,
        loss_optimizer=build_loss_optimizer(loss_fn),
        amp=cfg.SOLVER.AMP,
        channels_last=cfg.SOLVER.CHANNELS_LAST,
        config=cfg.dump(),
        sync_batchnorm=cfg.DISTRIBUTED.SYNC_BN,
        freeze_iters=cfg.SOLVER.FREEZE_ITERS,
        clip_grad_norm=cfg.SOLVER.CLIP_GRAD_NORM,
        clip_per_parameter=cfg.SOLVER.CLIP_GRAD_PER_PARAM,
        log_period=cfg.SOLVER.LOG_PERIOD,
        batch_augment=build_batch_augment(cfg),
    )
