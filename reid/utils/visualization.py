"""Visual results: ranked gallery lists per query and the CMC curve, drawn with Pillow.

Ranked lists follow the Market-1501 protocol of :func:`reid.evaluation.metrics.evaluate_rank`:
the gallery is sorted by distance (stable, so ties keep gallery order); items with the
query's identity *and* camera, and junk items (pid -1), are ignored by the protocol. They
are drawn greyed in place, with a grey border and no rank number, and the list goes on
until ``topk`` counted items are shown, so the numbered ranks are exactly the ranks the
metrics see. Counted items have a green border when correct (same pid, other camera) and a
red one when wrong.
"""

from __future__ import annotations

import colorsys
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from reid.data.datasets import Record
from reid.data.image_dataset import read_image
from reid.errors import InputError
from reid.protocol import DISTRACTOR_PID, JUNK_PID, correct_matches, ignored

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)

# Ranked-list layout, in pixels. A tile is an image inside its border, with two short
# label lines under it.
TILE_BORDER = 3
TILE_GAP = 4
QUERY_GAP = 16
LABEL_HEIGHT = 26
MARGIN = 4

COLORS: dict[str, tuple[int, int, int]] = {
    "query": (40, 90, 220),
    "correct": (0, 170, 0),
    "wrong": (220, 0, 0),
    "ignored": (150, 150, 150),
    "result": (90, 110, 140),
}
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_CACHED_TILES = 512

