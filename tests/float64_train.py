"""tools/train.py with the model computing in float64, for the distributed equivalence test.

In float32 a tiny model trained from scratch is chaotic: rounding differences of ~1e-7,
such as a changed summation order (another thread count, a gathered batch), grow to
percent-level loss differences within a few steps, in one process as well as in two.
In float64 they stay at ~1e-14, so comparing 1 and 2 processes in float64 tests the
distributed implementation itself. Run as ``[torchrun ...] float64_train.py <train.py args>``.
"""

import runpy
import sys
from pathlib import Path

import torch
from torch import nn

import reid.models


class Float64Model(nn.Module):
    """Runs the wrapped model on float64 inputs; outputs come back in float64."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.double()
        self.feat_dim = model.feat_dim

    def forward(self, images: torch.Tensor):
        return self.model(images.double())


build_model = reid.models.build_model
reid.models.build_model = lambda *args, **kwargs: Float64Model(build_model(*args, **kwargs))
tool = Path(__file__).parents[1] / "tools" / "train.py"
sys.argv = [str(tool), *sys.argv[1:]]
runpy.run_path(str(tool), run_name="__main__")
