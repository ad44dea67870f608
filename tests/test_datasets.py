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
from reid.data.datasets.market import parse_market_name
from reid.protocol import NO_CAMERA
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
    cfg = load_cfg(opts=["DATASETS.NAMES", "[market_folder]", "DATASETS.ROOT", str(market_tree),
                         "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "2",
                         "DATALOADER.NUM_WORKERS", "0"])  # fmt: skip
    dataset = build_dataset(cfg, "market_folder")
    loaders = [build_train_loader(cfg, dataset.train), build_test_loader(cfg, dataset)[0]]
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


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 0)),  # Market
        ("0001_c2_f0046182.jpg", (1, 1)),  # Duke
        ("-1_c3s1_000023_00.jpg", (-1, 2)),  # junk keeps its pid; the parser drops it
        ("0002_000451.jpg", (2, NO_CAMERA)),
        ("0002.jpg", (2, NO_CAMERA)),
        ("0002_cam1.jpg", (2, NO_CAMERA)),  # no digits right after "_c"
        ("0002_c0s1_000451_03.jpg", None),  # cameras start at 1
        ("-2_c1s1_000451_03.jpg", None),
        ("0002c1.jpg", None),
        ("person_7.jpg", None),
    ],
)
def test_market_names_with_and_without_camera(name: str, labels: tuple | None) -> None:
    assert parse_market_name(name) == labels


def test_market_folder_without_cameras(tmp_path: Path) -> None:
    root = tmp_path / "custom"
    for rel in (
        "bounding_box_train/0002_000451.jpg",
        "bounding_box_train/0007.jpg",
        "query/0003_000010.jpg",
        "bounding_box_test/0003_000020.jpg",
        "bounding_box_test/0000_000022.jpg",
        "bounding_box_test/-1_000023.jpg",
    ):
        write_image(root / rel)
    dataset = DATASETS.get("market_folder")(root)
    labels = {
        s: [(Path(r.path).name, r.pid, r.camid) for r in getattr(dataset, s)]
        for s in ("train", "query", "gallery")
    }
    assert labels == {
        "train": [("0002_000451.jpg", 0, NO_CAMERA), ("0007.jpg", 1, NO_CAMERA)],
        "query": [("0003_000010.jpg", 3, NO_CAMERA)],
        # Junk (-1) dropped, distractor (0) kept, by file name.
        "gallery": [("0000_000022.jpg", 0, NO_CAMERA), ("0003_000020.jpg", 3, NO_CAMERA)],
    }
    assert dataset.protocol == "no_cameras"
    table = dataset.stats_table()
    assert "(protocol no_cameras)" in table.splitlines()[0]
    assert table.splitlines()[-1].split("|")[-1].strip() == "-"  # no camera count


def test_market_folder_mixing_cameras_is_an_error_naming_the_file(market_tree: Path) -> None:
    write_image(market_tree / "query" / "0003_000012.jpg")
    with pytest.raises(DatasetError, match="0003_000012.jpg has no camera id"):
        DATASETS.get("market_folder")(market_tree)


def _vehicleid_tree(root: Path) -> None:
    """A tiny VehicleID release: image/ with every listed image (and one unlisted), and
    train_test_split/ lists of '<image id> <vehicle id>' lines."""
    lists = {
        "train_list.txt": "0000005 7\n0000002 7\n0000009 3\n",
        "test_list_800.txt": "0000104 20\n0000101 21\n0000102 20\n0000103 21\n0000105 22\n\n",
        "test_list_1600.txt": "0000201 30\n0000203 30\n0000202 30\n",
        "test_list_2400.txt": "0000310 40\r\n0000302 41\r\n0000301 40\r\n0000303\t41\r\n",
    }
    for list_name, text in lists.items():
        for line in text.splitlines():
            if line.strip():
                write_image(root / "image" / f"{line.split()[0]}.jpg")
        path = root / "train_test_split" / list_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    write_image(root / "image" / "0009999.jpg")  # in no list: unused


_VEHICLEID_TEST = {
    # test_size: (query, gallery) as (image id, vehicle id); the gallery holds each
    # vehicle's smallest image id, both splits keep the list's order.
    800: ([("0000104", 20), ("0000103", 21)], [("0000101", 21), ("0000102", 20), ("0000105", 22)]),
    1600: ([("0000203", 30), ("0000202", 30)], [("0000201", 30)]),
    2400: ([("0000310", 40), ("0000303", 41)], [("0000302", 41), ("0000301", 40)]),
}


