"""Files: nothing loaded can run code, writes are atomic, a run folder is never clobbered."""

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reid import FeatureExtractor
from reid.config import load_cfg
from reid.engine.checkpoint import build_trained_model, load_checkpoint, save_checkpoint
from reid.engine.run_dir import open_run_dir
from reid.engine.trainer import _rng_states, _set_rng_states
from reid.errors import ReidError
from reid.models import build_model
from reid.utils.io import atomic_write, safe_torch_load

OPTS = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu"]


class MarkerPayload:
    """Unpickling calls ``os.makedirs(marker)``: harmless, and visible if it ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def write_payload_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint with real weights and config, plus a code-running payload."""
    cfg = load_cfg(opts=OPTS)
    model = build_model(cfg, num_classes=3, load_pretrained_weights=False)
    state = {"model": model.state_dict(), "config": cfg.dump(), "extra": MarkerPayload(marker)}
    torch.save(state, path)
    return path


def test_the_payload_would_run_if_loaded_unsafely(tmp_path: Path) -> None:
    """The control for the tests below: the payload is live."""
    marker = tmp_path / "pwned"
    torch.load(write_payload_checkpoint(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


def test_payload_never_runs_through_any_loader(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = write_payload_checkpoint(tmp_path / "evil.pth", marker)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(load_cfg(opts=OPTS).dump())
    (run_dir / "best.pth").write_bytes(evil.read_bytes())
    pretrained = ["MODEL.PRETRAINED", "true", "MODEL.PRETRAIN_PATH", str(evil)]
    pretrained = load_cfg(opts=[*OPTS, *pretrained])
    loaders = [
        lambda: load_checkpoint(evil),
        lambda: safe_torch_load(evil),
        lambda: build_trained_model(load_cfg(opts=OPTS), evil),
        lambda: FeatureExtractor(run_dir, device="cpu"),
        lambda: FeatureExtractor(load_cfg(opts=OPTS), weights=evil, device="cpu"),
        lambda: build_model(pretrained, num_classes=3),
    ]
    for load in loaders:
        with pytest.raises(ReidError) as info:
            load()
        message = str(info.value)
        assert "may be unsafe" in message and "os.makedirs" in message and "\n" not in message
        assert not marker.exists()


def test_checkpoints_of_earlier_versions_still_load(tmp_path: Path) -> None:
    """Earlier versions saved NumPy's RNG state as an ndarray tuple."""
    np.random.seed(3)
    old_numpy_state = np.random.get_state()
    expected_next = np.random.rand()
    rng = {"python": random.getstate(), "numpy": old_numpy_state, "torch": torch.get_rng_state()}
    old = {"model": {"w": torch.ones(2)}, "rng": rng}
    torch.save(old, tmp_path / "old.pth")
    state = load_checkpoint(tmp_path / "old.pth")
    np.random.seed(0)
    _set_rng_states(state["rng"])
    assert np.random.rand() == expected_next


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pth", {"model": {}, "rng": _rng_states()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    _set_rng_states(load_checkpoint(tmp_path / "c.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_pretrain_path_reads_this_projects_checkpoints(tmp_path: Path) -> None:
    cfg = load_cfg(opts=OPTS)
    torch.manual_seed(1)
    trained = build_model(cfg, num_classes=3, load_pretrained_weights=False)
    save_checkpoint(tmp_path / "best.pth", {"model": trained.state_dict(), "rng": _rng_states()})
    opts = [*OPTS, "MODEL.PRETRAINED", "true", "MODEL.PRETRAIN_PATH", str(tmp_path / "best.pth")]
    model = build_model(load_cfg(opts=opts), num_classes=7)
    for name, tensor in trained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor)


def test_missing_entries_are_named(tmp_path: Path) -> None:
    torch.save({"model": {}}, tmp_path / "weights_only.pth")
    with pytest.raises(ReidError, match="has no 'config', 'rng' entry, needed to resume"):
        load_checkpoint(tmp_path / "weights_only.pth", ("model", "config", "rng"), "resume")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ReidError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "garbage.pth")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs where this machine lets us mount one, else None."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        yield None
        return
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path: Path, small_disk: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = small_disk or tmp_path
    path = folder / "last.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(10)}})
    big = {"model": {"w": torch.zeros(1_000_000)}}  # 4 MB
    if small_disk is None:  # simulate what a full disk raises

        def no_space(obj, file) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(ReidError) as info:
        save_checkpoint(path, big)
    assert str(info.value) == (
        f"cannot write {path}: No space left on device; the previous file is unchanged"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["last.pth"]  # temp file removed
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(10))


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("good")

    def fails_halfway(file) -> None:
        file.write(b"partial")
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(ReidError, match="metrics.json: Permission denied"):
        atomic_write(path, fails_halfway)
    assert path.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, ValueError])
def test_atomic_write_removes_its_temporary_file_on_any_exception(
    tmp_path: Path, interruption: type[BaseException]
) -> None:
    """A Ctrl-C (or a bug in the writer) mid-write leaves no temporary file behind."""
    path = tmp_path / "last.pth"
    path.write_text("good")

    def interrupted(file) -> None:
        file.write(b"partial")
        raise interruption()

    with pytest.raises(interruption):
        atomic_write(path, interrupted)
    assert path.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_finished_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    (tmp_path / "best.pth").write_bytes(b"a good model")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReidError) as info, open_run_dir(tmp_path):
        pass
    assert str(info.value) == (
        f"{tmp_path} already holds a run (best.pth); continue it with --resume, "
        "choose another OUTPUT_DIR, or replace it with --overwrite"
    )
    assert (tmp_path / "best.pth").read_bytes() == b"a good model"
    with (
        pytest.raises(ReidError, match="nothing to resume: no last.pth"),
        open_run_dir(tmp_path, resume=True),
    ):
        pass
    derived = ["test/metrics.json", "visual/cmc.png", "model.onnx", "model.onnx.data"]
    for name in derived:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("the old run's")
    with open_run_dir(tmp_path, overwrite=True):
        assert not (tmp_path / "best.pth").exists()
        # What was derived from the old run would look like the new run's results.
        assert not any((tmp_path / name.split("/")[0]).exists() for name in derived)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not a run file: kept


def test_a_second_training_on_the_same_folder_fails_at_once(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\nfrom reid.engine.run_dir import open_run_dir\n"
            f"with open_run_dir({str(tmp_path)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(60)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ReidError) as info, open_run_dir(tmp_path):
            pass
        assert f"in use by another training (pid {holder.pid} on " in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with open_run_dir(tmp_path):  # a killed holder leaves no stale lock
        pass


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    expected = "OUTPUT_DIR .*out is a file; expected a folder"
    with pytest.raises(ReidError, match=expected), open_run_dir(tmp_path / "out"):
        pass
