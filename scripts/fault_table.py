"""Tries bad inputs and faults a hostile but realistic user meets, and prints what each gives.

    python scripts/fault_table.py [--skip-cli]

Every case should end in one clear line (or be rightly accepted) with nothing lost. The
output is a Markdown table: the case, the outcome (``one line``, ``accepted``, or
``TRACEBACK`` / ``WRONGLY ACCEPTED`` for a failure), the message, and for the cases that
could lose something, whether it was kept. The CLI cases train a tiny model on a tiny
synthetic set (about a minute on 2 cores); ``--skip-cli`` leaves them out.
"""

import argparse
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reid import FeatureExtractor
from reid.config import load_cfg
from reid.data import build_dataset
from reid.data.datasets import DATASETS
from reid.engine.checkpoint import build_trained_model, load_checkpoint, save_checkpoint
from reid.engine.run_dir import open_run_dir
from reid.errors import ReidError
from reid.evaluation import evaluate_rank
from reid.evaluation.feature_ranking import evaluate_features
from reid.evaluation.rerank import re_ranking
from reid.models import build_model
from reid.utils import io

ROOT = Path(__file__).parents[1]
SMALL = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu"]
TINY = [
    "DATASETS.NAME",
    "synthetic",
    "DATASETS.SYNTHETIC.NUM_IDENTITIES",
    "12",
    "DATASETS.SYNTHETIC.NUM_CAMERAS",
    "3",
    "MODEL.BACKBONE",
    "resnet18",
    "INPUT.SIZE_TRAIN",
    "[32, 16]",
    "INPUT.SIZE_TEST",
    "[32, 16]",
    "SOLVER.IMS_PER_BATCH",
    "8",
    "DATALOADER.NUM_INSTANCES",
    "2",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.WARMUP_EPOCHS",
    "0",
    "SOLVER.MAX_EPOCHS",
    "2",
]

rows: list[tuple[str, str, str, str]] = []


def case(name: str, action: Callable[[], object], accept: bool = False, kept=None) -> None:
    """Runs ``action`` and records its outcome; ``kept()`` says whether nothing was lost."""
    try:
        result = action()
    except ReidError as err:
        message = str(err)
        outcome = "one line" if "\n" not in message and not accept else "WRONG"
    except Exception as err:  # noqa: BLE001 - a traceback is what this table looks for
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        outcome = "TRACEBACK"
        traceback.print_exc(limit=2, file=sys.stderr)
    else:
        message = result if isinstance(result, str) else ""
        outcome = "accepted" if accept else "WRONGLY ACCEPTED"
    lost = "" if kept is None else ("kept" if kept() else "LOST")
    rows.append((name, outcome, message.replace("|", "/"), lost))


