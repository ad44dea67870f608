"""Checks run under torchrun (2 gloo processes) by tests/test_distributed.py:
``torchrun ... distributed_checks.py CHECK OUTPUT_DIR``.

- ``loss_parameters``: every rank seeds differently, yet after the Trainer is built
  the loss terms' parameters (center-loss centers, ArcFace's class weights) are
  rank 0's on every rank; each rank writes what it found to ``OUTPUT_DIR/rank<r>.txt``.
- ``rank0_error``: a plain exception (not a ReidError) inside a rank-0-only section
  ends both ranks at once, each with a message, instead of a wait for the timeout.
"""

import sys
from pathlib import Path

import torch
from test_trainer import DIM, NUM_IDS, TinyModel, _trainer

from reid.config import load_cfg
from reid.losses import build_loss
from reid.utils import distributed


def loss_parameters(output_dir: Path) -> None:
    torch.manual_seed(1000 + distributed.rank())  # as if the ranks had seeded apart
    cfg = load_cfg(opts=["LOSS.NAMES", "[arcface, center, triplet]", "LOSS.WEIGHTS", "[1, 1, 1]"])
    loss = build_loss(cfg, NUM_IDS, DIM)
    built = {name: tensor.clone() for name, tensor in loss.state_dict().items()}
    trainer = _trainer(output_dir / f"rank{distributed.rank()}", loss_fn=loss)
    assert isinstance(trainer.model, TinyModel)
    mine = torch.cat([tensor.flatten() for tensor in loss.state_dict().values()])
    gathered = distributed.all_gather_rows(mine.unsqueeze(0))
    changed = any(not torch.equal(built[name], t) for name, t in loss.state_dict().items())
    found = f"equal {torch.equal(gathered[0], gathered[1])}, changed {changed}"
    (output_dir / f"rank{distributed.rank()}.txt").write_text(found)  # not interleaved


def rank0_error(output_dir: Path) -> None:
    def fails() -> None:
        raise ZeroDivisionError("a bug in rank 0's section")

    distributed.on_main(fails)
    distributed.any_rank(False)  # the next collective, where the others used to wait


if __name__ == "__main__":
    check, out = sys.argv[1], Path(sys.argv[2])
    with distributed.process_group("cpu", timeout_minutes=5.0):
        {"loss_parameters": loss_parameters, "rank0_error": rank0_error}[check](out)
