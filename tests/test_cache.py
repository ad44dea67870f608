"""The decoded-image cache: its rows are the per-image resize's pixels, its batches are the
per-image path's bit for bit, and its file is reused, rebuilt and placed as documented."""

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from reid.data import cache
from reid.data.cache import CACHE_FOLDER, CachedImageDataset, decoded_images
from reid.data.datasets import DatasetError, Record
from reid.data.image_dataset import ImageDataset, read_image
from reid.data.sampler import Sample
from reid.data.transforms import build_train_transform
from reid.errors import ReidError

SIZE = (32, 16)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_IMAGES = 20


def write_picture(path: Path, width: int, height: int, seed: int) -> None:
    """Noise over a gradient, so that resizing, flipping and cropping all move pixels."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, width, dtype=np.float64)[None, :, None]
    pixels = np.clip(gradient + rng.integers(0, 56, (height, width, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The per-user cache folder's base, kept out of the real home folder."""
    base = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(base))
    return base


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A dataset root with NUM_IMAGES JPEGs and PNGs of different sizes, 48x24 .. 70x30."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i in range(NUM_IMAGES):
        suffix = ".jpg" if i % 2 else ".png"
        write_picture(folder / f"{i:02d}{suffix}", width=24 + i % 7, height=48 + i, seed=i)
    return folder