def cli(tool: str, *args: str, command: list[str] | None = None) -> str:
    """Runs a tool; returns its error line, or raises ReidError with it to count as one line."""
    command = command or [sys.executable, str(ROOT / "tools" / tool), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    lines = result.stderr.strip().splitlines()
    if result.returncode == 0:
        return f"exit 0: {result.stdout.strip().splitlines()[-1]}"
    if lines and lines[-1].startswith("error: "):
        raise ReidError(f"{lines[-1][7:]} (exit {result.returncode})")
    raise RuntimeError(f"exit {result.returncode}: {lines[-1] if lines else ''}")


def config_cases(tmp: Path) -> None:
    def opts(*pairs: str) -> Callable[[], object]:
        return lambda: load_cfg(opts=list(pairs))

    def yaml(text: bytes) -> Callable[[], object]:
        path = tmp / f"cfg{len(rows)}.yml"
        path.write_bytes(text)
        return lambda: load_cfg(path)

    case("config: unknown key SOLVER.BASE_LRR", opts("SOLVER.BASE_LRR", "0.1"))
    case("config: MODEL.BNNECK 'yes please'", opts("MODEL.BNNECK", "yes please"))
    case("config: SOLVER.MAX_EPOCHS 1.5", opts("SOLVER.MAX_EPOCHS", "1.5"))
    case("config: SOLVER.BASE_LR 1e-3", opts("SOLVER.BASE_LR", "1e-3"), accept=True)
    case("config: SOLVER.BASE_LR nan", opts("SOLVER.BASE_LR", "nan"))
    case("config: SOLVER.BASE_LR 0", opts("SOLVER.BASE_LR", "0"))
    case("config: key with no value, last", opts("SOLVER.MAX_EPOCHS"))
    case("config: key with no value, mid", opts("SOLVER.MAX_EPOCHS", "SOLVER.BASE_LR", "1"))
    case("config: a section given a value", opts("SOLVER", "3"))
    case("config: YAML key with no value", yaml(b"SOLVER:\n  BASE_LR:\n"))
    case("config: YAML file not UTF-8", yaml("OUTPUT_DIR: r\xe9sultats\n".encode("latin-1")))
    case("config: YAML syntax error", yaml(b"SOLVER:\n  BASE_LR: [0.1\n"))
    case("config: YAML holding a list", yaml(b"- 1\n- 2\n"))
    case("config: missing file", lambda: load_cfg(tmp / "nope.yml"))
    case("config: a folder as config file", lambda: load_cfg(tmp))
    case("config: SOLVER.WARMUP_EPOCHS -1", opts("SOLVER.WARMUP_EPOCHS", "-1"))
    case("config: INPUT.PADDING -4", opts("INPUT.PADDING", "-4"))
    case(
        "config: one identity per batch (P=1)",
        opts("SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "4"),
    )
    case("config: K=1 with the triplet loss", opts("DATALOADER.NUM_INSTANCES", "1"))
    case("config: batch not a multiple of K", opts("SOLVER.IMS_PER_BATCH", "30"))
    case("config: every loss weight 0", opts("LOSS.CE_WEIGHT", "0", "LOSS.TRIPLET_WEIGHT", "0"))
    case("config: LOSS.LABEL_SMOOTH 1", opts("LOSS.LABEL_SMOOTH", "1"))
    case("config: SOLVER.MOMENTUM 1.5", opts("SOLVER.MOMENTUM", "1.5"))
    case("config: SOLVER.STEPS decreasing", opts("SOLVER.STEPS", "[70, 40]"))
    case("config: SEED -1", opts("SEED", "-1"))
    case("config: TEST.RERANK_LAMBDA 2", opts("TEST.RERANK_LAMBDA", "2"))
    case("config: TEST.RERANK_K1 0", opts("TEST.RERANK_K1", "0"))
    case("config: TEST.EVAL_PERIOD 0", opts("TEST.EVAL_PERIOD", "0"))
    case("config: INPUT.SIZE_TRAIN [256]", opts("INPUT.SIZE_TRAIN", "[256]"))
    case("config: INPUT.PIXEL_STD with a 0", opts("INPUT.PIXEL_STD", "[0.2, 0, 0.2]"))
    case("config: MODEL.DEVICE tpu", opts("MODEL.DEVICE", "tpu"))
    case("config: MODEL.BACKBONE rn50", opts("MODEL.BACKBONE", "rn50"))
    case("config: DATASETS.NAME market", opts("DATASETS.NAME", "market"))
    case("config: 12 synthetic cameras", opts("DATASETS.SYNTHETIC.NUM_CAMERAS", "12"))
    case("config: empty OUTPUT_DIR", opts("OUTPUT_DIR", "''"))
    case("config: DATALOADER.NUM_WORKERS -1", opts("DATALOADER.NUM_WORKERS", "-1"))


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def file_cases(tmp: Path) -> None:
    cfg = load_cfg(opts=SMALL)
    model = build_model(cfg, num_classes=3, load_pretrained_weights=False)
    good = tmp / "good.pth"
    save_checkpoint(good, {"model": model.state_dict(), "config": cfg.dump()})
    marker = tmp / "pwned"
    evil = tmp / "evil.pth"
    torch.save({"model": model.state_dict(), "x": Payload(marker)}, evil)
    not_run = lambda: not marker.exists()  # noqa: E731
    case("checkpoint carrying a pickle payload", lambda: load_checkpoint(evil), kept=not_run)
    case(
        "payload as MODEL.PRETRAIN_PATH",
        lambda: build_model(
            load_cfg(opts=[*SMALL, "MODEL.PRETRAINED", "true", "MODEL.PRETRAIN_PATH", str(evil)]), 3
        ),
        kept=not_run,
    )
    case("payload through FeatureExtractor", lambda: FeatureExtractor(cfg, evil), kept=not_run)
    garbage = tmp / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    case("checkpoint of random bytes", lambda: load_checkpoint(garbage))
    case("checkpoint that does not exist", lambda: load_checkpoint(tmp / "missing.pth"))
    case(
        "resume from a weights-only file",
        lambda: load_checkpoint(good, ("model", "optimizer", "rng"), "resume training"),
    )
    case(
        "checkpoint of another backbone",
        lambda: build_trained_model(load_cfg(opts=[*SMALL, "MODEL.BACKBONE", "resnet34"]), good),
    )
    case(
        "own checkpoint as MODEL.PRETRAIN_PATH",
        lambda: build_model(
            load_cfg(opts=[*SMALL, "MODEL.PRETRAINED", "true", "MODEL.PRETRAIN_PATH", str(good)]), 3
        ),
        accept=True,
    )
    old = tmp / "old.pth"
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save({"model": model.state_dict(), "rng": rng}, old)
    case(
        "checkpoint of an earlier version (NumPy RNG array)",
        lambda: load_checkpoint(old),
        accept=True,
    )

    disk = tmp / "tmpfs"
    disk.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        == 0
    )
    small = {"w": torch.ones(4)}
    save_checkpoint(disk / "last.pth", small)

    def intact() -> bool:
        files = sorted(p.name for p in disk.iterdir())
        return files == ["last.pth"] and torch.equal(
            load_checkpoint(disk / "last.pth", ())["w"], small["w"]
        )

    if mounted:
        big = {"w": torch.zeros(1_000_000)}
        case(
            "disk full while saving (256 KiB tmpfs)",
            lambda: save_checkpoint(disk / "last.pth", big),
            kept=intact,
        )
        subprocess.run(["umount", str(disk)], check=False)

    def permission_denied(file) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    metrics = tmp / "metrics.json"
    metrics.write_text("{}")
    case(
        "no write permission (simulated EACCES)",
        lambda: io.atomic_write(metrics, permission_denied),
        kept=lambda: metrics.read_text() == "{}",
    )

    def enter(folder: Path, **kwargs) -> Callable[[], object]:
        def action() -> None:
            with open_run_dir(folder, **kwargs):
                pass

        return action

    (tmp / "a_file").write_text("")
    case("OUTPUT_DIR is a file", enter(tmp / "a_file"))
    run = tmp / "run"
    run.mkdir()
    (run / "best.pth").write_bytes(good.read_bytes())
    kept_best = lambda: (run / "best.pth").read_bytes() == good.read_bytes()  # noqa: E731
    case("training into a finished run", enter(run), kept=kept_best)
    case(
        "--resume and --overwrite together", enter(run, resume=True, overwrite=True), kept=kept_best
    )
    case("--resume without last.pth", enter(run, resume=True), kept=kept_best)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time\nfrom reid.engine.run_dir import open_run_dir\n"
                f"with open_run_dir({str(tmp / 'busy')!r}):\n"
                "    print(1, flush=True)\n    time.sleep(30)"
            ),
        ],
        stdout=subprocess.PIPE,
    )
    holder.stdout.readline()
    case("a second training on a busy OUTPUT_DIR", enter(tmp / "busy"))
    holder.kill()


