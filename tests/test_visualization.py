"""Ranked-list and CMC images on a tiny synthetic gallery with a hand-made ranking."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid.data import Record
from reid.utils import visualization as vis

IMAGE_SIZE = (32, 16)  # (H, W) of drawn images; small keeps the test fast


def _image(folder: Path, name: str, color: tuple[int, int, int]) -> str:
    path = folder / name
    Image.new("RGB", (8, 16), color).save(path)
    return str(path)


@pytest.fixture
def ranking(tmp_path: Path) -> tuple[torch.Tensor, list[Record], list[Record]]:
    """Query 0 (pid 1, cam 0) ranks the gallery g0..g5 in this order:

    g0 pid 1 cam 0 (same camera: ignored), g1 pid 1 cam 1 (correct), g2 pid -1 (junk:
    ignored), g3 pid 2 cam 1 (wrong), g4 pid 1 cam 2 (correct), g5 pid 3 cam 2 (wrong).
    Query 1 (pid 2, cam 0) ranks the gallery in reverse.
    """
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    gallery_labels = [(1, 0), (1, 1), (-1, 1), (2, 1), (1, 2), (3, 2)]
    gallery = [
        Record(_image(tmp_path, f"g{i}.jpg", colors[i % 4]), pid, cam)
        for i, (pid, cam) in enumerate(gallery_labels)
    ]
    query = [
        Record(_image(tmp_path, "q0.jpg", colors[0]), 1, 0),
        Record(_image(tmp_path, "q1.jpg", colors[1]), 2, 0),
    ]
    distmat = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    return distmat, query, gallery


def _tile_center_x(tile: int) -> int:
    """Horizontal centre of tile ``tile`` (0 = the query) in a ranked-list image."""
    tile_width = IMAGE_SIZE[1] + 2 * vis.TILE_BORDER
    x = vis.MARGIN + (tile_width + vis.QUERY_GAP if tile else 0)
    return x + max(tile - 1, 0) * (tile_width + vis.TILE_GAP) + tile_width // 2


def _border_pixel(image: Image.Image, tile: int) -> tuple[int, int, int]:
    """A pixel inside the top border of tile ``tile``."""
    return image.getpixel((_tile_center_x(tile), vis.MARGIN + 1))


def _is(color: tuple[int, int, int], kind: str) -> bool:
    r, g, b = color
    if kind == "green":
        return g > 120 and r < 80 and b < 80
    if kind == "red":
        return r > 150 and g < 80 and b < 80
    return max(color) - min(color) < 20 and 100 < r < 200  # grey


def test_ranked_list_files_sizes_and_border_colours(ranking, tmp_path: Path) -> None:
    distmat, query, gallery = ranking
    paths = vis.draw_ranked_lists(
        distmat, query, gallery, tmp_path / "ranked", topk=3, image_size=IMAGE_SIZE
    )
    assert [p.name for p in paths] == ["query_0000_pid0001.png", "query_0001_pid0002.png"]

    # Query 0 shows g0 (ignored), g1, g2 (ignored), g3, g4: three counted items.
    with Image.open(paths[0]) as image:
        first = image.convert("RGB")
    assert first.size == (vis.ranked_list_width(5, 16), vis.ranked_list_height(32))
    assert first.size == (4 + 22 + 16 + 5 * 22 + 4 * 4 + 4, 4 + 32 + 6 + 26 + 4)
    kinds = ["grey", "green", "grey", "red", "green"]
    for tile, kind in enumerate(kinds, start=1):
        assert _is(_border_pixel(first, tile), kind), (tile, kind, _border_pixel(first, tile))
    # Ignored images are greyed out, not only framed in grey.
    assert _is(first.getpixel((_tile_center_x(1), vis.MARGIN + 10)), "grey")

    # Query 1 (pid 2) ranks g5, g4, g3 first: wrong, wrong, correct.
    with Image.open(paths[1]) as image:
        second = image.convert("RGB")
    assert second.size[0] == vis.ranked_list_width(3, 16)
    for tile, kind in enumerate(["red", "red", "green"], start=1):
        assert _is(_border_pixel(second, tile), kind)


def test_rank_entries_follow_the_protocol() -> None:
    entries = vis._rank_entries(
        np.array([0.3, 0.1, 0.2, 0.4]),
        q_pid=5,
        q_camid=0,
        g_pids=np.array([5, 5, -1, 7]),
        g_camids=np.array([1, 0, 2, 0]),
        topk=2,
    )
    assert entries == [(1, "ignored", 0), (2, "ignored", 0), (0, "correct", 1), (3, "wrong", 2)]


def test_queries_are_evenly_spaced_and_capped(ranking, tmp_path: Path) -> None:
    assert vis._select_queries(10, 4) == [0, 3, 6, 9]
    assert vis._select_queries(3, None) == [0, 1, 2]
    distmat, query, gallery = ranking
    paths = vis.draw_ranked_lists(
        distmat.numpy(), query, gallery, tmp_path, topk=1, max_queries=1, image_size=IMAGE_SIZE
    )
    assert [p.name for p in paths] == ["query_0000_pid0001.png"]


def test_ranked_list_rejects_a_mismatched_distmat(ranking, tmp_path: Path) -> None:
    distmat, query, gallery = ranking
    with pytest.raises(ValueError, match="num_query, num_gallery"):
        vis.draw_ranked_lists(distmat[:, :3], query, gallery, tmp_path)


def test_cmc_curve_image(tmp_path: Path) -> None:
    cmc = np.minimum(1.0, 0.6 + 0.02 * np.arange(50))
    path = vis.draw_cmc_curve(cmc, tmp_path / "plots" / "cmc.png", title="test CMC")
    with Image.open(path) as image:
        assert image.size == (640, 480)
        pixels = np.asarray(image.convert("RGB"))
    # Something beyond the white background was drawn: axes, text and the blue curve.
    assert (pixels.min(axis=2) < 100).sum() > 500
    assert ((pixels[..., 2] > 150) & (pixels[..., 0] < 80)).any()

    short = vis.draw_cmc_curve([0.3], tmp_path / "one.png", width=320, height=240)
    with Image.open(short) as image:
        assert image.size == (320, 240)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vis.draw_cmc_curve(np.array([0.5, 1.5]), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="pixels"):
        vis.draw_cmc_curve([0.5], tmp_path / "small.png", width=100, height=80)


def test_log_images_to_tensorboard(ranking, tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[int, ...], str]] = []

        def add_image(self, tag, image, global_step, dataformats) -> None:
            self.calls.append((tag, image.shape, dataformats))

    path = vis.draw_cmc_curve([0.5, 0.7], tmp_path / "cmc.png", width=200, height=160)
    writer = Recorder()
    vis.log_images_to_tensorboard(writer, [path], "eval")
    assert writer.calls == [("eval/cmc", (160, 200, 3), "HWC")]
