"""Running the tools as a user does, on a tiny synthetic set (shared by the CLI tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
TRAIN = ROOT / "tools" / "train.py"
TINY = [
    "DATASETS.NAMES", "[synthetic]", "DATASETS.SYNTHETIC.NUM_IDENTITIES", "12",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "MODEL.BACKBONE", "resnet18",
    "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
    "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCES", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.BASE_LR", "0.001",
    "TEST.IMS_PER_BATCH", "64",
]  # fmt: skip
# The run of the `trained` fixture: 3 epochs, evaluated after epochs 2 and 3.
SCHEDULE = ["SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "2"]


def tiny(tmp: Path, output_dir: Path) -> list[str]:
    """Overrides for a tiny run with data under ``tmp/data``."""
    return [*TINY, "DATASETS.ROOT", str(tmp / "data"), "OUTPUT_DIR", str(output_dir)]


def run(command: list[str]) -> subprocess.CompletedProcess:
    """Runs a command from the repository root, capturing its output."""
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Runs ``tools/<tool>`` with ``args`` in one process."""
    return run([sys.executable, str(ROOT / "tools" / tool), *args])


def torchrun(script: Path, *args: str, nproc: int = 2) -> list[str]:
    """The command running ``script`` in ``nproc`` processes on this machine (gloo)."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [sys.executable, *launcher, str(script), *args]


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line a failed tool must print last, checked to be alone."""
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    return lines[-1]
