"""The synthetic pedestrian generator: determinism, Market-1501 layout, safe re-use."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from reid.data.synthetic import MANIFEST, generate_synthetic
from reid.errors import ReidError

NAME = re.compile(r"^(\d{4}|-1)_c(\d)s1_(\d{6})_00\.jpg$")
TINY = {"num_identities": 8, "num_cameras": 3}


def contents(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def parse(root: Path, split: str) -> list[tuple[int, int]]:
    """(pid, camera) of every image in a split, checking each name on the way."""
    records = []
    for path in sorted((root / split).iterdir()):
        match = NAME.match(path.name)
        assert match, f"not a Market-1501 name: {path.name}"
        records.append((int(match[1]), int(match[2])))
    return records


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small set drawn with two worker processes."""
    return generate_synthetic(tmp_path_factory.mktemp("a") / "set", seed=0, num_workers=2, **TINY)


def test_same_seed_gives_same_bytes_whatever_the_workers(tiny: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "set", seed=0, num_workers=1, **TINY)
    assert contents(again) == contents(tiny)


def test_different_seed_gives_different_images(tiny: Path, tmp_path: Path) -> None:
    other = contents(generate_synthetic(tmp_path / "set", seed=1, num_workers=1, **TINY))
    first = contents(tiny)
    assert sorted(other) != sorted(first)
    assert not {b for n, b in other.items() if n.endswith(".jpg")} & set(first.values())


def test_layout_follows_market1501(tiny: Path) -> None:
    train = parse(tiny, "bounding_box_train")
    query = parse(tiny, "query")
    gallery = parse(tiny, "bounding_box_test")
    assert {pid for pid, _ in train} == {1, 2, 3, 4}
    assert {pid for pid, _ in query} == {5, 6, 7, 8}
    assert {pid for pid, _ in gallery} == {-1, 0, 5, 6, 7, 8}
    assert {cam for _, cam in train + query + gallery} <= {1, 2, 3}
    for pid, cam in query:
        assert any(p == pid and c != cam for p, c in gallery), f"query {pid} c{cam}: no match"
    # One query per camera an identity appears in, as in Market-1501.
    for pid in {p for p, _ in query}:
        cams = sorted(c for p, c in query if p == pid)
        assert cams == sorted({c for p, c in gallery if p == pid}) and len(cams) >= 2
    for path in tiny.rglob("*.jpg"):
        with Image.open(path) as img:
            assert (img.size, img.mode, img.format) == ((64, 128), "RGB", "JPEG")
    manifest = json.loads((tiny / MANIFEST).read_text())
    assert manifest["arguments"] == {"seed": 0, **TINY}
    assert manifest["counts"]["query"]["images"] == len(query)


def test_market_parser_reads_it(tiny: Path) -> None:
    from reid.data.datasets.market import read_market_layout

    dataset = read_market_layout("synthetic", tiny)
    assert dataset.num_train_pids == 4
    assert all(r.pid >= 0 for r in dataset.gallery)  # junk dropped, distractors kept


def test_existing_set_is_reused_untouched(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    assert generate_synthetic(tiny, seed=0, **TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == before


def test_other_arguments_on_an_existing_set_raise(tiny: Path) -> None:
    before = contents(tiny)
    with pytest.raises(ReidError, match=re.escape(str(tiny))):
        generate_synthetic(tiny, seed=1, **TINY)
    assert contents(tiny) == before


def test_non_empty_folder_without_manifest_raises_and_is_kept(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReidError, match="no synthetic.json"):
        generate_synthetic(tmp_path, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ReidError, match="num_cameras=10"):
        generate_synthetic(tmp_path / "set", num_identities=8, num_cameras=10)
    assert not (tmp_path / "set").exists()
