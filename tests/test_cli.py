"""The tools' command lines: flags anywhere among the overrides, one-line errors, and
no plugin code from a received file unless the user names it."""

import importlib
import json
import logging
import re
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from conftest import RESNET18_AS_PLUGIN, marker_plugin
from tiny_run import error_line, run_tool

from reid.config import load_cfg
from reid.models import build_model
from reid.utils.cli import ToolParser


class _Parsed(Exception):
    """Stops a tool right after it parsed its command line."""


_PARSE = ToolParser.parse_args


def _parse(monkeypatch: pytest.MonkeyPatch, tool: str, argv: list[str]) -> Namespace:
    """The arguments the real tool's parser reads from ``argv``."""
    seen = {}

    def spy(self: ToolParser, args=None, namespace=None) -> Namespace:
        seen["args"] = _PARSE(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(ToolParser, "parse_args", spy)
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
    with pytest.raises(_Parsed):
        importlib.import_module(f"reid.tools.{tool}").main()
    return seen["args"]


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys, tool: str, argv: list[str]
) -> tuple[int, str, str]:
    """Runs the tool as its console script does: the exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
    code = importlib.import_module(f"reid.tools.{tool}").cli()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(stderr: str) -> str:
    """The tool's only stderr line (no log records are expected before the error)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    "argv, flags, opts",
    [
        (  # the command line of issue 17
            ["--config", "x.yml", "OUTPUT_DIR", "out", "--resume"],
            {"config": "x.yml", "resume": True, "overwrite": False},
            ["OUTPUT_DIR", "out"],
        ),
        (
            ["--overwrite", "OUTPUT_DIR", "out", "--config", "x.yml", "SOLVER.GAMMA", "-1"],
            {"config": "x.yml", "resume": False, "overwrite": True},
            ["OUTPUT_DIR", "out", "SOLVER.GAMMA", "-1"],
        ),
        (
            ["INPUT.SIZE_TEST", "[256, 128]", "--config=x.yml", "TEST.WEIGHT", "-odd.pth"],
            {"config": "x.yml", "resume": False, "overwrite": False},
            ["INPUT.SIZE_TEST", "[256, 128]", "TEST.WEIGHT", "-odd.pth"],
        ),
    ],
)
def test_train_flags_before_between_and_after_overrides(monkeypatch, argv, flags, opts) -> None:
    args = _parse(monkeypatch, "train", argv)
    assert {key: getattr(args, key) for key in flags} == flags
    assert args.opts == opts


def test_test_flags_among_overrides(monkeypatch) -> None:
    argv = ["TEST.WEIGHT", "w.pth", "--config", "x.yml", "SOLVER.WARMUP_FACTOR", "-0.5"]
    args = _parse(monkeypatch, "test", argv)
    assert args.config == "x.yml"
    assert args.opts == ["TEST.WEIGHT", "w.pth", "SOLVER.WARMUP_FACTOR", "-0.5"]


def test_export_and_search_flags_in_any_order_with_dash_values(monkeypatch) -> None:
    export = ["--flip", "--out", "-model.onnx", "--imports", "a.b,c", "--run", "r"]
    args = _parse(monkeypatch, "export", export)
    assert (args.run, args.out, args.flip, args.imports) == ("r", "-model.onnx", True, ["a.b", "c"])
    search = ["--topk", "5", "--query", "-q.jpg", "--gallery", "g", "--model", "m", "--imports="]
    args = _parse(monkeypatch, "search", search)
    assert (args.model, args.gallery, args.query, args.topk) == ("m", "g", "-q.jpg", 5)
    assert args.imports == []


@pytest.mark.parametrize(
    "tool, argv, message",
    [
        (
            "train",
            ["--config", "x.yml", "OUTPUT_DIR", "out", "--resum"],
            r"error: unknown flag --resum \(train.py takes --config, --resume, --overwrite "
            r"and KEY VALUE overrides\); did you mean --resume\?",
        ),
        ("test", ["--config", "x.yml", "--weights", "w.pth"], r"unknown flag --weights \(test.py"),
        ("export", ["--run", "r", "--flp"], r"unknown flag --flp .*--flip/--no-flip.*--flip\?"),
        ("search", ["--model", "m", "extra"], r"unexpected argument 'extra': search.py takes"),
        (
            "train",
            ["--config", "x.yml", "OUTPUT_DIR", "--resume"],
            r"no value given for OUTPUT_DIR",
        ),
        ("train", ["OUTPUT_DIR", "out"], r"required: --config \(usage: train.py \[-h\]"),
        ("train", ["--config", "--resume"], r"argument --config: expected one argument"),
        ("search", ["--model", "m", "--topk", "five"], r"--topk: invalid int value: 'five'"),
    ],
)
def test_bad_command_lines_are_one_line(monkeypatch, capsys, tool, argv, message) -> None:
    code, _, err = _cli(monkeypatch, capsys, tool, argv)
    assert code == 2
    assert re.search(message, _one_error_line(err))


