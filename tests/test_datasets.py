import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid.config import load_cfg
from reid.data import DATASETS, DatasetError, ImageDataset, build_dataset
from reid.data.build import build_test_loader, build_train_loader, ignore_stop_signals
from reid.data.datasets.base import Record, relabel
from tests.conftest import write_image


def test_market_parsing_junk_distractors_and_non_images(market_tree: Path) -> None:
    dataset = DATASETS.get("market1501")(market_tree.parent)  # parent holding the usual name
    gallery = {(Path(r.path).name, r.pid, r.camid) for r in dataset.gallery}
    # Junk (-1) dropped, distractor (0) kept, cameras 0-based.
    assert gallery == {
        ("0003_c2s1_000020_00.jpg", 3, 1),
        ("0005_c1s1_000021_00.jpg", 5, 0),
        ("0000_c3s1_000022_00.jpg", 0, 2),
        ("0003_c1s1_000025_00.jpg", 3, 0),
    }
    assert [(r.pid, r.camid) for r in dataset.query] == [(3, 0), (5, 3)]
    # Thumbs.db and readme.txt ignored.
    assert len(dataset.train) == 6 and len(dataset.query) == 2


def test_train_pids_relabelled_in_sorted_order(market_tree: Path) -> None:
    dataset = DATASETS.get("market_folder")(market_tree)
    by_name = {Path(r.path).name[:4]: r.pid for r in dataset.train}
    assert by_name == {"0002": 0, "0007": 1, "0011": 2}
    assert dataset.num_train_pids == 3
    assert sorted({r.camid for r in dataset.train}) == [0, 1, 2, 4, 5]


def test_relabel_is_dense_and_order_preserving() -> None:
    records = [Record("a", 40, 0), Record("b", 3, 1), Record("c", 40, 2), Record("d", 17, 0)]
    assert [r.pid for r in relabel(records)] == [2, 0, 2, 1]


def test_dataset_folder_itself_or_parent(market_tree: Path) -> None:
    direct = DATASETS.get("market1501")(market_tree)
    via_parent = DATASETS.get("market1501")(market_tree.parent)
    assert direct.train == via_parent.train


def test_stats_table_counts(market_tree: Path) -> None:
    table = DATASETS.get("market_folder")(market_tree).stats_table()
    lines = {line.split("|")[0].strip(): line.split("|")[1:] for line in table.splitlines()[3:]}
    assert [int(v) for v in lines["train"]] == [3, 6, 5]
    assert [int(v) for v in lines["gallery"]] == [3, 4, 3]


def test_malformed_name_is_an_error_naming_the_file(market_tree: Path) -> None:
    write_image(market_tree / "query" / "person_7.jpg")
    with pytest.raises(DatasetError, match="person_7.jpg"):
        DATASETS.get("market_folder")(market_tree)


def test_missing_root_and_missing_split(tmp_path: Path, market_tree: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        DATASETS.get("market1501")(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="bounding_box_train"):
        DATASETS.get("market1501")(tmp_path / "Market-1501-v15.09.15" / "query")
    for path in (market_tree / "query").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="query split holds no images"):
        DATASETS.get("market_folder")(market_tree)


def test_duke_uses_the_same_parser(tmp_path: Path) -> None:
    root = tmp_path / "DukeMTMC-reID"
    write_image(root / "bounding_box_train" / "0001_c2_f0046182.jpg")
    write_image(root / "query" / "0005_c8_f0000001.jpg")
    write_image(root / "bounding_box_test" / "0005_c7_f0000002.jpg")
    dataset = DATASETS.get("dukemtmc")(tmp_path)
    assert [(r.pid, r.camid) for r in dataset.query] == [(5, 7)]
    assert [(r.pid, r.camid) for r in dataset.train] == [(0, 1)]


def _msmt_tree(root: Path) -> None:
    lines = {
        "list_train.txt": [
            "0000/0000_000_01_0303morning_0015_0.jpg 0",
            "0001/0001_001_05_0303noon_0020_1.jpg 1",
        ],
        "list_val.txt": ["0002/0002_000_15_0303noon_0001_0.jpg 2"],
        "list_query.txt": ["0100/0100_000_03_0113morning_0001_0.jpg 100"],
        "list_gallery.txt": ["0100/0100_004_07_0113noon_0002_1.jpg 100"],
    }
    for list_name, entries in lines.items():
        folder = "train" if list_name in ("list_train.txt", "list_val.txt") else "test"
        for entry in entries:
            write_image(root / folder / entry.split()[0])
        (root / list_name).write_text("\n".join(entries) + "\n")


