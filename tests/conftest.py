"""Shared fixtures: tiny image folders written on the fly."""

import sys
import uuid
from pathlib import Path

import pytest
from PIL import Image
from tiny_run import SCHEDULE, run_tool, tiny


def write_image(path: Path, color: tuple[int, int, int] = (120, 60, 30)) -> Path:
    """Writes a tiny 16x8 JPEG (creating folders) and returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), color).save(path)
    return path


def marker_plugin(folder: Path, monkeypatch: pytest.MonkeyPatch, body: str = "") -> str:
    """A plugin module in ``folder`` (made the current folder) that leaves a ``.ran``
    file next to itself when imported, then runs ``body``; returns its name, new for
    each test."""
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    marker = "from pathlib import Path\nPath(__file__).with_suffix('.ran').touch()\n"
    (folder / f"{name}.py").write_text(marker + body)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_plugins adds the folder
    return name


# A plugin body registering resnet18 again under the plugin's own name.
RESNET18_AS_PLUGIN = (
    "from reid.models.backbones import BACKBONES\n"
    "BACKBONES.register(Path(__file__).stem)(BACKBONES.get('resnet18'))\n"
)


@pytest.fixture
def market_tree(tmp_path: Path) -> Path:
    """A small Market-1501 tree with junk, distractors, a Thumbs.db and a notes file."""
    root = tmp_path / "Market-1501-v15.09.15"
    train = [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c3s3_000001_00.jpg",
        "0007_c6s1_000002_00.jpg",
        "0011_c1s1_000003_00.jpg",
        "0011_c5s1_000004_00.jpg",
    ]
    query = ["0003_c1s1_000010_00.jpg", "0005_c4s1_000011_00.jpg"]
    gallery = [
        "0003_c2s1_000020_00.jpg",
        "0005_c1s1_000021_00.jpg",
        "0000_c3s1_000022_00.jpg",
        "-1_c1s1_000023_00.jpg",
        "-1_c2s1_000024_00.jpg",
        "0003_c1s1_000025_00.jpg",
    ]
    for folder, names in (
        ("bounding_box_train", train),
        ("query", query),
        ("bounding_box_test", gallery),
    ):
        for name in names:
            write_image(root / folder / name)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"\x00\x01")
    (root / "query" / "readme.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny training run (``tiny_run.SCHEDULE``), made once per session."""
    tmp = tmp_path_factory.mktemp("e2e")
    out = tmp / "run"
    result = run_tool("train.py", "--config", "configs/demo.yml", *tiny(tmp, out), *SCHEDULE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank1" in result.stdout and "mAP" in result.stdout
    return out