@pytest.mark.parametrize("test_size", [800, 1600, 2400])
def test_vehicleid_lists_and_fixed_first_image_gallery(tmp_path: Path, test_size: int) -> None:
    _vehicleid_tree(tmp_path / "VehicleID_V1.0")
    dataset = DATASETS.get("vehicleid")(tmp_path, test_size=test_size)
    image_dir = tmp_path / "VehicleID_V1.0" / "image"

    def records(pairs: list[tuple[str, int]]) -> list[Record]:
        return [Record(str(image_dir / f"{image}.jpg"), pid, NO_CAMERA) for image, pid in pairs]

    query, gallery = _VEHICLEID_TEST[test_size]
    assert dataset.train == records([("0000005", 1), ("0000002", 1), ("0000009", 0)])
    assert dataset.query == records(query)
    assert dataset.gallery == records(gallery)
    assert dataset.protocol == "vehicleid"
    assert dataset.name == f"vehicleid ({test_size})"


def test_vehicleid_test_size_comes_from_the_config(tmp_path: Path) -> None:
    _vehicleid_tree(tmp_path / "VehicleID")
    opts = ["DATASETS.ROOT", str(tmp_path), "DATASETS.VEHICLEID_TEST_SIZE", "1600"]
    from_config = build_dataset(load_cfg(opts=opts), "vehicleid")
    direct = DATASETS.get("vehicleid")(tmp_path, test_size=1600)
    assert from_config.query + from_config.gallery == direct.query + direct.gallery
    assert from_config.protocol == "vehicleid"


def test_vehicleid_unknown_test_size(tmp_path: Path) -> None:
    _vehicleid_tree(tmp_path / "VehicleID")
    with pytest.raises(DatasetError, match="test_size 3200; choose one of 800, 1600, 2400"):
        DATASETS.get("vehicleid")(tmp_path, test_size=3200)


@pytest.mark.parametrize("line", ["0000101", "0000101 21 extra", "0000101 car", "0000101 -1"])
def test_vehicleid_malformed_line_names_file_and_line(tmp_path: Path, line: str) -> None:
    root = tmp_path / "vehicleid"
    _vehicleid_tree(root)
    (root / "train_test_split" / "test_list_800.txt").write_text(f"0000104 20\n{line}\n")
    with pytest.raises(DatasetError, match=r"test_list_800.txt:2: expected '<image> <vehicle id>'"):
        DATASETS.get("vehicleid")(tmp_path)


def test_vehicleid_missing_image_and_list(tmp_path: Path) -> None:
    root = tmp_path / "VehicleID_V1.0"
    _vehicleid_tree(root)
    (root / "image" / "0000102.jpg").unlink()
    with pytest.raises(DatasetError, match=r"test_list_800.txt:3: image .*0000102.jpg does not"):
        DATASETS.get("vehicleid")(root)
    (root / "train_test_split" / "test_list_1600.txt").unlink()
    with pytest.raises(DatasetError, match="missing list file .*test_list_1600.txt"):
        DATASETS.get("vehicleid")(root, test_size=1600)


def _labels(records: list[Record], root: Path) -> list[tuple[str, int, int]]:
    return [(Path(r.path).relative_to(root).as_posix(), r.pid, r.camid) for r in records]


def test_image_folder_integer_ids_cameras_junk_and_distractors(tmp_path: Path) -> None:
    """Layumi's prepare.py output (Market-1501-v15.09.15/pytorch/): integer folder names
    are the pids (junk -1 dropped, distractor 0000 kept), Market names give cameras."""
    root = tmp_path / "Market-1501-v15.09.15" / "pytorch"
    for rel in (
        "train/0002/0002_c1s1_000451_03.jpg",
        "train/0002/0002_c2s1_000551_01.jpg",
        "train/0007/0007_c3s3_000001_00.jpg",
        "query/0003/0003_c1s1_000010_00.jpg",
        "query/0005/0005_c4s1_000011_00.jpg",
        "gallery/0005/0005_c1s1_000021_00.jpg",
        "gallery/0003/0003_c2s1_000020_00.jpg",
        "gallery/0000/0000_c3s1_000022_00.jpg",
        "gallery/-1/-1_c1s1_000023_00.jpg",
        "train/.ipynb_checkpoints/x.jpg",
    ):
        write_image(root / rel)
    (root / "train" / "0007" / "Thumbs.db").write_bytes(b"\x00")  # not images: ignored
    (root / "train" / "readme.txt").write_text("notes")
    (root / "gallery" / "0009").mkdir()  # an empty identity folder: no identity
    dataset = DATASETS.get("image_folder")(tmp_path / "Market-1501-v15.09.15")
    assert _labels(dataset.train, root) == [
        ("train/0002/0002_c1s1_000451_03.jpg", 0, 0),
        ("train/0002/0002_c2s1_000551_01.jpg", 0, 1),
        ("train/0007/0007_c3s3_000001_00.jpg", 1, 2),
    ]
    assert _labels(dataset.query, root) == [
        ("query/0003/0003_c1s1_000010_00.jpg", 3, 0),
        ("query/0005/0005_c4s1_000011_00.jpg", 5, 3),
    ]
    assert _labels(dataset.gallery, root) == [
        ("gallery/0000/0000_c3s1_000022_00.jpg", 0, 2),
        ("gallery/0003/0003_c2s1_000020_00.jpg", 3, 1),
        ("gallery/0005/0005_c1s1_000021_00.jpg", 5, 0),
    ]
    assert dataset.protocol == "market"