def api_cases(tmp: Path) -> None:
    cfg = load_cfg(opts=SMALL)
    weights = tmp / "good.pth"
    image = tmp / "img.png"
    Image.new("RGB", (16, 32)).save(image)
    broken = tmp / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    extractor = FeatureExtractor(cfg, weights, device="cpu")
    case("FeatureExtractor device 'gpu'", lambda: FeatureExtractor(cfg, weights, device="gpu"))
    case(
        "FeatureExtractor device 'cuda:7'", lambda: FeatureExtractor(cfg, weights, device="cuda:7")
    )
    case("FeatureExtractor batch_size 0", lambda: FeatureExtractor(cfg, weights, batch_size=0))
    case("FeatureExtractor batch_size 2.5", lambda: FeatureExtractor(cfg, weights, batch_size=2.5))
    case("FeatureExtractor given an int", lambda: FeatureExtractor(3))
    case("FeatureExtractor: no such run dir", lambda: FeatureExtractor(tmp / "run_empty"))
    (tmp / "run_empty").mkdir()
    (tmp / "run_empty" / "config.yaml").write_text(cfg.dump())
    case("FeatureExtractor empty run dir", lambda: FeatureExtractor(tmp / "run_empty"))
    case("extract: missing image file", lambda: extractor([image, tmp / "nope.jpg"]))
    case("extract: float array", lambda: extractor(np.zeros((8, 4, 3), np.float32)))
    case("extract: corrupt image file", lambda: extractor([broken]))
    case("extract: a dict", lambda: extractor({"a": 1}))
    labels = (np.array([1, 2]), np.array([1, 2, 3]), np.array([0, 0]), np.array([1, 1, 1]))
    case("evaluate_rank: distmat of wrong shape", lambda: evaluate_rank(np.zeros((2, 4)), *labels))
    case("evaluate_rank: NaN distances", lambda: evaluate_rank(np.full((2, 3), np.nan), *labels))
    same_cam = (labels[0], labels[1], labels[0] * 0, labels[1] * 0)
    case("evaluate_rank: no query with a match", lambda: evaluate_rank(np.zeros((2, 3)), *same_cam))
    case("evaluate_rank: unknown ap", lambda: evaluate_rank(np.zeros((2, 3)), *labels, ap="x"))
    case("re_ranking: k1 0", lambda: re_ranking(torch.zeros(2, 4), torch.zeros(3, 4), k1=0))
    case(
        "evaluate_features: feature sizes differ",
        lambda: evaluate_features(torch.zeros(2, 4), torch.zeros(3, 5), *labels),
    )