@pytest.mark.slow  # a subprocess
def test_the_issues_command_line_reads_resume_as_a_flag(tmp_path) -> None:
    """End to end: the run stops because there is nothing to resume, which it could
    only say after reading --resume as the flag it is."""
    out = tmp_path / "out"
    result = run_tool(
        "train.py", "--config", "configs/demo.yml", "OUTPUT_DIR", str(out), "--resume"
    )
    assert result.returncode == 2
    assert error_line(result) == f"error: nothing to resume: no last.pth in {out}"


# ---------------------------------------------------------------------------
# Plugins named in a run folder


@pytest.fixture(autouse=True)
def quiet_tools():
    """The tools set up logging and threads in this process; put both back."""
    reid_logger = logging.getLogger("reid")
    handlers, level, threads = (
        list(reid_logger.handlers),
        reid_logger.level,
        torch.get_num_threads(),
    )
    torch.set_num_threads(1)
    yield
    for handler in reid_logger.handlers:
        if handler not in handlers:
            handler.close()
    reid_logger.handlers[:] = handlers
    reid_logger.setLevel(level)
    torch.set_num_threads(threads)


@pytest.fixture
def shared_run(tmp_path: Path, market_tree: Path, monkeypatch) -> tuple[Path, str]:
    """A run folder someone shared, whose config.yaml lists a plugin: a resnet18 under a
    new name that, when imported, leaves ``<name>.ran`` in the current folder."""
    name = marker_plugin(tmp_path, monkeypatch, RESNET18_AS_PLUGIN)
    run = tmp_path / "run"
    opts = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu",
            "DATASETS.NAMES", "[market_folder]", "DATASETS.ROOT", str(market_tree),
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(run)]  # fmt: skip
    cfg = load_cfg(opts=opts)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3, load_pretrained_weights=False)
    cfg.defrost()
    cfg.IMPORTS, cfg.MODEL.BACKBONE = [name], name
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump())
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "epoch": 1}, run / "best.pth")
    return run, name


def _not_imported(run: Path, name: str) -> bool:
    return not (run.parent / f"{name}.ran").exists() and name not in sys.modules


def test_tools_test_imports_only_command_line_imports(monkeypatch, capsys, shared_run) -> None:
    run, name = shared_run
    argv = ["--config", str(run / "config.yaml"), "TEST.WEIGHT", str(run / "best.pth")]
    code, _, err = _cli(monkeypatch, capsys, "test", argv)
    assert code == 2
    assert _one_error_line(err) == (
        f"error: {run / 'config.yaml'} lists IMPORTS [{name}]: plugin code named in a file is "
        f'not run unless you allow it; to run it, pass IMPORTS "[{name}]" on the command line'
    )
    assert _not_imported(run, name) and not (run / "test").exists()

    code, out, err = _cli(monkeypatch, capsys, "test", [*argv, "IMPORTS", f"[{name}]"])
    assert code == 0 and "mAP" in out
    assert (run.parent / f"{name}.ran").exists()


def test_tools_export_imports_only_what_imports_names(monkeypatch, capsys, shared_run) -> None:
    run, name = shared_run
    code, _, err = _cli(monkeypatch, capsys, "export", ["--run", str(run)])
    assert code == 2
    assert f"lists IMPORTS [{name}]" in (line := _one_error_line(err))
    assert f"--imports {name} (export, search)" in line
    assert _not_imported(run, name) and not (run / "model.onnx").exists()

    # Allowed, the plugin is imported and the export goes on, here to a checkpoint that
    # is missing (a full export takes half a minute; tests/test_deploy.py has one).
    missing = run / "missing.pth"
    argv = ["--run", str(run), "--imports", name, "--weights", str(missing)]
    code, _, err = _cli(monkeypatch, capsys, "export", argv)
    assert code == 2 and "checkpoint not found" in _one_error_line(err)
    assert (run.parent / f"{name}.ran").exists()


def test_tools_search_imports_only_what_imports_names(
    monkeypatch, capsys, shared_run, market_tree
) -> None:
    run, name = shared_run
    query = next((market_tree / "query").glob("*.jpg"))
    argv = ["--model", str(run), "--gallery", str(market_tree / "bounding_box_test"),
            "--query", str(query), "--out", str(run.parent / "found"), "--topk", "3"]  # fmt: skip
    code, _, err = _cli(monkeypatch, capsys, "search", argv)
    assert code == 2
    assert f"lists IMPORTS [{name}]" in _one_error_line(err)
    assert _not_imported(run, name)

    code, _, err = _cli(monkeypatch, capsys, "search", [*argv, "--imports", name])
    assert code == 0, err
    results = json.loads((run.parent / "found" / "results.json").read_text())
    assert len(results[str(query)]) == 3


def test_training_from_your_own_config_imports_its_plugins(monkeypatch, capsys, shared_run):
    """tools/train.py --config is the user's own file: its IMPORTS are imported (the run
    then stops at once: nothing to resume)."""
    run, name = shared_run
    argv = ["--config", str(run / "config.yaml"), "--resume", "OUTPUT_DIR", str(run / "new")]
    code, _, err = _cli(monkeypatch, capsys, "train", argv)
    assert code == 2 and "nothing to resume" in _one_error_line(err)
    assert (run.parent / f"{name}.ran").exists() and name in sys.modules