_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def draw_ranked_lists(
    distmat: np.ndarray | torch.Tensor,
    query_records: Sequence[Record],
    gallery_records: Sequence[Record],
    out_dir: str | Path,
    topk: int = 10,
    max_queries: int | None = 50,
    image_size: tuple[int, int] = (128, 64),
) -> list[Path]:
    """Writes one PNG per selected query: the query, then its ranked gallery.

    Each image is resized to ``image_size`` and framed by a border: blue for the query,
    green for a correct match, red for a wrong one, grey (image greyed too) for items the
    protocol ignores (same pid and camera as the query, or pid -1). Ignored items are
    shown where they rank but get no rank number; the row ends after ``topk`` counted
    items. At most ``topk`` ignored items are drawn per row, so a query with many of
    them still gives a readable image; further ignored items are left out silently.
    Under each image: its rank (``#3``, or ``same cam`` / ``junk``) and ``pid P cC``.

    Queries are picked deterministically: ``max_queries`` indices evenly spaced over the
    query list (queries are usually sorted by pid, so this spreads over identities).

    Args:
        distmat: (Q, G) distances, smaller = more similar; numpy or torch on any device.
        query_records: Q ``(path, pid, camid)`` records, in the rows' order.
        gallery_records: G records, in the columns' order.
        out_dir: created if missing.
        topk: counted gallery items per row.
        max_queries: how many queries to draw; None draws all of them.
        image_size: ``(H, W)`` of every drawn image, as in ``INPUT.SIZE_TEST``.

    Returns:
        The written paths, named ``query_{index:04d}_pid{pid:04d}.png``, in query order.

    Raises:
        InputError (a ValueError): ``distmat`` not (Q, G), ``topk`` or ``max_queries`` below 1.
        reid.data.DatasetError: an image that cannot be read.
    """
    dist = _to_numpy(distmat)
    num_query, num_gallery = len(query_records), len(gallery_records)
    if dist.shape != (num_query, num_gallery):
        raise InputError(
            f"distmat must be (num_query, num_gallery) = ({num_query}, {num_gallery}), "
            f"got {tuple(dist.shape)}"
        )
    if topk < 1:
        raise InputError(f"topk must be >= 1, got {topk}")
    if max_queries is not None and max_queries < 1:
        raise InputError(f"max_queries must be >= 1 or None, got {max_queries}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    height, width = image_size
    font = _font(10)

    # Top-ranked gallery images recur across queries; a bounded cache avoids re-decoding.
    @functools.lru_cache(maxsize=_CACHED_TILES)
    def load(path: str) -> Image.Image:
        return read_image(path).resize((width, height), Image.Resampling.BILINEAR)

    g_pids = np.array([record[1] for record in gallery_records])
    g_camids = np.array([record[2] for record in gallery_records])
    written = []
    for index in _select_queries(num_query, max_queries):
        q_path, q_pid, q_camid = query_records[index]
        entries = _rank_entries(dist[index], q_pid, q_camid, g_pids, g_camids, topk)
        tiles = [_tile(load(str(q_path)), "query", ("query", f"pid {q_pid} c{q_camid}"), font)]
        for g_index, status, rank in entries:
            g_path, g_pid, g_camid = gallery_records[g_index]
            label = f"#{rank}" if rank else ("junk" if g_pid == JUNK_PID else "same cam")
            tiles.append(_tile(load(str(g_path)), status, (label, f"pid {g_pid} c{g_camid}"), font))
        path = out_dir / f"query_{index:04d}_pid{q_pid:04d}.png"
        _compose_row(tiles).save(path)
        written.append(path)
    logger.info("wrote %d ranked lists to %s", len(written), out_dir)
    return written


def ranked_list_width(num_gallery_tiles: int, image_width: int) -> int:
    """Width in pixels of a ranked-list PNG holding the query and ``num_gallery_tiles``."""
    tile = image_width + 2 * TILE_BORDER
    gallery = num_gallery_tiles * tile + max(num_gallery_tiles - 1, 0) * TILE_GAP
    return 2 * MARGIN + tile + (QUERY_GAP + gallery if num_gallery_tiles else 0)


def ranked_list_height(image_height: int) -> int:
    """Height in pixels of a ranked-list PNG for images ``image_height`` pixels high."""
    return 2 * MARGIN + image_height + 2 * TILE_BORDER + LABEL_HEIGHT


def _to_numpy(array: np.ndarray | torch.Tensor | Sequence[float]) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def _select_queries(num_query: int, max_queries: int | None) -> list[int]:
    """Evenly spaced query indices, first and last included; all when they fit."""
    if max_queries is None or max_queries >= num_query:
        return list(range(num_query))
    return sorted({int(i) for i in np.linspace(0, num_query - 1, max_queries).round()})


def _rank_entries(
    distances: np.ndarray,
    q_pid: int,
    q_camid: int,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    topk: int,
) -> list[tuple[int, str, int]]:
    """Walks one query's ranking as the Market-1501 protocol sees it.

    Args:
        distances: (G,) distances of the query to the gallery.
        g_pids, g_camids: (G,) gallery labels.

    Returns:
        ``(gallery_index, status, rank)`` in ranking order, up to ``topk`` counted items
        and ``topk`` ignored ones; ``status`` is ``correct``, ``wrong`` or ``ignored``,
        ``rank`` the 1-based protocol rank, 0 for ignored items.
    """
    entries: list[tuple[int, str, int]] = []
    rank = num_ignored = 0
    left_out = ignored(q_pid, q_camid, g_pids, g_camids)
    correct = correct_matches(q_pid, q_camid, g_pids, g_camids)
    for g_index in np.argsort(distances, kind="stable"):
        if left_out[g_index]:
            if num_ignored < topk:
                entries.append((int(g_index), "ignored", 0))
            num_ignored += 1
            continue
        rank += 1
        status = "correct" if correct[g_index] else "wrong"
        entries.append((int(g_index), status, rank))
        if rank == topk:
            break
    return entries


def draw_search_result(
    query_path: str | Path,
    results: Sequence[tuple[str | Path, float]],
    out_path: str | Path,
    image_size: tuple[int, int] = (128, 64),
) -> Path:
    """Writes one PNG: the query, then its ranked results with their rank and distance.

    For unlabelled images (``tools/search.py``): no correct / wrong colouring.

    Args:
        query_path: the query image.
        results: ``(path, distance)`` pairs, nearest first.
        out_path: the PNG to write; its folder is created if missing.
        image_size: ``(H, W)`` of every drawn image.

    Returns:
        ``out_path`` as a Path.
    """
    height, width = image_size
    font = _font(10)

    def load(path: str | Path) -> Image.Image:
        return read_image(str(path)).resize((width, height), Image.Resampling.BILINEAR)

    tiles = [_tile(load(query_path), "query", ("query", ""), font)]
    for rank, (path, distance) in enumerate(results, start=1):
        tiles.append(_tile(load(path), "result", (f"#{rank}", f"d {distance:.3f}"), font))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _compose_row(tiles).save(out_path)
    return out_path


def _tile(image: Image.Image, status: str, lines: tuple[str, str], font: _Font) -> Image.Image:
    """One framed image with its two label lines; ignored items are greyed and dimmed."""
    width, height = image.size
    if status == "ignored":
        image = Image.blend(
            ImageOps.grayscale(image).convert("RGB"), Image.new("RGB", image.size, _WHITE), 0.5
        )
    tile = Image.new(
        "RGB", (width + 2 * TILE_BORDER, height + 2 * TILE_BORDER + LABEL_HEIGHT), _WHITE
    )
    draw = ImageDraw.Draw(tile)
    draw.rectangle(
        (0, 0, width + 2 * TILE_BORDER - 1, height + 2 * TILE_BORDER - 1), fill=COLORS[status]
    )
    tile.paste(image, (TILE_BORDER, TILE_BORDER))
    text_color = COLORS["ignored"] if status == "ignored" else _BLACK
    top = height + 2 * TILE_BORDER + 1
    for line, text in enumerate(lines):
        _centered_text(
            draw, tile.width / 2, top + line * (LABEL_HEIGHT // 2), text, font, text_color
        )
    return tile


def _compose_row(tiles: list[Image.Image]) -> Image.Image:
    width = ranked_list_width(len(tiles) - 1, tiles[0].width - 2 * TILE_BORDER)
    row = Image.new("RGB", (width, tiles[0].height + 2 * MARGIN), _WHITE)
    x = MARGIN
    for i, tile in enumerate(tiles):
        row.paste(tile, (x, MARGIN))
        x += tile.width + (QUERY_GAP if i == 0 else TILE_GAP)
    return row


# ---------------------------------------------------------------------------
# CMC curve

# Plot-area margins (left, top, right, bottom) in pixels: room for ticks, labels, title.
_PLOT_MARGINS = (70, 40, 24, 56)
_GRID = (225, 225, 225)
_CURVE = (31, 100, 190)
_ANNOTATED_RANKS = (1, 5, 10)


def draw_cmc_curve(
    cmc: np.ndarray | Sequence[float],
    out_path: str | Path,
    title: str = "CMC",
    width: int = 640,
    height: int = 480,
) -> Path:
    """Draws the CMC curve, ``cmc[k-1]`` against rank ``k``, as a PNG line plot.

    The y axis runs from 0 to 100 % with gridlines every 10 %; x ticks fall on rank 1
    and on multiples of a round step. Ranks 1, 5 and 10 (those within the curve) are
    marked on the curve and their values listed in a box placed away from the curve.

    Args:
        cmc: (K,) matching rates in [0, 1], e.g. the first output of ``evaluate_rank``.
        out_path: the PNG to write; its folder is created if missing.
        title: drawn above the plot.
        width, height: image size in pixels.

    Returns:
        ``out_path`` as a Path.

    Raises:
        InputError (a ValueError): ``cmc`` empty, not 1-D, or outside [0, 1]; an image too small for
            the margins.
    """
    values = _to_numpy(cmc).astype(float)
    if values.ndim != 1 or values.size == 0:
        raise InputError(f"cmc must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise InputError(
            f"cmc values must lie in [0, 1], got min {values.min()}, max {values.max()}"
        )

    min_width, min_height = _PLOT_MARGINS[0] + _PLOT_MARGINS[2], _PLOT_MARGINS[1] + _PLOT_MARGINS[3]
    if width < min_width + 50 or height < min_height + 50:
        raise InputError(
            f"a CMC plot needs at least {min_width + 50}x{min_height + 50} pixels, "
            f"got {width}x{height}"
        )

    image = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(image)
    font, title_font = _font(11), _font(15)
    left, top = _PLOT_MARGINS[0], _PLOT_MARGINS[1]
    right, bottom = width - _PLOT_MARGINS[2], height - _PLOT_MARGINS[3]
    num_ranks = values.size

    def to_x(rank: float) -> float:
        if num_ranks == 1:
            return (left + right) / 2
        return left + (rank - 1) / (num_ranks - 1) * (right - left)

    def to_y(rate: float) -> float:
        return bottom - rate * (bottom - top)

    for percent in range(0, 101, 10):
        y = to_y(percent / 100)
        draw.line((left, y, right, y), fill=_GRID)
        draw.line((left - 4, y, left, y), fill=_BLACK)
        _right_aligned_text(draw, left - 7, y - 6, f"{percent}%", font)
    for rank in _rank_ticks(num_ranks):
        x = to_x(rank)
        draw.line((x, top, x, bottom), fill=_GRID)
        draw.line((x, bottom, x, bottom + 4), fill=_BLACK)
        _centered_text(draw, x, bottom + 7, str(rank), font, _BLACK)
    draw.rectangle((left, top, right, bottom), outline=_BLACK)

    points = [(to_x(k), to_y(v)) for k, v in enumerate(values, start=1)]
    if len(points) > 1:
        draw.line(points, fill=_CURVE, width=2, joint="curve")
    if num_ranks <= 30:
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=_CURVE)

    annotated = [k for k in _ANNOTATED_RANKS if k <= num_ranks]
    lines = []
    for k in annotated:
        x, y = points[k - 1]
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=COLORS["wrong"], width=2)
        _centered_text(draw, x, y - 18, f"R{k}", font, COLORS["wrong"])
        lines.append(f"Rank-{k}: {100 * values[k - 1]:.1f}%")
    if lines:
        # The curve rises left to right: the lower right is clear unless it ends low,
        # and then the whole upper half is.
        box_w = max(draw.textlength(line, font=font) for line in lines) + 16
        box_h = 16 * len(lines) + 8
        if values[-1] > 0.5:
            box_x, box_y = right - box_w - 10, bottom - box_h - 10
        else:
            box_x, box_y = left + 10, top + 10
        draw.rectangle((box_x, box_y, box_x + box_w, box_y + box_h), fill=_WHITE, outline=_BLACK)
        for i, line in enumerate(lines):
            draw.text((box_x + 8, box_y + 5 + 16 * i), line, fill=_BLACK, font=font)

    _centered_text(draw, (left + right) / 2, 10, title, title_font, _BLACK)
    _centered_text(draw, (left + right) / 2, height - 24, "Rank", font, _BLACK)
    y_label = _text_image("Matching rate (%)", font).rotate(90, expand=True)
    image.paste(y_label, (8, int((top + bottom - y_label.height) / 2)))

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path)
    return out_path