def test_msmt17_list_files(tmp_path: Path) -> None:
    _msmt_tree(tmp_path / "MSMT17_V1")
    dataset = DATASETS.get("msmt17")(tmp_path)
    assert [(r.pid, r.camid) for r in dataset.train] == [(0, 0), (1, 4), (2, 14)]
    assert [(r.pid, r.camid) for r in dataset.query] == [(100, 2)]
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(100, 6)]


def test_msmt17_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    _msmt_tree(root)
    (root / "list_query.txt").write_text("0100/0100_000_03_0113morning_0001_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query.txt:1"):
        DATASETS.get("msmt17")(root)


def test_unreadable_image_is_an_error_naming_it(market_tree: Path) -> None:
    bad = market_tree / "query" / "0003_c1s1_000010_00.jpg"
    bad.write_bytes(b"not really a jpeg")
    dataset = DATASETS.get("market_folder")(market_tree)
    with pytest.raises(DatasetError, match="cannot read image .*0003_c1s1_000010_00.jpg"):
        ImageDataset(dataset.query, transform=lambda image: image)[0]


class _SigintHandler(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> bool:
        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_loader_workers_leave_stop_signals_to_the_main_process(market_tree: Path) -> None:
    cfg = load_cfg(opts=["DATASETS.NAME", "market_folder", "DATASETS.ROOT", str(market_tree),
                         "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "2",
                         "DATALOADER.NUM_WORKERS", "0"])  # fmt: skip
    dataset = build_dataset(cfg)
    loaders = [build_train_loader(cfg, dataset), build_test_loader(cfg, dataset)[0]]
    assert all(loader.worker_init_fn is ignore_stop_signals for loader in loaders)
    probe = torch.utils.data.DataLoader(
        _SigintHandler(), num_workers=1, worker_init_fn=ignore_stop_signals
    )
    assert [bool(ignored) for ignored in probe] == [True, True]


def write_cuhk03_np(root: Path, seed: int = 0) -> Path:
    """A tiny CUHK03-NP tree: labeled/ and detected/ in Market layout, random images."""
    rng = np.random.default_rng(seed)
    for crops in ("labeled", "detected"):
        for split, pids in (("bounding_box_train", range(1, 5)), ("query", range(10, 14)),
                            ("bounding_box_test", range(10, 16))):  # fmt: skip
            for pid in pids:
                for cam in (1, 2):
                    for shot in range(1 if split == "query" else 2):
                        pixels = rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)
                        path = root / crops / split / f"{pid:04d}_c{cam}_{shot}.png"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(pixels).save(path)
    return root


def test_cuhk03_np_reads_detected_or_labeled(tmp_path: Path) -> None:
    write_cuhk03_np(tmp_path / "cuhk03-np")
    detected = DATASETS.get("cuhk03")(tmp_path)
    labeled = DATASETS.get("cuhk03")(tmp_path, labeled=True)
    assert detected.name == "cuhk03-np (detected)" and labeled.name == "cuhk03-np (labeled)"
    assert "/detected/" in detected.query[0].path and "/labeled/" in labeled.query[0].path
    assert detected.num_train_pids == 4 and len(detected.query) == 8
    assert len(detected.gallery) == 24 and {r.camid for r in detected.gallery} == {0, 1}
    with pytest.raises(DatasetError, match="no detected/bounding_box_train"):
        DATASETS.get("cuhk03")(tmp_path / "cuhk03-np" / "labeled")


def test_veri776_reads_its_folders_with_market_names(tmp_path: Path) -> None:
    """VeRi-776's release: image_train/, image_query/, image_test/ of VVVV_cCCC_... names
    (20 cameras, 3-digit ids); parsed exactly, under its usual folder name."""
    root = tmp_path / "VeRi"
    train = ["0001_c001_00016450_0.jpg", "0001_c012_00020590_1.jpg", "0776_c020_00000005_0.jpg"]
    for name in train:
        write_image(root / "image_train" / name)
    write_image(root / "image_query" / "0002_c002_00030600_0.jpg")
    write_image(root / "image_test" / "0002_c003_00084280_0.jpg")
    write_image(root / "image_test" / "0002_c002_00030605_1.jpg")
    (root / "name_train.txt").write_text("\n".join(train) + "\n")  # the release's lists: unused
    dataset = DATASETS.get("veri776")(tmp_path)
    assert [(Path(r.path).name, r.pid, r.camid) for r in dataset.train] == [
        (train[0], 0, 0),
        (train[1], 0, 11),
        (train[2], 1, 19),
    ]
    assert [(r.pid, r.camid) for r in dataset.query] == [(2, 1)]
    assert [(r.pid, r.camid) for r in dataset.gallery] == [(2, 1), (2, 2)]  # by file name
    assert dataset.stats_table().startswith("dataset veri776")
    with pytest.raises(DatasetError, match="no image_train in"):
        DATASETS.get("veri776")(tmp_path / "VeRi" / "image_query")