def data_cases(tmp: Path) -> None:
    def dataset(*pairs: str) -> Callable[[], object]:
        return lambda: build_dataset(load_cfg(opts=list(pairs)))

    (tmp / "root_file").write_text("")
    case(
        "DATASETS.ROOT is a file",
        dataset("DATASETS.NAME", "synthetic", "DATASETS.ROOT", str(tmp / "root_file")),
    )
    case("market1501 not under DATASETS.ROOT", dataset("DATASETS.ROOT", str(tmp)))
    market = tmp / "market"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (market / split).mkdir(parents=True)
        Image.new("RGB", (8, 16)).save(market / split / "0001_c1s1_000001_00.jpg")
    Image.new("RGB", (8, 16)).save(market / "query" / "holiday.jpg")
    case("an image name that does not parse", lambda: DATASETS.get("market_folder")(market))
    msmt = tmp / "msmt"
    msmt.mkdir()
    (msmt / "list_query.txt").write_bytes(b"0000/\xff\xfe.jpg 0\n")
    (msmt / "list_train.txt").write_bytes(b"0000/\xff\xfe.jpg 0\n")
    case("MSMT17 list file not UTF-8", lambda: DATASETS.get("msmt17")(msmt))
    busy = tmp / "synthetic_busy" / "synthetic-300ids-6cams-seed0"
    busy.mkdir(parents=True)
    (busy / "mine.txt").write_text("mine")
    case(
        "synthetic root holding other files",
        lambda: DATASETS.get("synthetic")(busy.parent),
        kept=lambda: (busy / "mine.txt").read_text() == "mine",
    )