def _rank_ticks(num_ranks: int) -> list[int]:
    """Rank 1 and multiples of the smallest round step giving at most ~10 ticks."""
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if num_ranks / s <= 10)
    return [1] + [k for k in range(step, num_ranks + 1, step) if k != 1]


# ---------------------------------------------------------------------------
# Embedding picture

_EMBED_MARGIN = 40


def embedding_rows(pids: np.ndarray, num_query: int, num_identities: int) -> np.ndarray:
    """Rows (query and gallery) of ``num_identities`` query identities, evenly spread.

    Args:
        pids: (N,) identities of the test images, queries first.
        num_query: how many of the first rows are queries.
        num_identities: identities to keep; junk (-1) and distractors (0) never count.

    Returns:
        Sorted row indices.
    """
    query_pids = pids[:num_query]
    real = (query_pids != JUNK_PID) & (query_pids != DISTRACTOR_PID)
    candidates = np.unique(query_pids[real])
    picks = np.linspace(0, len(candidates) - 1, min(num_identities, len(candidates)))
    chosen = candidates[np.unique(picks.round().astype(int))]
    return np.flatnonzero(np.isin(pids, chosen))


def draw_embedding(
    feats: np.ndarray | torch.Tensor,
    pids: Sequence[int],
    is_query: Sequence[bool],
    out_path: str | Path,
    size: int = 800,
    seed: int = 0,
) -> Path:
    """A 2-D t-SNE (scikit-learn) of features, one colour per identity, as a PNG.

    Queries are squares with a black outline, gallery images filled circles.

    Args:
        feats: (N, D) features.
        pids: (N,) identities (colours).
        is_query: (N,) which points are queries.
        out_path: the PNG to write; its folder is created if missing.
        size: width and height in pixels.
        seed: t-SNE's random state: the same features give the same picture.

    Returns:
        ``out_path`` as a Path.
    """
    from sklearn.manifold import TSNE

    feats = _to_numpy(feats).astype(np.float32)
    if len(feats) < 3:
        raise InputError(f"an embedding plot needs at least 3 images, got {len(feats)}")
    perplexity = min(30.0, (len(feats) - 1) / 3)
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
    low, high = points.min(axis=0), points.max(axis=0)
    span = size - 2 * _EMBED_MARGIN
    xy = _EMBED_MARGIN + (points - low) / np.maximum(high - low, 1e-9) * span
    identities = sorted(set(int(p) for p in pids))
    hues = {pid: i / len(identities) for i, pid in enumerate(identities)}
    image = Image.new("RGB", (size, size), _WHITE)
    draw = ImageDraw.Draw(image)
    for (x, y), pid, query in zip(xy, pids, is_query, strict=True):
        color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hues[int(pid)], 0.75, 0.9))
        if query:
            draw.rectangle((x - 5, y - 5, x + 5, y + 5), fill=color, outline=_BLACK, width=2)
        else:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color)
    font = _font(13)
    title = f"t-SNE of test features: {len(identities)} identities, {len(feats)} images"
    _centered_text(draw, size / 2, 10, title, font, _BLACK)
    draw.text(
        (10, size - 22),
        "square: query   circle: gallery   colour: identity",
        fill=_BLACK,
        font=font,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path)
    return out_path


