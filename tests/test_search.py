"""The gallery search index: what invalidates it, where it lives, and bad index files."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from yacs.config import CfgNode

from reid import FeatureExtractor
from reid.config import get_default_cfg, load_cfg
from reid.models import build_model
from reid.search import (
    INDEX_NAME,
    default_index_path,
    index_gallery,
    model_fingerprint,
    run_fingerprint,
)

OPTS = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu"]

# What changes the features, from the extractor's definition (reid/extractor.py): the
# model (every MODEL key; the IMPORTS plugins define what its names mean), the test
# input size and pixel statistics, and the test feature options.
CHANGES_FEATURES = (
    "IMPORTS",
    "INPUT.SIZE_TRAIN",  # a ViT is built for it
    "INPUT.SIZE_TEST",
    "INPUT.PIXEL_MEAN",
    "INPUT.PIXEL_STD",
    "TEST.NECK_FEAT",
    "TEST.FEAT_NORM",
    "TEST.FLIP",
)
# Read by the extractor without changing the features: the ranking distance, and the
# checkpoint's path (its content is hashed instead).
READ_BUT_NOT_FEATURES = ("TEST.METRIC", "TEST.WEIGHT")


def leaf_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def changed(value: object) -> object:
    """Another value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list | tuple):
        return [changed(v) for v in value] if value else ["my_plugin"]
    raise AssertionError(f"no change for {value!r}")


def value_of(cfg: CfgNode, key: str) -> object:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def with_value(cfg: CfgNode, key: str, value: object) -> CfgNode:
    cfg = cfg.clone()
    cfg.defrost()
    *parents, name = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[name] = value
    return cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model's checkpoint."""
    path = tmp_path_factory.mktemp("weights") / "best.pth"
    model = build_model(load_cfg(opts=OPTS), num_classes=3, load_pretrained_weights=False)
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def extractor(weights: Path) -> FeatureExtractor:
    """The tiny model's extractor, from a run folder."""
    return FeatureExtractor(make_run(weights.parent / "run", weights, []), device="cpu")