def test_image_folder_names_are_one_identity_in_query_and_gallery(tmp_path: Path) -> None:
    """Non-integer names: numbered 1..N in sorted order over query and gallery (so a
    name is one identity in both; "0042" is a name too), training names on their own;
    no Market-style file names, so no cameras."""
    root = tmp_path / "mine"
    for rel in (
        "train/bob/b2.jpg",
        "train/alice/a1.jpg",
        "train/bob/b1.png",
        "query/carol/q1.jpg",
        "query/alice/q2.jpg",
        "gallery/alice/g1.jpg",
        "gallery/dave/frame_c2_0001.jpg",
        "gallery/carol/g4.jpg",
        "gallery/carol/g3.jpg",
        "gallery/0042/0042_000451.jpg",
    ):
        write_image(root / rel)
    dataset = DATASETS.get("image_folder")(root)
    assert _labels(dataset.train, root) == [
        ("train/alice/a1.jpg", 0, NO_CAMERA),
        ("train/bob/b1.png", 1, NO_CAMERA),
        ("train/bob/b2.jpg", 1, NO_CAMERA),
    ]
    assert _labels(dataset.query, root) == [
        ("query/alice/q2.jpg", 2, NO_CAMERA),
        ("query/carol/q1.jpg", 3, NO_CAMERA),
    ]
    assert _labels(dataset.gallery, root) == [
        ("gallery/0042/0042_000451.jpg", 1, NO_CAMERA),
        ("gallery/alice/g1.jpg", 2, NO_CAMERA),
        ("gallery/carol/g3.jpg", 3, NO_CAMERA),
        ("gallery/carol/g4.jpg", 3, NO_CAMERA),
        ("gallery/dave/frame_c2_0001.jpg", 4, NO_CAMERA),  # "_c2" not after the pid
    ]
    assert dataset.protocol == "no_cameras"


def test_image_folder_mixing_cameras_is_an_error_naming_the_file(tmp_path: Path) -> None:
    for rel in (
        "train/1/a.jpg",
        "query/0003/0003_c1s1_000010_00.jpg",
        "gallery/0003/0003_000020.jpg",
    ):
        write_image(tmp_path / rel)
    with pytest.raises(DatasetError, match="0003_000020.jpg has no camera id"):
        DATASETS.get("image_folder")(tmp_path)


def test_image_folder_layout_errors_name_the_path(tmp_path: Path) -> None:
    for rel in ("train/1/a.jpg", "query/1/b.jpg", "gallery/1/c.jpg"):
        write_image(tmp_path / rel)
    stray = write_image(tmp_path / "train" / "0002_c1s1_000451_03.jpg")
    with pytest.raises(DatasetError, match="train/0002_c1s1_000451_03.jpg is not in an identity"):
        DATASETS.get("image_folder")(tmp_path)
    stray.unlink()
    nested = write_image(tmp_path / "gallery" / "1" / "crops" / "d.jpg")
    with pytest.raises(DatasetError, match="unexpected folder .*gallery/1/crops"):
        DATASETS.get("image_folder")(tmp_path)
    nested.unlink()
    nested.parent.rmdir()
    for path in (tmp_path / "query" / "1").iterdir():
        path.unlink()
    (tmp_path / "query" / "1").rmdir()
    (tmp_path / "query").rmdir()
    with pytest.raises(DatasetError, match="missing folder .*query"):
        DATASETS.get("image_folder")(tmp_path)
    with pytest.raises(DatasetError, match="no gallery in .*train nor in a subfolder named"):
        DATASETS.get("image_folder")(tmp_path / "train")