def log_embedding(
    writer: SummaryWriter,
    feats: torch.Tensor,
    records: Sequence[Record],
    is_query: Sequence[bool],
    thumbnail: int = 64,
) -> None:
    """Adds features to TensorBoard's projector, labelled and with image thumbnails.

    The projector's sprite needs square thumbnails: each person, resized to half as
    wide as high, is centred on a white square of side ``thumbnail``.
    """

    def square(record: Record) -> torch.Tensor:
        person = read_image(record.path).resize(
            (thumbnail // 2, thumbnail), Image.Resampling.BILINEAR
        )
        canvas = Image.new("RGB", (thumbnail, thumbnail), _WHITE)
        canvas.paste(person, (thumbnail // 4, 0))
        return torch.from_numpy(np.array(canvas)).permute(2, 0, 1)

    thumbnails = torch.stack([square(record) for record in records])
    labels = [
        [str(r.pid), f"c{r.camid}", "query" if q else "gallery"]
        for r, q in zip(records, is_query, strict=True)
    ]
    writer.add_embedding(
        feats,
        metadata=labels,
        metadata_header=["pid", "camera", "split"],
        label_img=thumbnails.float() / 255,
        tag="test_features",
    )


# ---------------------------------------------------------------------------
# TensorBoard


def log_images_to_tensorboard(
    writer: SummaryWriter, paths: Sequence[str | Path], tag: str, global_step: int = 0
) -> None:
    """Adds each PNG as an image under ``{tag}/{file stem}``."""
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        writer.add_image(f"{tag}/{Path(path).stem}", pixels, global_step, dataformats="HWC")


# ---------------------------------------------------------------------------
# Text helpers


@functools.cache
def _font(size: int) -> _Font:
    """Pillow's bundled font at ``size``; the fixed bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except ImportError:
        return ImageFont.load_default()


def _centered_text(
    draw: ImageDraw.ImageDraw,
    center_x: float,
    y: float,
    text: str,
    font: _Font,
    fill: tuple[int, int, int],
) -> None:
    draw.text((center_x - draw.textlength(text, font=font) / 2, y), text, fill=fill, font=font)


def _right_aligned_text(
    draw: ImageDraw.ImageDraw, right_x: float, y: float, text: str, font: _Font
) -> None:
    draw.text((right_x - draw.textlength(text, font=font), y), text, fill=_BLACK, font=font)


def _text_image(text: str, font: _Font) -> Image.Image:
    """``text`` in black on its own white image, e.g. to rotate for a vertical label."""
    _, _, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    image = Image.new("RGB", (right + 2, bottom + 2), _WHITE)
    ImageDraw.Draw(image).text((1, 1), text, fill=_BLACK, font=font)
    return image