@pytest.fixture
def records(root: Path) -> list[Record]:
    return [Record(str(path), i // 2, i % 3) for i, path in enumerate(sorted(root.iterdir()))]


def resized(path: str) -> np.ndarray:
    """The reference: what the per-image training path's resize makes of ``path``."""
    return np.asarray(v2.Resize(SIZE)(read_image(path)))


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("decoded-*.npy"))


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replaces the decoder by one that records the paths it decodes."""
    decoded: list[str] = []
    decode = cache._decode

    def counting(path: str, size: tuple[int, int]) -> np.ndarray:
        decoded.append(path)
        return decode(path, size)

    monkeypatch.setattr(cache, "_decode", counting)
    return decoded


def test_rows_are_the_per_image_resize(records: list[Record], root: Path) -> None:
    images = decoded_images(records, SIZE, root)
    assert images.shape == (NUM_IMAGES, *SIZE, 3) and images.dtype == np.uint8
    for row, record in zip(images, records, strict=True):
        np.testing.assert_array_equal(row, resized(record.path))
    assert cache_files(root / CACHE_FOLDER) == [Path(images.filename)]


def test_batches_are_those_of_the_per_image_path(records: list[Record], root: Path) -> None:
    """The decisive property: the same samples give bit-identical tensors."""
    options = {"flip_prob": 0.5, "padding": 4, "erase_prob": 0.5}
    per_image = ImageDataset(records, build_train_transform(SIZE, MEAN, STD, **options))
    cached = CachedImageDataset(
        decoded_images(records, SIZE, root),
        records,
        build_train_transform(SIZE, MEAN, STD, **options, resize=False),
    )
    seeds = np.random.default_rng(0).integers(0, 2**32, size=3 * NUM_IMAGES)
    samples = [Sample(i % NUM_IMAGES, int(seed)) for i, seed in enumerate(seeds)]
    for sample in samples:
        (expected, pid, camid), got = per_image[sample], cached[sample]
        assert torch.equal(got[0], expected), sample
        assert got[1:] == (pid, camid) == records[sample.index][1:]
    # Not vacuous: the seeds do change the augmentation, which both paths follow.
    outputs = [cached[Sample(0, seed)][0] for seed in range(8)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])
    # Plain indices draw from the global generator, in both the same way.
    for index in (0, 7):
        torch.manual_seed(index)
        expected = per_image[index][0]
        torch.manual_seed(index)
        assert torch.equal(cached[index][0], expected)


def test_a_second_call_reuses_the_file_read_only(
    records: list[Record], root: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="reid.data.cache")
    decoded = count_decodes(monkeypatch)
    first = decoded_images(records, SIZE, root)
    assert decoded == [r.path for r in records]
    assert "built" in caplog.text and "MB" in caplog.text
    decoded.clear()
    caplog.clear()
    again = decoded_images(records, SIZE, root)
    assert decoded == []
    assert "reusing" in caplog.text and str(again.filename) in caplog.text
    assert isinstance(again, np.memmap) and again.filename == first.filename
    assert not again.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        again[0, 0, 0, 0] = 1
    np.testing.assert_array_equal(again, first)


def test_a_changed_added_or_removed_image_rebuilds(
    records: list[Record], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = count_decodes(monkeypatch)
    old = np.array(decoded_images(records, SIZE, root))
    # Touched: same bytes, new modification time.
    stat = os.stat(records[3].path)
    os.utime(records[3].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    decoded.clear()
    touched = decoded_images(records, SIZE, root)
    assert len(decoded) == NUM_IMAGES
    np.testing.assert_array_equal(touched, old)
    # Rewritten: other pixels, which the new file holds.
    write_picture(Path(records[5].path), width=27, height=60, seed=1000)
    decoded.clear()
    rewritten = decoded_images(records, SIZE, root)
    assert len(decoded) == NUM_IMAGES
    np.testing.assert_array_equal(rewritten[5], resized(records[5].path))
    assert not np.array_equal(rewritten[5], old[5])
    # Removed, then added back: a new key, then the earlier file again.
    decoded.clear()
    assert len(decoded_images(records[:-1], SIZE, root)) == NUM_IMAGES - 1
    assert len(decoded) == NUM_IMAGES - 1
    decoded.clear()
    assert decoded_images(records, SIZE, root).filename == rewritten.filename
    assert decoded == []
    assert len(cache_files(root / CACHE_FOLDER)) == 4


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shape", "wrong dtype"])
def test_a_damaged_file_is_rebuilt_with_a_warning(
    records: list[Record], root: Path, monkeypatch: pytest.MonkeyPatch, caplog, damage: str
) -> None:
    path = Path(decoded_images(records, SIZE, root).filename)
    good = np.load(path)
    shape = (NUM_IMAGES, *SIZE, 3)
    if damage == "truncated":
        with open(path, "r+b") as file:
            file.truncate(path.stat().st_size // 2)
    elif damage == "garbage":
        path.write_bytes(b"not an array at all")
    elif damage == "wrong shape":
        np.save(path, np.zeros((NUM_IMAGES - 1, *SIZE, 3), np.uint8))
    else:
        np.save(path, np.zeros(shape, np.float32))
    decoded = count_decodes(monkeypatch)
    caplog.set_level(logging.INFO, logger="reid.data.cache")
    images = decoded_images(records, SIZE, root)
    assert len(decoded) == NUM_IMAGES
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert Path(images.filename) == path
    np.testing.assert_array_equal(images, good)


def test_an_unwritable_root_falls_back_to_the_user_folder(
    records: list[Record],
    root: Path,
    tmp_path: Path,
    user_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    is_writable = cache._is_writable
    monkeypatch.setattr(cache, "_is_writable", lambda f: f.parent != root and is_writable(f))
    images = decoded_images(records, SIZE, root)
    assert Path(images.filename).parent == user_cache / "reid" / "decoded"
    assert not (root / CACHE_FOLDER).exists() or not cache_files(root / CACHE_FOLDER)
    # Without XDG_CACHE_HOME (or with a relative one, which the spec ignores): ~/.cache.
    for xdg in (None, "relative/cache"):
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME")
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        monkeypatch.setenv("HOME", str(tmp_path / f"home-{xdg is None}"))
        images = decoded_images(records, SIZE, root)
        expected = tmp_path / f"home-{xdg is None}" / ".cache" / "reid" / "decoded"
        assert Path(images.filename).parent == expected
    # Nowhere to write: one line naming the folders tried.
    monkeypatch.setattr(cache, "_is_writable", lambda folder: False)
    with pytest.raises(ReidError, match="DATALOADER.CACHE none") as err:
        decoded_images(records[:3], SIZE, root)
    assert str(root / CACHE_FOLDER) in str(err.value) and "\n" not in str(err.value)


def test_a_file_in_a_read_only_root_is_reused(
    records: list[Record], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache built beside a dataset that has since become read-only (a shared copy)."""
    built = decoded_images(records, SIZE, root)
    monkeypatch.setattr(cache, "_is_writable", lambda folder: False)
    decoded = count_decodes(monkeypatch)
    assert decoded_images(records, SIZE, root).filename == built.filename
    assert decoded == []


def test_the_writability_check_makes_a_real_file(tmp_path: Path) -> None:
    assert cache._is_writable(tmp_path / "new" / "folder")
    assert (tmp_path / "new" / "folder").is_dir() and not any((tmp_path / "new/folder").iterdir())
    (tmp_path / "a_file").write_text("")
    assert not cache._is_writable(tmp_path / "a_file" / "folder")


def test_workers_give_the_batches_of_the_main_process(records: list[Record], root: Path) -> None:
    dataset = CachedImageDataset(
        decoded_images(records, SIZE, root),
        records,
        build_train_transform(SIZE, MEAN, STD, padding=4, resize=False),
    )
    batches = [[Sample((3 * b + i) % NUM_IMAGES, 100 * b + i) for i in range(4)] for b in range(6)]
    runs = [list(DataLoader(dataset, batch_sampler=batches, num_workers=n)) for n in (0, 2)]
    for (images0, pids0, camids0), (images2, pids2, camids2) in zip(*runs, strict=True):
        assert torch.equal(images0, images2)
        assert torch.equal(pids0, pids2) and torch.equal(camids0, camids2)
    assert len(runs[1]) == len(batches)


def test_a_pickled_dataset_maps_the_file_again(records: list[Record], root: Path) -> None:
    """A spawned worker gets the file's name, not a copy of every image."""
    images = decoded_images(records, SIZE, root)
    dataset = CachedImageDataset(images, records, build_train_transform(SIZE, MEAN, STD))
    payload = pickle.dumps(dataset)
    assert len(payload) < images.nbytes / 4
    clone = pickle.loads(payload)
    assert isinstance(clone.images, np.memmap) and not clone.images.flags.writeable
    np.testing.assert_array_equal(clone.images, images)
    assert torch.equal(clone[Sample(4, 9)][0], dataset[Sample(4, 9)][0])
    # A part of the array, or one in memory, travels as its pixels.
    part = pickle.loads(pickle.dumps(CachedImageDataset(images[2:5], records[2:5], None)))
    np.testing.assert_array_equal(part.images, images[2:5])


def test_an_unreadable_image_is_a_dataset_error_naming_it(
    records: list[Record], root: Path
) -> None:
    broken = Path(records[6].path)
    broken.write_bytes(b"\xff\xd8 this is no JPEG")
    with pytest.raises(DatasetError, match=str(broken)):
        decoded_images(records, SIZE, root)
    assert list((root / CACHE_FOLDER).iterdir()) == []  # no partial file, named or not
    broken.unlink()
    with pytest.raises(DatasetError, match=str(broken)):
        decoded_images(records, SIZE, root)


def test_bad_arguments_are_one_line_errors(records: list[Record], root: Path) -> None:
    images = decoded_images(records[:4], SIZE, root)
    with pytest.raises(ReidError, match="4 images but there are 5 records"):
        CachedImageDataset(images, records[:5], None)
    with pytest.raises(ReidError, match="expected uint8"):
        CachedImageDataset(np.zeros((4, *SIZE, 3), np.float32), records[:4], None)
    with pytest.raises(ReidError, match="not \\[H, W\\]"):
        decoded_images(records, (32,), root)
    with pytest.raises(ReidError, match="no records"):
        decoded_images([], SIZE, root)


def _rank_main(rank: int, folder: str, records: list[Record]) -> None:
    """One rank of a 2-process gloo group: builds or reuses, with its own roots."""
    os.environ["XDG_CACHE_HOME"] = f"{folder}/xdg-{rank}"
    dist.init_process_group("gloo", f"file://{folder}/store", rank=rank, world_size=2)
    decoded: list[str] = []
    decode = cache._decode
    cache._decode = lambda path, size: decoded.append(path) or decode(path, size)
    report = {}
    # Each rank its own root: a node that does not see rank 0's file.
    for scenario, root in (("apart", f"{folder}/root-{rank}"), ("shared", f"{folder}/shared")):
        os.makedirs(root, exist_ok=True)
        decoded.clear()
        images = decoded_images(records, SIZE, root)
        report[scenario] = {"decoded": len(decoded), "file": str(images.filename)}
    Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def test_under_torchrun_rank0_builds_and_the_others_reuse(
    records: list[Record], tmp_path: Path
) -> None:
    # Forked, not spawned: a child that imports torch again takes seconds.
    mp.start_processes(_rank_main, (str(tmp_path), records), nprocs=2, start_method="fork")
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["apart"]["decoded"] == rank1["apart"]["decoded"] == NUM_IMAGES
    assert rank0["apart"]["file"] != rank1["apart"]["file"]
    assert (rank0["shared"]["decoded"], rank1["shared"]["decoded"]) == (NUM_IMAGES, 0)
    assert rank0["shared"]["file"] == rank1["shared"]["file"]
