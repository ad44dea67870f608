"""tools/train.py that sends itself SIGTERM after a number of training steps, as a cluster
scheduler's preemption would. Run as ``[torchrun ...] stopping_train.py STEPS <train.py args>``;
under torchrun only rank 0 is signalled, and the ranks must agree to stop together."""

import runpy
import signal
import sys
from pathlib import Path

from reid.engine.trainer import Trainer
from reid.utils import distributed

stop_after = int(sys.argv.pop(1))
run_step, steps = Trainer.run_step, []


def counting_run_step(self: Trainer, *args, **kwargs) -> dict[str, float]:
    values = run_step(self, *args, **kwargs)
    steps.append(1)
    if len(steps) == stop_after and distributed.is_main_process():
        signal.raise_signal(signal.SIGTERM)
    return values


Trainer.run_step = counting_run_step
tool = Path(__file__).parents[1] / "tools" / "train.py"
sys.argv = [str(tool), *sys.argv[1:]]
runpy.run_path(str(tool), run_name="__main__")
