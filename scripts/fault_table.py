"""Tries bad inputs and faults a hostile but realistic user meets, and prints what each gives.

    python scripts/fault_table.py [--skip-cli]

Every case should end in one clear line that mentions what it must (the key, the path,
the number), or be rightly accepted, with nothing lost. The output is a Markdown table:
the case, the outcome, the message, and for the cases that could lose something, whether
it was kept. Clean outcomes are ``one line`` and ``accepted``; ``skipped`` names what is
missing here (root for the tmpfs disk-full case); anything else is a failure:
``WRONG LINE`` (one line without what it must mention), ``NOT ONE LINE``,
``TRACEBACK``, ``WRONGLY ACCEPTED``, ``WRONGLY REFUSED``, ``WRONG RESULT`` or ``LOST``.
The counts end the output and the exit code is 1 on any failure.

The CLI cases train a tiny model on a tiny synthetic set (a few minutes on 2 cores);
``--skip-cli`` leaves them out. ``tests/test_fault_table.py`` runs the other cases in CI.
"""

import argparse
import errno
import importlib.util
import io as bytes_io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reid import FeatureExtractor
from reid.config import load_cfg
from reid.data import build_run_data
from reid.data.datasets import DATASETS, Record
from reid.data.image_dataset import ImageDataset, read_image
from reid.data.transforms import build_train_transform
from reid.engine.checkpoint import build_trained_model, load_checkpoint, save_checkpoint
from reid.engine.run_dir import open_run_dir
from reid.errors import ReidError
from reid.evaluation import evaluate_rank
from reid.evaluation.feature_ranking import evaluate_features
from reid.evaluation.rerank import re_ranking
from reid.models import build_model
from reid.models.backbones import BACKBONES
from reid.search import index_gallery
from reid.utils import io

ROOT = Path(__file__).parents[1]
SMALL = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu"]
TINY = [
    "DATASETS.NAMES", "[synthetic]", "DATASETS.SYNTHETIC.NUM_IDENTITIES", "12",
    "DATASETS.SYNTHETIC.NUM_CAMERAS", "3", "MODEL.BACKBONE", "resnet18",
    "INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.SIZE_TEST", "[32, 16]",
    "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCES", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.MAX_EPOCHS", "2",
]  # fmt: skip
CLEAN = ("one line", "accepted")


class Skipped(Exception):
    """Raised by a case that cannot run here; the message says what is missing."""


class Wrong(Exception):
    """Raised by an accepted case whose result is wrong; the message says how."""


@dataclass(frozen=True)
class Case:
    """One row of the table.

    Attributes:
        name: what the user does.
        action: does it in a :class:`Workspace`; a refusal is a ReidError.
        mentions: what a refusal's message must contain (case-insensitive); ``{tmp}``
            stands for the workspace folder. Required unless ``accept``.
        accept: the right outcome is to go through (``action`` raises Wrong if its result
            is not right).
        kept: after the action, whether nothing was lost (files, the registry, ...).
        cli: runs a tool in a subprocess (minutes, not seconds).
    """

    name: str
    action: Callable[["Workspace"], object]
    mentions: Sequence[str] = ()
    accept: bool = False
    kept: Callable[["Workspace"], bool] | None = None
    cli: bool = False

    def __post_init__(self) -> None:
        if not self.accept and not self.mentions:
            raise ValueError(f"case {self.name!r}: a refusal must name what its line mentions")


@dataclass(frozen=True)
class Row:
    """A case's outcome as the table shows it."""

    name: str
    outcome: str
    message: str
    lost: str = ""

    @property
    def clean(self) -> bool:
        return self.outcome in CLEAN and self.lost != "LOST"

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"


CASES: list[Case] = []


def add(name: str, action: Callable[["Workspace"], object], *mentions: str, **options) -> None:
    """Appends a case to :data:`CASES` (options: accept, kept, cli)."""
    CASES.append(Case(name, action, mentions, **options))


class Workspace:
    """A scratch folder and the files the cases share, made on first use."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cleanup = ExitStack()

    def close(self) -> None:
        self.cleanup.close()

    def path(self, name: str) -> Path:
        """A fresh path ``tmp/name``, its parent created."""
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def cfg(self):
        return load_cfg(opts=SMALL)

    @cached_property
    def model(self) -> torch.nn.Module:
        return build_model(self.cfg, num_classes=3, load_pretrained_weights=False)

    @cached_property
    def good(self) -> Path:
        """A real checkpoint of a resnet18 at 32x16."""
        good = self.path("good.pth")
        save_checkpoint(good, {"model": self.model.state_dict(), "config": self.cfg.dump()})
        return good

    @cached_property
    def extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.cfg, self.good, device="cpu")

    @cached_property
    def marker(self) -> Path:
        """Created by a file's code if it ever runs."""
        return self.tmp / "pwned"

    def not_run(self) -> bool:
        return not self.marker.exists()

    @cached_property
    def evil(self) -> Path:
        evil = self.path("evil.pth")
        torch.save({"model": self.model.state_dict(), "x": Payload(self.marker)}, evil)
        return evil

    @cached_property
    def plugins(self) -> Path:
        """A folder on sys.path for plugin modules, removed from it on close."""
        folder = self.path("plugins/x").parent
        sys.path.insert(0, str(folder))
        self.cleanup.callback(sys.path.remove, str(folder))
        return folder

    def plugin(self, name: str, code: str) -> list[str]:
        """Writes module ``name``; returns the overrides that import it."""
        (self.plugins / f"{name}.py").write_text(code)
        self.cleanup.callback(sys.modules.pop, name, None)
        return [*SMALL, "IMPORTS", f"['{name}']"]

    def yaml(self, name: str, text: bytes) -> Path:
        path = self.path(f"configs/{name}.yml")
        path.write_bytes(text)
        return path

    # The CLI cases share one finished tiny run.
    @cached_property
    def data(self) -> Path:
        return self.tmp / "data"

    def train_args(self, output_dir: Path) -> list[str]:
        return [
            "--config", "configs/demo.yml", *TINY,
            "DATASETS.ROOT", str(self.data), "OUTPUT_DIR", str(output_dir),
        ]  # fmt: skip

    @cached_property
    def run(self) -> Path:
        return self.tmp / "cli run ü"

    @cached_property
    def tiny_run(self) -> str:
        """Trains the shared run (once) and returns the tool's last line."""
        result = cli("train.py", *self.train_args(self.run))
        self.best = (self.run / "best.pth").read_bytes()
        return result

    def ensure_trained(self) -> Path:
        """The shared run's folder, trained first if needed."""
        assert self.tiny_run
        return self.run

    def best_kept(self) -> bool:
        return (self.run / "best.pth").read_bytes() == self.best