def make_run(folder: Path, weights: Path, opts: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(load_cfg(opts=OPTS + opts).dump())
    shutil.copy(weights, folder / "best.pth")
    return folder


def make_gallery(folder: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"d{i % 2}" / f"img{i}.png")
    return folder


# ---------------------------------------------------------------------------
# The fingerprint


@pytest.mark.parametrize("key", leaf_keys(get_default_cfg()))
def test_fingerprint_changes_exactly_with_what_changes_features(key: str, weights: Path) -> None:
    """A stale index must be recomputed; an unrelated key (SOLVER.*, OUTPUT_DIR) must not
    throw a large gallery's index away."""
    cfg = get_default_cfg()
    before = run_fingerprint(cfg, weights)
    after = run_fingerprint(with_value(cfg, key, changed(value_of(cfg, key))), weights)
    expected = key.startswith("MODEL.") or key in CHANGES_FEATURES
    assert (after != before) == expected, f"{key}: fingerprint changed {after != before}"


def test_fingerprint_hashes_the_weights_content(weights: Path, tmp_path: Path) -> None:
    cfg = load_cfg(opts=OPTS)
    copy = tmp_path / "elsewhere.pth"
    shutil.copy(weights, copy)
    assert run_fingerprint(cfg, copy) == run_fingerprint(cfg, weights)
    state = torch.load(weights, weights_only=True)
    next(iter(state["model"].values())).add_(1e-3)
    torch.save(state, copy)
    assert run_fingerprint(cfg, copy) != run_fingerprint(cfg, weights)


def test_every_key_the_extractor_reads_is_in_the_fingerprint(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by watching the config while an extractor is built and embeds an image, so a
    key that a later model or transform reads is caught without editing this test."""
    cfg = load_cfg(opts=OPTS)
    prefixes = {}

    def walk(node: CfgNode, prefix: str) -> None:
        prefixes[id(node)] = prefix
        for name, value in node.items():
            if isinstance(value, CfgNode):
                walk(value, f"{prefix}{name}.")

    walk(cfg, "")
    read = set()
    getitem = CfgNode.__getitem__

    def watched(self: CfgNode, key: str) -> object:
        value = getitem(self, key)
        if not isinstance(value, CfgNode):
            read.add(prefixes.get(id(self), "<a copy of the config>.") + str(key))
        return value

    def watched_get(self: CfgNode, key: str, default: object = None) -> object:
        return watched(self, key) if key in self else default

    monkeypatch.setattr(CfgNode, "__getitem__", watched)
    monkeypatch.setattr(CfgNode, "get", watched_get)
    extractor = FeatureExtractor(cfg, weights=weights, device="cpu")
    extractor(np.zeros((40, 20, 3), dtype=np.uint8))
    monkeypatch.undo()
    assert {"MODEL.BACKBONE", "TEST.FLIP", "INPUT.SIZE_TEST"} <= read  # the watch works
    base = run_fingerprint(cfg, weights)
    missed = [
        key
        for key in sorted(read - set(READ_BUT_NOT_FEATURES))
        if run_fingerprint(with_value(cfg, key, changed(value_of(cfg, key))), weights) == base
    ]
    assert not missed, f"read by the extractor but not in the fingerprint: {missed}"


def test_a_run_with_another_model_config_recomputes_the_index(
    weights: Path, extractor: FeatureExtractor, tmp_path: Path
) -> None:
    """Same weights, another MODEL.LAST_STRIDE: other features, so nothing is reused."""
    gallery = make_gallery(tmp_path / "gallery")
    index = tmp_path / "index.npz"
    first = extractor
    assert index_gallery(first, gallery, index)[2] == 4
    solver = make_run(tmp_path / "b", weights, ["SOLVER.BASE_LR", "0.1", "OUTPUT_DIR", "x"])
    assert index_gallery(FeatureExtractor(solver, device="cpu"), gallery, index)[2] == 0
    stride = FeatureExtractor(make_run(tmp_path / "c", weights, ["MODEL.LAST_STRIDE", "2"]))
    assert model_fingerprint(stride) != model_fingerprint(first)
    paths, feats, embedded = index_gallery(stride, gallery, index)
    assert embedded == 4
    torch.testing.assert_close(feats, stride(paths))
    assert not torch.allclose(feats, first(paths))  # the stale features really differ


# ---------------------------------------------------------------------------
# Where the index lives


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def deny_writes_to(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """os.access as for a read-only ``folder`` (tests run as root, where chmod does not)."""
    access = os.access

    def fake(path: object, mode: int, *args: object, **kwargs: object) -> bool:
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", fake)


def test_a_writable_gallery_keeps_its_index(tmp_path: Path, cache_home: Path) -> None:
    gallery = make_gallery(tmp_path / "gallery")
    assert default_index_path(gallery) == gallery / INDEX_NAME


def test_a_read_only_gallery_uses_one_cache_file_per_gallery(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, other = make_gallery(tmp_path / "shared"), make_gallery(tmp_path / "other")
    deny_writes_to(monkeypatch, shared)
    deny_writes_to(monkeypatch, other)
    path = default_index_path(shared)
    assert path.parent == cache_home / "reid" / "search" and path.suffix == ".npz"
    monkeypatch.chdir(tmp_path)
    assert default_index_path(Path("shared")) == path  # keyed by the resolved path
    assert default_index_path(other) != path
    image = next(shared.rglob("*.png"))
    assert default_index_path(image).parent == path.parent  # a one-image gallery


def test_without_xdg_the_cache_is_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = make_gallery(tmp_path / "gallery")
    deny_writes_to(monkeypatch, gallery)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg in ("", "relative/cache"):  # the XDG spec ignores both
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        path = default_index_path(gallery)
        assert path.parent == tmp_path / "home" / ".cache" / "reid" / "search"


def test_search_tool_on_a_read_only_gallery_says_where_the_index_is(
    weights: Path,
    tmp_path: Path,
    cache_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from reid.tools import search

    run = make_run(tmp_path / "run", weights, [])
    gallery = make_gallery(tmp_path / "gallery")
    deny_writes_to(monkeypatch, gallery)
    query = next(gallery.rglob("*.png"))
    reid_logger = logging.getLogger("reid")
    monkeypatch.setattr(reid_logger, "handlers", list(reid_logger.handlers))
    monkeypatch.setattr(reid_logger, "level", reid_logger.level)
    for embedded in (4, 0):
        out = tmp_path / f"out{embedded}"
        argv = ["search", "--model", str(run), "--gallery", str(gallery), "--query", str(query)]
        monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out), "--device", "cpu"])
        search.main()
        printed = capsys.readouterr().out
        (index,) = (cache_home / "reid" / "search").glob("*.npz")
        assert f"({embedded} newly indexed, index {index})" in printed
        assert str(index) in (out / "log.txt").read_text()
    for handler in reid_logger.handlers:
        handler.close()
    assert not (gallery / INDEX_NAME).exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anyway")
def test_a_really_read_only_gallery(
    extractor: FeatureExtractor, tmp_path: Path, cache_home: Path
) -> None:
    gallery = make_gallery(tmp_path / "gallery")
    gallery.chmod(0o555)
    try:
        index = default_index_path(gallery)
        assert index_gallery(extractor, gallery, index)[2] == 4
        assert index_gallery(extractor, gallery, index)[2] == 0
        assert index.is_relative_to(cache_home)
    finally:
        gallery.chmod(0o755)


# ---------------------------------------------------------------------------
# Bad index files


class _RunsCode:
    """Unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _pickled(tmp_path: Path) -> np.ndarray:
    """An object array whose loading would create ``tmp_path/code_ran``."""
    return np.array([_RunsCode(tmp_path / "code_ran")], dtype=object)


def _bad_index_files(good: bytes, tmp_path: Path) -> dict[str, bytes]:
    """Files that are not a usable index; writing them creates nothing."""
    marker = tmp_path / "code_ran"
    payload = _pickled(tmp_path)
    files = {
        "empty": b"",
        "truncated to half": good[: len(good) // 2],
        "truncated by one byte": good[:-1],
        "cut after the zip header": good[:40],
        "random bytes": np.random.default_rng(0).bytes(len(good)),
        "a pickle": pickle.dumps(_RunsCode(marker)),
    }
    for name, arrays in {
        "an npz holding a pickled object": {"version": np.array(1), "fingerprint": payload},
        "an npz without the fields": {"other": np.zeros(3)},
    }.items():
        path = tmp_path / "made.npz"
        np.savez(path, **arrays)
        files[name] = path.read_bytes()
    return files


def _with_fields(good: Path, tmp_path: Path, **changes: np.ndarray) -> bytes:
    """``good``'s arrays (same fingerprint) with some replaced."""
    with np.load(good) as saved:
        arrays = {name: saved[name] for name in saved.files}
    path = tmp_path / "edited.npz"
    np.savez(path, **{**arrays, **changes})
    return path.read_bytes()


def test_a_bad_index_file_is_rebuilt_with_one_warning(
    extractor: FeatureExtractor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gallery = make_gallery(tmp_path / "gallery", count=2)
    index = tmp_path / "index.npz"
    paths, expected, _ = index_gallery(extractor, gallery, index)
    good = index.read_bytes()
    bad = _bad_index_files(good, tmp_path)
    narrow = np.zeros((2, 3), dtype=np.float32)
    bad["features of another width"] = _with_fields(index, tmp_path, features=narrow)
    bad["float64 features"] = _with_fields(index, tmp_path, features=expected.double().numpy())
    bad["stamps of another shape"] = _with_fields(index, tmp_path, stamps=np.zeros((2, 3)))
    bad["fewer features than paths"] = _with_fields(index, tmp_path, features=expected[:1].numpy())
    bad["pickled features"] = _with_fields(index, tmp_path, features=_pickled(tmp_path))
    bad["numbers as paths"] = _with_fields(index, tmp_path, paths=np.arange(2))
    bad["a version of several numbers"] = _with_fields(index, tmp_path, version=np.arange(2))
    for name, content in bad.items():
        index.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="reid"):
            got_paths, feats, embedded = index_gallery(extractor, gallery, index)
        assert got_paths == paths and embedded == 2, name
        assert torch.equal(feats, expected), name
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0], (name, warnings)
        assert "rebuilding" in warnings[0] and str(index) in warnings[0], name
        assert index_gallery(extractor, gallery, index)[2] == 0, f"{name}: not rewritten"
    assert not (tmp_path / "code_ran").exists()


def test_an_index_that_cannot_be_saved_still_gives_the_features(
    extractor: FeatureExtractor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gallery = make_gallery(tmp_path / "gallery", count=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    # A path under a file, and a folder where the index file should be.
    for index in (blocker / "index.npz", tmp_path / "a_folder"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="reid"):
            paths, feats, embedded = index_gallery(extractor, gallery, index)
        assert embedded == 2
        torch.testing.assert_close(feats, extractor(paths))
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert f"cannot write {index}" in warning and "\n" not in warning