def cli_cases(tmp: Path) -> None:
    data = ["DATASETS.ROOT", str(tmp / "data")]
    run = tmp / "cli_run"
    train = ["--config", "configs/demo.yml", *TINY, *data, "OUTPUT_DIR", str(run)]
    case("tools/train.py: a tiny run", lambda: cli("train.py", *train), accept=True)
    best = (run / "best.pth").read_bytes()
    kept = lambda: (run / "best.pth").read_bytes() == best  # noqa: E731
    case("tools/train.py: again into the finished run", lambda: cli("train.py", *train), kept=kept)
    case(
        "tools/train.py --resume, BASE_LR changed",
        lambda: cli("train.py", "--resume", *train, "SOLVER.BASE_LR", "0.1"),
        kept=kept,
    )
    case("tools/test.py without TEST.WEIGHT", lambda: cli("test.py", *train))
    case(
        "tools/test.py into the training's OUTPUT_DIR",
        lambda: cli("test.py", *train, "TEST.WEIGHT", str(run / "best.pth")),
        accept=True,
        kept=kept,
    )
    nan_run = tmp / "nan_run"
    case(
        "tools/train.py: SGD at lr 1e12 (NaN)",
        lambda: cli(
            "train.py",
            *train,
            "OUTPUT_DIR",
            str(nan_run),
            "SOLVER.OPTIMIZER",
            "sgd",
            "SOLVER.BASE_LR",
            "1e12",
        ),
    )
    stopped = tmp / "stopped"
    stop_script = (
        "import runpy, signal, sys\nfrom reid.engine.trainer import Trainer\n"
        "run, n = Trainer.run_step, []\n"
        "def step(self, *a):\n    v = run(self, *a); n.append(1)\n"
        "    if len(n) == 5: signal.raise_signal(signal.SIGTERM)\n    return v\n"
        "Trainer.run_step = step\n"
        f"sys.argv = ['train.py', *{[*train, 'OUTPUT_DIR', str(stopped)]!r}]\n"
        "runpy.run_path('tools/train.py', run_name='__main__')\n"
    )
    case(
        "tools/train.py: SIGTERM mid-epoch",
        lambda: cli("", command=[sys.executable, "-c", stop_script]),
        kept=lambda: load_checkpoint(stopped / "last.pth")["iteration"] == 5,
    )
    broken = tmp / "broken"
    shutil.copytree(tmp / "data", broken / "data")
    query = next((broken / "data").glob("synthetic-*/query/*.jpg"))
    query.write_bytes(b"not a jpeg")
    case(
        "tools/train.py: an unreadable query image",
        lambda: cli(
            "train.py",
            *train,
            "DATASETS.ROOT",
            str(broken / "data"),
            "OUTPUT_DIR",
            str(broken / "run"),
            "SOLVER.MAX_EPOCHS",
            "1",
        ),
        kept=lambda: (broken / "run" / "last.pth").is_file(),
    )
    case(
        "tools/train.py: DATASETS.ROOT a file",
        lambda: cli(
            "train.py",
            *train,
            "DATASETS.ROOT",
            str(tmp / "root_file"),
            "OUTPUT_DIR",
            str(tmp / "other"),
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cli", action="store_true", help="leave out the tool runs")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config_cases(tmp)
        file_cases(tmp)
        api_cases(tmp)
        data_cases(tmp)
        if not args.skip_cli:
            cli_cases(tmp)
    print("| # | case | outcome | message | nothing lost |\n|---|---|---|---|---|")
    for number, (name, outcome, message, lost) in enumerate(rows, start=1):
        print(f"| {number} | {name} | {outcome} | {message} | {lost} |")
    good = sum(
        outcome in ("one line", "accepted") and lost != "LOST" for _, outcome, _, lost in rows
    )
    print(
        f"\n{good} of {len(rows)} cases end in one clear line or are rightly accepted, "
        "with nothing lost."
    )


if __name__ == "__main__":
    main()