class Payload:
    """A pickled object whose unpickling would create a folder: code run from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def run_case(case: Case, workspace: Workspace) -> Row:
    """Runs one case and classifies its outcome."""
    try:
        result = case.action(workspace)
    except Skipped as reason:
        return Row(case.name, "skipped", str(reason))
    except Wrong as err:
        outcome, message = "WRONG RESULT", str(err)
    except ReidError as err:
        message = str(err)
        missing = [
            text
            for text in (m.replace("{tmp}", str(workspace.tmp)) for m in case.mentions)
            if text.lower() not in message.lower()
        ]
        if case.accept:
            outcome = "WRONGLY REFUSED"
        elif "\n" in message.strip():
            outcome, message = "NOT ONE LINE", message.strip().replace("\n", " / ")
        elif missing:
            outcome = "WRONG LINE"
            message += f" [does not mention: {', '.join(missing)}]"
        else:
            outcome = "one line"
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a traceback is what this looks for
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        outcome, message = "TRACEBACK", f"{type(err).__name__}: {first}"
        traceback.print_exc(limit=3, file=sys.stderr)
    else:
        outcome = "accepted" if case.accept else "WRONGLY ACCEPTED"
        message = result if isinstance(result, str) else ""
    lost = ""
    if case.kept is not None:
        try:
            lost = "kept" if case.kept(workspace) else "LOST"
        except Exception as err:  # noqa: BLE001 - an unreadable leftover is a loss too
            lost, message = "LOST", f"{message} [check failed: {type(err).__name__}: {err}]"
    return Row(case.name, outcome, message.replace("|", "/"), lost)


def cli(tool: str, *args: str, command: list[str] | None = None) -> str:
    """Runs a tool; returns its last line, or raises ReidError with its one error line.

    A traceback anywhere in stderr, or a failure without an ``error:`` line, is a
    RuntimeError (counted as TRACEBACK).
    """
    command = command or [sys.executable, str(ROOT / "tools" / tool), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    return tool_outcome(result.returncode, result.stdout, result.stderr)


def tool_outcome(returncode: int, stdout: str, stderr: str) -> str:
    """See :func:`cli`."""
    lines = stderr.strip().splitlines()
    if "Traceback (most recent call last)" in stderr:
        raise RuntimeError(f"exit {returncode} with a traceback: {lines[-1] if lines else ''}")
    if returncode == 0:
        out = stdout.strip().splitlines()
        return f"exit 0: {out[-1] if out else ''}"
    if lines and lines[-1].startswith("error: "):
        raise ReidError(f"{lines[-1][7:]} (exit {returncode})")
    raise RuntimeError(f"exit {returncode}: {lines[-1] if lines else ''}")


def opts(*pairs: str) -> Callable[[Workspace], object]:
    return lambda ws: load_cfg(opts=list(pairs))


def yaml(name: str, text: bytes) -> Callable[[Workspace], object]:
    return lambda ws: load_cfg(ws.yaml(name, text))


def cfg_file(name: str) -> str:
    return "{tmp}/configs/" + name + ".yml"


# --- configs ------------------------------------------------------------------------
add(
    "config: unknown key SOLVER.BASE_LRR",
    opts("SOLVER.BASE_LRR", "0.1"),
    "SOLVER.BASE_LRR",
    "SOLVER.BASE_LR,",
)
add(
    "config: MODEL.BNNECK 'yes please'",
    opts("MODEL.BNNECK", "yes please"),
    "MODEL.BNNECK",
    "yes please",
    "true/false",
)
add(
    "config: SOLVER.MAX_EPOCHS 1.5",
    opts("SOLVER.MAX_EPOCHS", "1.5"),
    "SOLVER.MAX_EPOCHS",
    "integer",
    "1.5",
)
add("config: SOLVER.BASE_LR 1e-3", opts("SOLVER.BASE_LR", "1e-3"), accept=True)
add("config: SOLVER.BASE_LR nan", opts("SOLVER.BASE_LR", "nan"), "SOLVER.BASE_LR", "finite", "nan")
add("config: SOLVER.BASE_LR 0", opts("SOLVER.BASE_LR", "0"), "SOLVER.BASE_LR", "> 0")
add("config: key with no value, last", opts("SOLVER.MAX_EPOCHS"), "no value", "SOLVER.MAX_EPOCHS")
add(
    "config: key with no value, mid",
    opts("SOLVER.MAX_EPOCHS", "SOLVER.BASE_LR", "1"),
    "no value",
    "SOLVER.MAX_EPOCHS",
)
add("config: a section given a value", opts("SOLVER", "3"), "SOLVER", "section")
add(
    "config: YAML key with no value",
    yaml("novalue", b"SOLVER:\n  BASE_LR:\n"),
    "SOLVER.BASE_LR",
    "no value",
    cfg_file("novalue"),
)
add(
    "config: YAML file not UTF-8",
    yaml("latin1", "OUTPUT_DIR: r\xe9sultats\n".encode("latin-1")),
    cfg_file("latin1"),
    "UTF-8",
)
add(
    "config: YAML syntax error",
    yaml("syntax", b"SOLVER:\n  BASE_LR: [0.1\n"),
    cfg_file("syntax"),
    "line 3",
)
add("config: YAML holding a list", yaml("list", b"- 1\n- 2\n"), cfg_file("list"), "mapping", "list")
add(
    "config: YAML holding a scalar",
    yaml("scalar", b"resnet50\n"),
    cfg_file("scalar"),
    "mapping",
    "str",
)
add("config: empty YAML file (the defaults)", yaml("empty", b""), accept=True)
add("config: YAML of comments only", yaml("comments", b"# all defaults\n"), accept=True)
add(
    "config: YAML section given a list",
    yaml("seclist", b"SOLVER: [1, 2]\n"),
    "SOLVER",
    "section",
    cfg_file("seclist"),
)
add(
    "config: YAML setting a key twice",
    yaml("twice", b"SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n"),
    "BASE_LR",
    cfg_file("twice"),
)
add(
    "config: YAML with a python/object tag",
    lambda ws: load_cfg(
        ws.yaml("tag", f"SOLVER: !!python/object/apply:os.makedirs ['{ws.marker}']\n".encode())
    ),
    cfg_file("tag"),
    "python/object",
    kept=Workspace.not_run,
)
add("config: missing file", lambda ws: load_cfg(ws.tmp / "nope.yml"), "{tmp}/nope.yml", "not found")
add("config: a folder as config file", lambda ws: load_cfg(ws.tmp), "{tmp}")
add(
    "config: SOLVER.WARMUP_EPOCHS -1",
    opts("SOLVER.WARMUP_EPOCHS", "-1"),
    "SOLVER.WARMUP_EPOCHS",
    ">= 0",
    "-1",
)
add("config: INPUT.PADDING -4", opts("INPUT.PADDING", "-4"), "INPUT.PADDING", ">= 0", "-4")
add("config: DATALOADER.CACHE disk", opts("DATALOADER.CACHE", "disk"), "DATALOADER.CACHE", "disk")
add(
    "config: DATALOADER.CACHE ram with AutoAugment",
    opts("DATALOADER.CACHE", "ram", "INPUT.AUTOAUGMENT_PROB", "0.5"),
    "DATALOADER.CACHE ram",
    "INPUT.AUTOAUGMENT_PROB",
)
add("config: SOLVER.LOG_PERIOD 0", opts("SOLVER.LOG_PERIOD", "0"), "SOLVER.LOG_PERIOD", ">= 1")
add(
    "config: one identity per batch (P=1)",
    opts("SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "4"),
    "SOLVER.IMS_PER_BATCH",
    "DATALOADER.NUM_INSTANCES",
    "P >= 2",
)
add(
    "config: K=1 with the triplet loss",
    opts("DATALOADER.NUM_INSTANCES", "1"),
    "DATALOADER.NUM_INSTANCES",
    "triplet",
    "K >= 2",
)
add(
    "config: batch not a multiple of K",
    opts("SOLVER.IMS_PER_BATCH", "30"),
    "SOLVER.IMS_PER_BATCH",
    "30",
    "multiple",
)
add(
    "config: every loss weight 0",
    opts("LOSS.CE_WEIGHT", "0", "LOSS.TRIPLET_WEIGHT", "0"),
    "LOSS.WEIGHTS",
    "at least one > 0",
)
add("config: LOSS.LABEL_SMOOTH 1", opts("LOSS.LABEL_SMOOTH", "1"), "LOSS.LABEL_SMOOTH", "[0, 1)")
add("config: SOLVER.MOMENTUM 1.5", opts("SOLVER.MOMENTUM", "1.5"), "SOLVER.MOMENTUM", "1.5")
add(
    "config: SOLVER.STEPS decreasing",
    opts("SOLVER.STEPS", "[70, 40]"),
    "SOLVER.STEPS",
    "increasing",
    "[70, 40]",
)
add("config: SEED -1", opts("SEED", "-1"), "SEED", "-1")
add("config: TEST.RERANK_LAMBDA 2", opts("TEST.RERANK_LAMBDA", "2"), "TEST.RERANK_LAMBDA", "[0, 1]")
add("config: TEST.RERANK_K1 0", opts("TEST.RERANK_K1", "0"), "TEST.RERANK_K1", ">= 1")
add("config: TEST.EVAL_PERIOD 0", opts("TEST.EVAL_PERIOD", "0"), "TEST.EVAL_PERIOD", ">= 1")
add(
    "config: INPUT.SIZE_TRAIN [256]",
    opts("INPUT.SIZE_TRAIN", "[256]"),
    "INPUT.SIZE_TRAIN",
    "[H, W]",
    "[256]",
)
add(
    "config: INPUT.PIXEL_STD with a 0",
    opts("INPUT.PIXEL_STD", "[0.2, 0, 0.2]"),
    "INPUT.PIXEL_STD",
    "positive",
)
add("config: MODEL.DEVICE tpu", opts("MODEL.DEVICE", "tpu"), "MODEL.DEVICE", "tpu", "cuda")
# Registry names are checked where the registry is used, since IMPORTS may add names.
add(
    "config: MODEL.BACKBONE rn50",
    lambda ws: build_model(load_cfg(opts=[*SMALL, "MODEL.BACKBONE", "rn50"]), 3, False),
    "rn50",
    "resnet50",
)
add(
    "config: DATASETS.NAMES [market]",
    lambda ws: build_run_data(load_cfg(opts=["DATASETS.NAMES", "[market]"])),
    "'market'",
    "market1501",
)
add(
    "config: 12 synthetic cameras",
    opts("DATASETS.SYNTHETIC.NUM_CAMERAS", "12"),
    "DATASETS.SYNTHETIC.NUM_CAMERAS",
    "12",
)
add("config: empty OUTPUT_DIR", opts("OUTPUT_DIR", "''"), "OUTPUT_DIR", "empty")
add(
    "config: DATALOADER.NUM_WORKERS -1",
    opts("DATALOADER.NUM_WORKERS", "-1"),
    "DATALOADER.NUM_WORKERS",
    ">= 0",
)

# --- plugins (IMPORTS) --------------------------------------------------------------
add(
    "plugin raising while imported",
    lambda ws: load_cfg(opts=ws.plugin("broken_plugin", "raise RuntimeError('plugin broke')\n")),
    "broken_plugin.py:1",
    "plugin broke",
)
add(
    "plugin with a syntax error",
    lambda ws: load_cfg(opts=ws.plugin("syntax_plugin", "def f(:\n")),
    "syntax_plugin.py",
    "line 1",
)
add(
    "plugin importing a package not installed",
    lambda ws: load_cfg(opts=ws.plugin("needy_plugin", "import not_installed_pkg\n")),
    "needy_plugin",
    "not_installed_pkg",
)
SHADOW = """from reid.models.backbones import BACKBONES


@BACKBONES.register("resnet50")
def my_resnet50(**kwargs):
    raise AssertionError("the built-in resnet50 was replaced")
"""
add(
    "plugin registering 'resnet50' again",
    lambda ws: load_cfg(opts=ws.plugin("shadow_plugin", SHADOW)),
    "shadow_plugin.py:4",  # the plugin's own line, not the registry's
    "resnet50",
    "already registered",
    kept=lambda ws: BACKBONES.get("resnet50").__module__ != "shadow_plugin",
)
# A training script listed as a plugin: its argparse exits (SystemExit) at import.
SCRIPT_PLUGIN = "import argparse\nargparse.ArgumentParser().parse_args(['--unknown'])\n"
add(
    "plugin that parses sys.argv at import (SystemExit)",
    lambda ws: load_cfg(opts=ws.plugin("script_plugin", SCRIPT_PLUGIN)),
    "script_plugin",
)
add("plugin named by a path", opts("IMPORTS", "['../my_plugin']"), "../my_plugin")


# --- checkpoints and other files ----------------------------------------------------
def written(ws: Workspace, name: str, data: bytes) -> Path:
    path = ws.path(name)
    path.write_bytes(data)
    return path


def half_of(ws: Workspace, source: Path, name: str) -> Path:
    """The first half of ``source``'s bytes, as a file copied or saved incompletely."""
    data = source.read_bytes()
    path = ws.path(name)
    path.write_bytes(data[: len(data) // 2])
    return path


def legacy_half(ws: Workspace) -> Path:
    legacy = ws.path("legacy.pth")
    torch.save({"model": ws.model.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    return half_of(ws, legacy, "legacy_half.pth")


def run_dir_with(ws: Workspace, name: str, best: Path) -> Path:
    folder = ws.path(f"{name}/best.pth").parent
    shutil.copyfile(best, folder / "best.pth")
    (folder / "config.yaml").write_text(ws.cfg.dump())
    return folder


def old_checkpoint(ws: Workspace) -> Path:
    old = ws.path("old.pth")
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save({"model": ws.model.state_dict(), "rng": rng}, old)
    return old


def pretrain(path_of: Callable[[Workspace], Path]) -> Callable[[Workspace], object]:
    def action(ws: Workspace) -> object:
        options = [*SMALL, "MODEL.PRETRAINED", "true", "MODEL.PRETRAIN_PATH", str(path_of(ws))]
        return build_model(load_cfg(opts=options), 3)

    return action


add(
    "checkpoint carrying a pickle payload",
    lambda ws: load_checkpoint(ws.evil),
    "{tmp}/evil.pth",
    "os.makedirs",
    kept=Workspace.not_run,
)
add(
    "payload as MODEL.PRETRAIN_PATH",
    pretrain(lambda ws: ws.evil),
    "{tmp}/evil.pth",
    "os.makedirs",
    kept=Workspace.not_run,
)
add(
    "payload through FeatureExtractor",
    lambda ws: FeatureExtractor(ws.cfg, ws.evil),
    "{tmp}/evil.pth",
    kept=Workspace.not_run,
)
add(
    "checkpoint of random bytes",
    lambda ws: load_checkpoint(written(ws, "garbage.pth", b"not a checkpoint")),
    "{tmp}/garbage.pth",
)
add(
    "checkpoint cut in half (copy interrupted)",
    lambda ws: load_checkpoint(half_of(ws, ws.good, "half.pth")),
    "{tmp}/half.pth",
    "incomplete",
)
add(
    "checkpoint of the legacy format cut in half",
    lambda ws: load_checkpoint(legacy_half(ws)),
    "{tmp}/legacy_half.pth",
    "incomplete",
)
add(
    "zero-byte checkpoint",
    lambda ws: load_checkpoint(written(ws, "zero.pth", b"")),
    "{tmp}/zero.pth",
    "empty",
)
add(
    "run folder whose best.pth is cut in half",
    lambda ws: FeatureExtractor(run_dir_with(ws, "half_run", half_of(ws, ws.good, "h.pth"))),
    "{tmp}/half_run/best.pth",
    "incomplete",
)
add(
    "checkpoint holding a list",
    lambda ws: load_checkpoint(_save([1, 2], ws.path("list.pth"))),
    "{tmp}/list.pth",
    "list",
)
add(
    "checkpoint that does not exist",
    lambda ws: load_checkpoint(ws.tmp / "missing.pth"),
    "{tmp}/missing.pth",
    "not found",
)
add(
    "resume from a weights-only file",
    lambda ws: load_checkpoint(ws.good, ("model", "optimizer", "rng"), "resume training"),
    "{tmp}/good.pth",
    "'optimizer'",
)
add(
    "checkpoint of another backbone",
    lambda ws: build_trained_model(load_cfg(opts=[*SMALL, "MODEL.BACKBONE", "resnet34"]), ws.good),
    "{tmp}/good.pth",
    "missing",
)
add("own checkpoint as MODEL.PRETRAIN_PATH", pretrain(lambda ws: ws.good), accept=True)
add(
    "checkpoint of an earlier version (NumPy RNG array)",
    lambda ws: load_checkpoint(old_checkpoint(ws)),
    accept=True,
)


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def disk_full(ws: Workspace) -> object:
    disk = ws.path("tmpfs/x").parent
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise Skipped("needs root to mount a 256 KiB tmpfs")
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]
    result = subprocess.run(mount, capture_output=True, text=True)
    if result.returncode != 0:
        raise Skipped(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    ws.cleanup.callback(subprocess.run, ["umount", str(disk)], check=False)
    save_checkpoint(disk / "last.pth", {"w": torch.ones(4)})
    return save_checkpoint(disk / "last.pth", {"w": torch.zeros(1_000_000)})


def disk_intact(ws: Workspace) -> bool:
    disk = ws.tmp / "tmpfs"
    files = sorted(p.name for p in disk.iterdir())
    return files == ["last.pth"] and torch.equal(
        load_checkpoint(disk / "last.pth", ())["w"], torch.ones(4)
    )


add(
    "disk full while saving (256 KiB tmpfs)",
    disk_full,
    "{tmp}/tmpfs/last.pth",
    "No space left",
    kept=disk_intact,
)


def permission_denied(ws: Workspace) -> object:
    def refuse(file) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    metrics = ws.path("metrics.json")
    metrics.write_text("{}")
    return io.atomic_write(metrics, refuse)


add(
    "no write permission (simulated EACCES)",
    permission_denied,
    "{tmp}/metrics.json",
    "Permission denied",
    kept=lambda ws: (
        (ws.tmp / "metrics.json").read_text() == "{}"
        and not (ws.tmp / ".metrics.json.tmp").exists()
    ),
)


def enter(name: str, make: Callable[[Path], object] = lambda folder: None, **kwargs):
    def action(ws: Workspace) -> None:
        folder = ws.tmp / name
        make(folder)
        with open_run_dir(folder, **kwargs):
            pass

    return action


def finished_run(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "best.pth").write_bytes(b"the only copy of a week of training")


def best_kept(name: str) -> Callable[[Workspace], bool]:
    return lambda ws: (ws.tmp / name / "best.pth").read_bytes().startswith(b"the only copy")


add(
    "OUTPUT_DIR is a file", enter("a_file", lambda f: f.write_text("")), "{tmp}/a_file", "is a file"
)
add(
    "training into a finished run",
    enter("done", finished_run),
    "{tmp}/done",
    "--resume",
    "--overwrite",
    kept=best_kept("done"),
)
add(
    "--resume and --overwrite together",
    enter("done2", finished_run, resume=True, overwrite=True),
    "--resume",
    "--overwrite",
    kept=best_kept("done2"),
)
add(
    "--resume without last.pth",
    enter("done3", finished_run, resume=True),
    "last.pth",
    "{tmp}/done3",
    kept=best_kept("done3"),
)


def busy_output_dir(ws: Workspace) -> None:
    folder = ws.tmp / "busy"
    code = (
        "import time\nfrom reid.engine.run_dir import open_run_dir\n"
        f"with open_run_dir({str(folder)!r}):\n    print(1, flush=True)\n    time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        with open_run_dir(folder):
            pass
    finally:
        holder.kill()
        holder.wait()


add("a second training on a busy OUTPUT_DIR", busy_output_dir, "{tmp}/busy", "in use")


# --- images -------------------------------------------------------------------------
# Odd but real image files, each with the RGB picture it must read as.
def gradient16() -> np.ndarray:
    return (np.arange(16 * 8, dtype=np.uint16).reshape(16, 8) * 500).astype(np.uint16)


def write_odd_image(ws: Workspace, kind: str) -> tuple[Path, np.ndarray | None]:
    """Writes an image of ``kind``; returns it and the (H, W, 3) uint8 it must read as."""
    folder = ws.path(f"odd images é/{kind}").parent
    if kind == "16-bit grayscale PNG":
        values = gradient16()
        path = folder / "sixteen bit.png"
        Image.fromarray(values).save(path)
        eight = np.round(values / 257).astype(np.uint8)  # 65535 -> 255, the full range kept
        return path, np.repeat(eight[..., None], 3, axis=2)
    if kind == "CMYK JPEG":
        path = folder / "cmyk.jpg"
        Image.new("CMYK", (8, 16), (0, 0, 0, 0)).save(path, quality=100)
        return path, np.full((16, 8, 3), 255, np.uint8)  # no ink: white
    if kind == "palette PNG with transparency":
        path = folder / "palette.png"
        image = Image.new("P", (8, 16), 1)
        image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        image.save(path, transparency=0)
        return path, np.tile(np.array([0, 0, 255], np.uint8), (16, 8, 1))
    if kind == "grayscale JPEG":
        path = folder / "gray.jpg"
        Image.new("L", (8, 16), 77).save(path, quality=100)
        return path, np.full((16, 8, 3), 77, np.uint8)
    if kind == "RGBA PNG":
        path = folder / "rgba.png"
        Image.new("RGBA", (8, 16), (10, 20, 30, 255)).save(path)
        return path, np.tile(np.array([10, 20, 30], np.uint8), (16, 8, 1))
    if kind == "phone JPEG rotated by EXIF":
        path = folder / "rotated.jpg"
        pixels = np.zeros((8, 16, 3), np.uint8)  # stored landscape, shown portrait
        pixels[:, :8] = 255
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        Image.fromarray(pixels).save(path, exif=exif, quality=100)
        upright = np.zeros((16, 8, 3), np.uint8)
        upright[:8] = 255  # the stored left half is on top once shown
        return path, upright
    if kind == "float TIFF":
        path = folder / "depth.tiff"
        Image.fromarray(np.full((16, 8), 0.5, np.float32)).save(path)
        return path, None
    if kind == "zero-byte .jpg":
        path = folder / "zero.jpg"
        path.write_bytes(b"")
        return path, None
    if kind == "text file named .jpg":
        path = folder / "notes.jpg"
        path.write_text("this is not a picture\n")
        return path, None
    if kind == "JPEG cut in half":
        path = folder / "cut.jpg"
        buffer = bytes_io.BytesIO()
        Image.new("RGB", (64, 128), (200, 100, 50)).save(buffer, "JPEG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        return path, None
    if kind == "0x0 PNG":
        path = folder / "empty.png"
        path.write_bytes(_png_header(0, 0))
        return path, None
    raise ValueError(kind)


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def read_as(kind: str) -> Callable[[Workspace], object]:
    """Training data: the image through ImageDataset with the training transform."""

    def action(ws: Workspace) -> str:
        path, expected = write_odd_image(ws, kind)
        transform = build_train_transform((32, 16), [0.5] * 3, [0.25] * 3)
        tensor, _, _ = ImageDataset([Record(str(path), 0, 0)], transform)[0]
        if tensor.shape != (3, 32, 16) or not torch.isfinite(tensor).all():
            raise Wrong(f"training tensor of shape {tuple(tensor.shape)}")
        pixels = np.asarray(read_image(str(path)))
        error = (
            np.abs(pixels.astype(int) - expected).max() if pixels.shape == expected.shape else -1
        )
        if error < 0 or error > 2:  # JPEG may round by a level or two
            raise Wrong(f"read as {pixels.shape} pixels off by {error}, not the picture shown")
        return f"read as the {expected.shape[0]}x{expected.shape[1]} picture it shows"

    return action


def refused(kind: str) -> Callable[[Workspace], object]:
    def action(ws: Workspace) -> object:
        path, _ = write_odd_image(ws, kind)
        transform = build_train_transform((32, 16), [0.5] * 3, [0.25] * 3)
        return ImageDataset([Record(str(path), 0, 0)], transform)[0]

    return action


for kind in (
    "16-bit grayscale PNG",
    "CMYK JPEG",
    "palette PNG with transparency",
    "grayscale JPEG",
    "RGBA PNG",
    "phone JPEG rotated by EXIF",
):
    add(f"training image: {kind}", read_as(kind), accept=True)
IMAGE_FOLDER = "{tmp}/odd images é/"
add("training image: zero-byte .jpg", refused("zero-byte .jpg"), IMAGE_FOLDER + "zero.jpg", "empty")
add("training image: 0x0 PNG", refused("0x0 PNG"), IMAGE_FOLDER + "empty.png")
add(
    "training image: text file named .jpg",
    refused("text file named .jpg"),
    IMAGE_FOLDER + "notes.jpg",
)
add(
    "training image: JPEG cut in half",
    refused("JPEG cut in half"),
    IMAGE_FOLDER + "cut.jpg",
    "truncated",
)
add(
    "training image: float TIFF (mode F)",
    refused("float TIFF"),
    IMAGE_FOLDER + "depth.tiff",
    "mode F",
)


def extract_16bit(as_pil: bool) -> Callable[[Workspace], object]:
    """The extractor must see a 16-bit PNG as the 8-bit picture it shows."""

    def action(ws: Workspace) -> str:
        path, expected = write_odd_image(ws, "16-bit grayscale PNG")
        image = Image.open(path) if as_pil else path
        got = ws.extractor([image])
        want = ws.extractor([expected])
        if not torch.allclose(got, want, atol=1e-3):
            error = (got - want).abs().max().item()
            raise Wrong(f"feature differs from the 8-bit picture's by {error:.3g}")
        return "the feature of the picture it shows"

    return action


add("extractor: 16-bit PNG path", extract_16bit(as_pil=False), accept=True)
add(
    "extractor: 16-bit PNG opened by the caller (PIL mode I;16)",
    extract_16bit(as_pil=True),
    accept=True,
)
add(
    "extractor: zero-byte .jpg",
    lambda ws: ws.extractor([write_odd_image(ws, "zero-byte .jpg")[0]]),
    "image 0",
    IMAGE_FOLDER + "zero.jpg",
)
add(
    "extractor: text file named .jpg",
    lambda ws: ws.extractor([write_odd_image(ws, "text file named .jpg")[0]]),
    "image 0",
    IMAGE_FOLDER + "notes.jpg",
)
add(
    "extractor: a 0x0 PIL image",
    lambda ws: ws.extractor([Image.new("RGB", (10, 10)), Image.new("RGB", (0, 0))]),
    "image 1",
    "0x0",
)
add(
    "extractor: a 0x0 array",
    lambda ws: ws.extractor([np.zeros((0, 0, 3), np.uint8)]),
    "image 0",
    "0x0",
)


def spaced_run(ws: Workspace) -> str:
    folder = run_dir_with(ws, "my runs/résultats ü", ws.good)
    feats = FeatureExtractor(folder, device="cpu")([write_odd_image(ws, "grayscale JPEG")[0]])
    return f"features {tuple(feats.shape)}"


add("extractor: run folder and image with spaces and non-ASCII", spaced_run, accept=True)


# --- search index -------------------------------------------------------------------
def gallery(ws: Workspace) -> Path:
    folder = ws.path("gallery ß/x").parent
    for number in range(3):
        Image.new("RGB", (8, 16), (number * 60, 0, 0)).save(folder / f"pic {number} é.jpg")
    return folder


def search_with_index(content: Callable[[Path], bytes] | None) -> Callable[[Workspace], object]:
    """Indexes the gallery, damages the index file, then searches again."""

    def action(ws: Workspace) -> str:
        folder = gallery(ws)
        index = ws.tmp / "gallery_index.npz"
        index.unlink(missing_ok=True)
        index_gallery(ws.extractor, folder, index)
        if content is not None:
            index.write_bytes(content(index))
        _, feats, embedded = index_gallery(ws.extractor, folder, index)
        if feats.shape != (3, ws.extractor.feat_dim):
            raise Wrong(f"features {tuple(feats.shape)} for 3 images")
        return f"{embedded} images embedded again"

    return action


def broken_gallery(ws: Workspace) -> Path:
    folder = ws.path("broken gallery/x").parent
    shutil.copytree(gallery(ws), folder, dirs_exist_ok=True)
    (folder / "zz broken.jpg").write_bytes(b"")
    return folder


def foreign_features(index: Path) -> bytes:
    with np.load(index) as saved:
        fields = dict(saved)
    fields["features"] = np.zeros((3, 5), np.float32)  # another model's size
    buffer = bytes_io.BytesIO()
    np.savez(buffer, **fields)
    return buffer.getvalue()


add("search: gallery and names with spaces and non-ASCII", search_with_index(None), accept=True)
add(
    "search: index file cut in half",
    search_with_index(lambda p: p.read_bytes()[: p.stat().st_size // 2]),
    accept=True,
)
add("search: zero-byte index file", search_with_index(lambda p: b""), accept=True)
add("search: index of random bytes", search_with_index(lambda p: os.urandom(300)), accept=True)
add(
    "search: index whose features have another size",
    search_with_index(foreign_features),
    accept=True,
)
add(
    "search: an unreadable image in the gallery",
    lambda ws: index_gallery(ws.extractor, broken_gallery(ws), ws.tmp / "gallery_index2.npz"),
    "{tmp}/broken gallery/zz broken.jpg",
)


# --- the Python API -----------------------------------------------------------------
def image_path(ws: Workspace) -> Path:
    path = ws.path("img.png")
    Image.new("RGB", (16, 32)).save(path)
    return path


def empty_run(ws: Workspace) -> Path:
    folder = ws.path("run_empty/config.yaml").parent
    (folder / "config.yaml").write_text(ws.cfg.dump())
    return folder


LABELS = (np.array([1, 2]), np.array([1, 2, 3]), np.array([0, 0]), np.array([1, 1, 1]))
SAME_CAMERA = (LABELS[0], LABELS[1], LABELS[0] * 0, LABELS[1] * 0)

add(
    "FeatureExtractor device 'gpu'",
    lambda ws: FeatureExtractor(ws.cfg, ws.good, device="gpu"),
    "'gpu'",
    "cuda:N",
)
add(
    "FeatureExtractor device 'cuda:7'",
    lambda ws: (
        FeatureExtractor(ws.cfg, ws.good, device="cuda:7")
        if not torch.cuda.is_available()
        else _skip("CUDA is available here")
    ),
    "cuda:7",
)
add(
    "FeatureExtractor batch_size 0",
    lambda ws: FeatureExtractor(ws.cfg, ws.good, batch_size=0),
    "batch_size",
    "got 0",
)
add(
    "FeatureExtractor batch_size 2.5",
    lambda ws: FeatureExtractor(ws.cfg, ws.good, batch_size=2.5),
    "batch_size",
    "2.5",
)
add("FeatureExtractor given an int", lambda ws: FeatureExtractor(3), "int")
add(
    "FeatureExtractor: no such run dir",
    lambda ws: FeatureExtractor(ws.tmp / "no_run"),
    "{tmp}/no_run",
    "not found",
)
add(
    "FeatureExtractor empty run dir",
    lambda ws: FeatureExtractor(empty_run(ws)),
    "{tmp}/run_empty",
    "best.pth",
)
add(
    "extract: missing image file",
    lambda ws: ws.extractor([image_path(ws), ws.tmp / "nope.jpg"]),
    "image 1",
    "{tmp}/nope.jpg",
)
add(
    "extract: float array",
    lambda ws: ws.extractor(np.zeros((8, 4, 3), np.float32)),
    "image 0",
    "uint8",
    "float32",
)
add("extract: a dict", lambda ws: ws.extractor({"a": 1}), "dict")
add(
    "evaluate_rank: distmat of wrong shape",
    lambda ws: evaluate_rank(np.zeros((2, 4)), *LABELS),
    "g_pids",
    "(2, 4)",
)
add(
    "evaluate_rank: NaN distances",
    lambda ws: evaluate_rank(np.full((2, 3), np.nan), *LABELS),
    "NaN",
)
add(
    "evaluate_rank: no query with a match",
    lambda ws: evaluate_rank(np.zeros((2, 3)), *SAME_CAMERA),
    "no query",
    "2 queries",
)
add(
    "evaluate_rank: unknown ap",
    lambda ws: evaluate_rank(np.zeros((2, 3)), *LABELS, ap="x"),
    "'x'",
    "standard",
)
add(
    "re_ranking: k1 0",
    lambda ws: re_ranking(torch.zeros(2, 4), torch.zeros(3, 4), k1=0),
    "k1",
    "k1=0",
)
add(
    "evaluate_features: feature sizes differ",
    lambda ws: evaluate_features(torch.zeros(2, 4), torch.zeros(3, 5), *LABELS),
    "4",
    "5",
)


def _skip(reason: str) -> object:
    raise Skipped(reason)


# --- datasets -----------------------------------------------------------------------
def dataset(*pairs: str) -> Callable[[Workspace], object]:
    return lambda ws: build_run_data(
        load_cfg(opts=[p.replace("{tmp}", str(ws.tmp)) for p in pairs])
    )


def market_with_holiday(ws: Workspace) -> object:
    market = ws.tmp / "market"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (market / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16)).save(market / split / "0001_c1s1_000001_00.jpg")
    Image.new("RGB", (8, 16)).save(market / "query" / "holiday.jpg")
    return DATASETS.get("market_folder")(market)


def msmt_not_utf8(ws: Workspace) -> object:
    msmt = ws.path("msmt/x").parent
    (msmt / "list_query.txt").write_bytes(b"0000/\xff\xfe.jpg 0\n")
    (msmt / "list_train.txt").write_bytes(b"0000/\xff\xfe.jpg 0\n")
    return DATASETS.get("msmt17")(msmt)


def synthetic_busy(ws: Workspace) -> object:
    busy = ws.path("synthetic_busy/synthetic-300ids-6cams-seed0/mine.txt")
    busy.write_text("mine")
    return DATASETS.get("synthetic")(busy.parent.parent)


add(
    "DATASETS.ROOT is a file",
    lambda ws: dataset(
        "DATASETS.NAMES", "[synthetic]", "DATASETS.ROOT", str(written(ws, "root_file", b""))
    )(ws),
    "DATASETS.ROOT",
    "{tmp}/root_file",
    "is a file",
)
add(
    "market1501 not under DATASETS.ROOT",
    lambda ws: dataset("DATASETS.ROOT", str(ws.path("other data/x").parent))(ws),
    "bounding_box_train",
    "{tmp}/other data",
)
add(
    "DATASETS.ROOT does not exist",
    dataset("DATASETS.ROOT", "{tmp}/nothing"),
    "root",
    "{tmp}/nothing",
)
add(
    "an image name that does not parse",
    market_with_holiday,
    "{tmp}/market/query/holiday.jpg",
    "PID_cCAMERA",
)
add("MSMT17 list file not UTF-8", msmt_not_utf8, "{tmp}/msmt/list_train.txt", "utf-8")


def vehicleid_bad_line(ws: Workspace) -> object:
    lists = ws.path("vehicleid/train_test_split/x").parent
    Image.new("RGB", (8, 16)).save(ws.path("vehicleid/image/0000001.jpg"))
    (lists / "train_list.txt").write_text("0000001 2\n0000002\n")
    return DATASETS.get("vehicleid")(lists.parent)


def image_folder_loose_image(ws: Workspace) -> object:
    folder = ws.path("people/x").parent
    for split in ("train", "query", "gallery"):
        Image.new("RGB", (8, 16)).save(ws.path(f"people/{split}/0001/a.jpg"))
    Image.new("RGB", (8, 16)).save(folder / "query" / "b.jpg")
    return DATASETS.get("image_folder")(folder)


def some_without_cameras(ws: Workspace) -> object:
    market = ws.tmp / "half_cameras"
    for split, name in (
        ("bounding_box_train", "0001_c1_a.jpg"),
        ("query", "0002_c1_a.jpg"),
        ("bounding_box_test", "0002_b.jpg"),
    ):
        Image.new("RGB", (8, 16)).save(ws.path(f"half_cameras/{split}/{name}"))
    return DATASETS.get("market_folder")(market)


def mot_bad_gt_line(ws: Workspace) -> object:
    from reid.data.mot import plan_mot_dataset

    sequence = ws.path("mot/SEQ-01/gt/x").parent.parent
    info = "[Sequence]\nname=SEQ-01\nimDir=img1\nframeRate=10\nseqLength=1\n"
    (sequence / "seqinfo.ini").write_text(info + "imWidth=64\nimHeight=64\nimExt=.jpg\n")
    (sequence / "gt" / "gt.txt").write_text("1,1,0,0,10,40,1,1,1\n1,2,0,0\n")
    Image.new("RGB", (64, 64)).save(ws.path("mot/SEQ-01/img1/000001.jpg"))
    return plan_mot_dataset(sequence.parent)


add(
    "config: DATASETS.NAME and DATASETS.NAMES",
    yaml("name_and_names", b"DATASETS:\n  NAME: dukemtmc\n  NAMES: [market1501]\n"),
    "DATASETS.NAME",
    "DATASETS.NAMES",
)
add(
    "config: a dataset twice in DATASETS.NAMES",
    opts("DATASETS.NAMES", "[market1501, market1501]"),
    "DATASETS.NAMES",
    "distinct",
)
add(
    "config: DATASETS.TESTS unknown name",
    lambda ws: build_run_data(load_cfg(opts=["DATASETS.TESTS", "[duke]"])),
    "'duke'",
    "dukemtmc",
)
add(
    "config: DATASETS.VEHICLEID_TEST_SIZE 3200",
    opts("DATASETS.VEHICLEID_TEST_SIZE", "3200"),
    "DATASETS.VEHICLEID_TEST_SIZE",
    "800, 1600 or 2400",
)
add("VehicleID list line malformed", vehicleid_bad_line, "train_list.txt:2", "<image>")
add(
    "image_folder image outside an identity folder",
    image_folder_loose_image,
    "{tmp}/people/query/b.jpg",
)
add(
    "market_folder gallery with and without camera ids",
    some_without_cameras,
    "{tmp}/half_cameras/bounding_box_test/0002_b.jpg",
    "camera",
)
add("MOT gt.txt line malformed", mot_bad_gt_line, "{tmp}/mot/SEQ-01/gt/gt.txt:2")
add(
    "synthetic root holding other files",
    synthetic_busy,
    "{tmp}/synthetic_busy/synthetic-300ids-6cams-seed0",
    "not empty",
    kept=lambda ws: (
        (ws.tmp / "synthetic_busy/synthetic-300ids-6cams-seed0/mine.txt").read_text() == "mine"
    ),
)


# --- the tools (CLI) ----------------------------------------------------------------
def train(ws: Workspace, output_dir: Path, *extra: str) -> str:
    return cli("train.py", *ws.train_args(output_dir), *extra)


def cli_case(name: str, action: Callable[[Workspace], object], *mentions: str, **options) -> None:
    add(name, action, *mentions, cli=True, **options)


cli_case(
    "tools/train.py: a tiny run (into a folder with a space and ü)",
    lambda ws: ws.tiny_run,
    accept=True,
)
cli_case(
    "tools/train.py: again into the finished run",
    lambda ws: ws.tiny_run and train(ws, ws.run),
    "{tmp}/cli run ü",
    "--resume",
    kept=Workspace.best_kept,
)
cli_case(
    "tools/train.py --resume, BASE_LR changed",
    lambda ws: ws.tiny_run and train(ws, ws.run, "--resume", "SOLVER.BASE_LR", "0.1"),
    "SOLVER.BASE_LR",
    kept=Workspace.best_kept,
)
cli_case(
    "tools/test.py without TEST.WEIGHT",
    lambda ws: cli("test.py", *ws.train_args(ws.run)),
    "TEST.WEIGHT",
)
cli_case(
    "tools/test.py into the training's OUTPUT_DIR",
    lambda ws: (
        ws.tiny_run
        and cli("test.py", *ws.train_args(ws.run), "TEST.WEIGHT", str(ws.run / "best.pth"))
    ),
    accept=True,
    kept=Workspace.best_kept,
)


def two_tests_at_once(ws: Workspace) -> str:
    """Two evaluations of the same run into the same OUTPUT_DIR/test at the same time."""
    ws.ensure_trained()
    args = [*ws.train_args(ws.run), "TEST.WEIGHT", str(ws.run / "best.pth")]
    command = [sys.executable, str(ROOT / "tools" / "test.py"), *args]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(command, cwd=ROOT, **pipes) for _ in range(2)]
    outcomes = []
    for process in runs:
        stdout, stderr = process.communicate(timeout=600)
        try:
            outcomes.append(tool_outcome(process.returncode, stdout, stderr))
        except ReidError as err:  # the second may refuse, in one line naming the folder
            outcomes.append(f"refused: {err}")
    if sum(line.startswith("exit 0") for line in outcomes) == 0:
        raise Wrong(" and ".join(outcomes))
    return " and ".join(outcomes)


def metrics_whole(ws: Workspace) -> bool:
    metrics = json.loads((ws.run / "test" / "metrics.json").read_text())
    leftovers = [p.name for p in (ws.run / "test").glob(".*.tmp")]
    return "mAP" in metrics and not leftovers and ws.best_kept()


cli_case(
    "tools/test.py twice at once on one OUTPUT_DIR",
    two_tests_at_once,
    accept=True,
    kept=metrics_whole,
)
cli_case(
    "tools/train.py: SGD at lr 1e12 (NaN)",
    lambda ws: train(ws, ws.tmp / "nan_run", "SOLVER.OPTIMIZER", "sgd", "SOLVER.BASE_LR", "1e12"),
    "non-finite",
)

# Runs tools/train.py with Trainer.run_step wrapped to send signals at a chosen step.
SIGNAL_SCRIPT = """import runpy, signal, sys
from reid.engine import trainer
run, steps = trainer.Trainer.run_step, []
save = trainer.save_checkpoint
def step(self, *a):
    value = run(self, *a)
    steps.append(1)
    if len(steps) == 5:
        {at_step}
    return value
def saving(*a, **k):
    {at_save}
    return save(*a, **k)
trainer.Trainer.run_step = step
trainer.save_checkpoint = saving
sys.argv = ['train.py', *{argv!r}]
runpy.run_path('tools/train.py', run_name='__main__')
"""


def signalled(ws: Workspace, name: str, at_step: str, at_save: str = "pass") -> str:
    # The stop comes at the end of the logging period: 5 iterations, the signal's.
    argv = [*ws.train_args(ws.tmp / name), "SOLVER.LOG_PERIOD", "5"]
    code = SIGNAL_SCRIPT.format(at_step=at_step, at_save=at_save, argv=argv)
    return cli("", command=[sys.executable, "-c", code])


def stopped_at_step_5(name: str) -> Callable[[Workspace], bool]:
    def kept(ws: Workspace) -> bool:
        folder = ws.tmp / name
        leftovers = [p.name for p in folder.glob(".*.tmp")]
        return not leftovers and load_checkpoint(folder / "last.pth")["iteration"] == 5

    return kept


cli_case(
    "tools/train.py: SIGTERM mid-epoch",
    lambda ws: signalled(ws, "stopped", "signal.raise_signal(signal.SIGTERM)"),
    "SIGTERM",
    "--resume",
    kept=stopped_at_step_5("stopped"),
)
cli_case(
    "tools/train.py: Ctrl-C pressed twice, the second while saving",
    lambda ws: signalled(
        ws,
        "ctrl_c",
        "signal.raise_signal(signal.SIGINT)",
        "signal.raise_signal(signal.SIGINT)",
    ),
    "SIGINT",
    "--resume",
    kept=stopped_at_step_5("ctrl_c"),
)


def unreadable_query(ws: Workspace) -> str:
    ws.ensure_trained()
    broken = ws.tmp / "broken"
    shutil.copytree(ws.data, broken / "data", dirs_exist_ok=True)
    query = next((broken / "data").glob("synthetic-*/query/*.jpg"))
    query.write_bytes(b"not a jpeg")
    return cli(
        "train.py",
        *ws.train_args(broken / "run"),
        "DATASETS.ROOT",
        str(broken / "data"),
        "SOLVER.MAX_EPOCHS",
        "1",
    )


cli_case(
    "tools/train.py: an unreadable query image",
    unreadable_query,
    "{tmp}/broken/data/",
    "query",
    kept=lambda ws: (ws.tmp / "broken" / "run" / "last.pth").is_file(),
)
cli_case(
    "tools/train.py: DATASETS.ROOT a file",
    lambda ws: train(ws, ws.tmp / "other", "DATASETS.ROOT", str(written(ws, "root_file2", b""))),
    "DATASETS.ROOT",
    "{tmp}/root_file2",
)


def export(ws: Workspace, *args: str) -> str:
    ws.ensure_trained()
    return cli("export.py", "--run", str(ws.run), *args)


cli_case(
    "tools/export.py --opset 5",
    lambda ws: export(ws, "--opset", "5", "--out", str(ws.tmp / "o5.onnx")),
    "--opset",
    "5",
    kept=lambda ws: not (ws.tmp / "o5.onnx").exists(),
)
cli_case(
    "tools/export.py --out a folder",
    lambda ws: export(ws, "--out", str(ws.path("exports/x").parent)),
    "--out",
    "{tmp}/exports",
)
cli_case(
    "tools/export.py --out a folder named .onnx, --overwrite",
    lambda ws: export(ws, "--out", str(_folder(ws.tmp / "graph.onnx")), "--overwrite"),
    "--out",
    "{tmp}/graph.onnx",
    "folder",
    kept=lambda ws: (ws.tmp / "graph.onnx" / "keep.txt").read_text() == "mine",
)
cli_case(
    "tools/export.py --format openvino --out model.onnx",
    lambda ws: export(ws, "--format", "openvino", "--out", str(ws.tmp / "m.onnx")),
    "--out",
    ".xml",
)
cli_case(
    "tools/export.py --calibration-images without int8",
    lambda ws: export(ws, "--calibration-images", str(ws.tmp), "--out", str(ws.tmp / "c.onnx")),
    "--calibration-images",
    "int8",
    kept=lambda ws: not (ws.tmp / "c.onnx").exists(),
)
cli_case(
    "tools/export.py --format tensorrt without TensorRT or a GPU",
    lambda ws: export(ws, "--format", "tensorrt", "--out", str(ws.tmp / "m.engine")),
    "TensorRT",
    # Where both are present, it builds an engine.
    accept=torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None,
)
cli_case(
    "tools/export.py --out in a missing folder",
    lambda ws: export(ws, "--out", str(ws.tmp / "no such dir" / "m.onnx")),
    accept=True,
)


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "keep.txt").write_text("mine")
    return path


def search_odd_names(ws: Workspace) -> str:
    """tools/search.py on a gallery holding odd images and a file name that is not UTF-8."""
    ws.ensure_trained()
    folder = ws.path("search gallery é/x").parent
    for number in range(3):
        Image.new("RGB", (8, 16), (number * 60, 0, 0)).save(folder / f"pic {number}.jpg")
    for kind in ("16-bit grayscale PNG", "CMYK JPEG", "palette PNG with transparency"):
        shutil.copy(write_odd_image(ws, kind)[0], folder)
    Image.new("RGB", (8, 16)).save(folder / os.fsdecode(b"caf\xe9 latin-1.jpg"))
    out = ws.tmp / "search out"
    return cli(
        "search.py", "--model", str(ws.run), "--gallery", str(folder),
        "--query", str(folder / "pic 0.jpg"), "--out", str(out), "--device", "cpu",
    )  # fmt: skip


cli_case("tools/search.py: odd images and a non-UTF-8 file name", search_odd_names, accept=True)


def run_cases(cases: Sequence[Case], workspace: Workspace) -> list[Row]:
    return [run_case(case, workspace) for case in cases]


def print_table(rows: Sequence[Row]) -> None:
    print("| # | case | outcome | message | nothing lost |\n|---|---|---|---|---|")
    for number, row in enumerate(rows, start=1):
        print(f"| {number} | {row.name} | {row.outcome} | {row.message} | {row.lost} |")
    clean = sum(row.clean for row in rows)
    skipped = sum(row.skipped for row in rows)
    failed = len(rows) - clean - skipped
    print(f"\nrows {len(rows)}, clean {clean}, skipped {skipped}, failed {failed}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cli", action="store_true", help="leave out the tool runs")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cases = [case for case in CASES if not (args.skip_cli and case.cli)]
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(Path(folder))
        try:
            rows = run_cases(cases, workspace)
        finally:
            workspace.close()
    print_table(rows)
    return 0 if all(row.clean or row.skipped for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
