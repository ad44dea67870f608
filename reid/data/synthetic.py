"""Procedurally drawn pedestrians written as a Market-1501 folder.

The machine this framework grew up on had no datasets, so it draws its own:
each identity is a fixed combination of clothing, body shape, hair and
accessories, photographed by cameras that each have their own colour response,
blur, noise and background, from changing viewpoints, poses, crops and
occlusions. Colours come from a small street palette, so no single attribute
identifies a person; the combination does.

Every identity (and every batch of distractors or junk) draws from its own
``numpy.random.default_rng((seed, stream, index))``, so the output is
byte-identical for a given seed whatever the number of worker processes.
"""

import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from reid.errors import ReidError

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
IMAGE_HEIGHT, IMAGE_WIDTH = 128, 64
_SCALE = 2  # drawn at 2x, then box-downscaled: cheap antialiasing
_JPEG_QUALITY = 90
_BATCH = 16  # distractor / junk images per task
# Separate random streams so adding identities never changes distractors or cameras.
_IDENTITY, _DISTRACTOR, _JUNK, _CAMERA = range(4)

RGB = tuple[int, int, int]
_VIEWS = ("front", "back", "left", "right")

# (rgb, weight) palettes: dark and neutral garments dominate real street scenes,
# so many identities share a top or a bottom colour.
_TOPS = (
    ((30, 30, 33), 5),
    ((228, 228, 224), 4),
    ((128, 128, 132), 3),
    ((35, 45, 85), 3),
    ((50, 90, 170), 2),
    ((140, 175, 215), 1.5),
    ((180, 35, 40), 2),
    ((110, 30, 40), 1),
    ((50, 120, 60), 1),
    ((100, 105, 60), 1),
    ((225, 195, 60), 1),
    ((225, 140, 165), 1.5),
    ((105, 60, 130), 1),
    ((200, 180, 145), 1.5),
    ((110, 75, 50), 1),
    ((220, 120, 40), 0.7),
)
_BOTTOMS = (
    ((28, 28, 30), 5),
    ((55, 75, 115), 4),
    ((110, 135, 170), 1.5),
    ((125, 125, 128), 2),
    ((70, 70, 75), 2),
    ((180, 160, 120), 2),
    ((225, 225, 220), 1),
    ((100, 70, 50), 1),
    ((35, 45, 80), 1.5),
    ((150, 40, 45), 0.3),
)
_SKINS = (
    ((240, 205, 180), 2),
    ((225, 180, 150), 2),
    ((200, 150, 115), 1.5),
    ((165, 115, 85), 1),
    ((120, 80, 55), 1),
    ((85, 60, 45), 0.7),
)
_HAIRS = (
    ((25, 22, 20), 5),
    ((60, 40, 30), 3),
    ((105, 70, 45), 2),
    ((195, 165, 110), 1),
    ((165, 165, 160), 0.7),
    ((130, 60, 35), 0.5),
)
_SHOES = (
    ((25, 25, 25), 4),
    ((230, 230, 230), 3),
    ((95, 60, 40), 1.5),
    ((120, 120, 125), 1.5),
    ((50, 80, 150), 0.5),
    ((170, 40, 40), 0.5),
)
_GEAR = (
    ((25, 25, 28), 4),
    ((35, 45, 85), 1.5),
    ((110, 110, 115), 1.5),
    ((170, 40, 45), 1),
    ((110, 75, 50), 1),
    ((60, 100, 60), 1),
    ((220, 140, 165), 0.7),
    ((200, 180, 145), 1),
)
# Building and paving colours: muted, so the person stands out as in real crops.
_WALLS = (
    ((165, 165, 160), 3),
    ((195, 185, 165), 2),
    ((140, 90, 75), 1.5),
    ((70, 78, 88), 1.5),
    ((205, 205, 200), 1.5),
    ((120, 130, 120), 1),
    ((175, 150, 120), 1),
)
_GROUNDS = (((105, 105, 108), 3), ((150, 150, 145), 3), ((140, 120, 105), 1), ((95, 110, 80), 1))
_TEXTURES = ("bricks", "shops", "foliage", "windows")
_PATTERNS = ("plain", "hstripes", "vstripes", "zip", "logo", "checks")
_PATTERN_WEIGHTS = (0.5, 0.12, 0.08, 0.1, 0.12, 0.08)


@dataclass(frozen=True)
class Appearance:
    """Everything that stays fixed for one person across cameras."""

    skin: RGB
    hair: RGB
    hair_length: int  # 0 short, 1 to the neck, 2 below the shoulders
    top: RGB
    top_second: RGB  # stripes, checks, print or the shirt under an open jacket
    pattern: str
    stripes: int
    logo_shape: int
    long_sleeves: bool
    top_length: float  # hem below the hip, fraction of height
    bottom: RGB
    bottom_type: str  # trousers, shorts, skirt
    legs: RGB  # skin or tights below shorts and skirts
    shoes: RGB
    backpack: RGB | None
    bag: RGB | None
    bag_side: int
    hat: RGB | None
    glasses: bool
    build: float  # width multiplier
    leg_ratio: float
    head_scale: float
    stride: float


@dataclass(frozen=True)
class CameraStyle:
    """What one camera does to every image: colour response, optics and scene."""

    white_balance: tuple[float, float, float]
    gain: float
    gamma: float
    saturation: float
    haze: float
    haze_colour: tuple[float, float, float]
    blur: float  # Gaussian sigma in output pixels
    noise: float  # sensor noise sigma in 0..255 units
    horizon: float  # wall/ground boundary, fraction of the height
    wall: RGB
    ground: RGB
    texture: str
    accents: tuple[RGB, ...]
    view_weights: tuple[float, float, float, float]  # front, back, left, right


def _pick(rng: np.random.Generator, table: tuple) -> RGB:
    weights = np.array([w for _, w in table], dtype=float)
    return table[rng.choice(len(table), p=weights / weights.sum())][0]


def _jitter(rng: np.random.Generator, rgb: RGB, sigma: float = 8.0) -> RGB:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.normal(0, sigma, 3), 0, 255))


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(int(min(255, v * factor)) for v in rgb)


def _mute(rgb: RGB, amount: float) -> RGB:
    """Mixes a colour towards grey, for signage and shop fronts."""
    grey = sum(rgb) / 3
    return tuple(int(v + (grey - v) * amount) for v in rgb)


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Draws one random person.

    Args:
        rng: the identity's generator; consumed in a fixed order.

    Returns:
        The person's fixed attributes, colours jittered so shared palette entries differ a little.
    """
    top = _jitter(rng, _pick(rng, _TOPS))
    second = _pick(rng, _TOPS)
    if max(abs(a - b) for a, b in zip(second, top, strict=True)) < 60:
        second = (230, 230, 228) if sum(top) < 380 else (30, 30, 32)
    bottom_type = ("trousers", "shorts", "skirt")[rng.choice(3, p=[0.7, 0.15, 0.15])]
    skin = _jitter(rng, _pick(rng, _SKINS), 5)
    tights = bottom_type == "skirt" and rng.random() < 0.4
    return Appearance(
        skin=skin,
        hair=_jitter(rng, _pick(rng, _HAIRS), 5),
        hair_length=int(rng.choice(3, p=[0.5, 0.25, 0.25])),
        top=top,
        top_second=_jitter(rng, second),
        pattern=_PATTERNS[rng.choice(len(_PATTERNS), p=_PATTERN_WEIGHTS)],
        stripes=int(rng.integers(3, 7)),
        logo_shape=int(rng.integers(3)),
        long_sleeves=bool(rng.random() < 0.55),
        top_length=float(rng.uniform(0.02, 0.12)),
        bottom=_jitter(rng, _pick(rng, _BOTTOMS)),
        bottom_type=bottom_type,
        legs=(25, 25, 28) if tights else skin,
        shoes=_jitter(rng, _pick(rng, _SHOES), 6),
        backpack=_jitter(rng, _pick(rng, _GEAR)) if rng.random() < 0.3 else None,
        bag=_jitter(rng, _pick(rng, _GEAR)) if rng.random() < 0.2 else None,
        bag_side=int(rng.choice([-1, 1])),
        hat=_jitter(rng, _pick(rng, _GEAR)) if rng.random() < 0.15 else None,
        glasses=bool(rng.random() < 0.15),
        build=float(rng.uniform(0.85, 1.2)),
        leg_ratio=float(rng.uniform(0.44, 0.5)),
        head_scale=float(rng.uniform(0.9, 1.1)),
        stride=float(rng.uniform(0.6, 1.0)),
    )


def camera_styles(seed: int, num_cameras: int) -> list[CameraStyle]:
    """Draws each camera's colour response, optics and scene.

    Args:
        seed: dataset seed.
        num_cameras: how many cameras.

    Returns:
        One style per camera, index 0 for ``c1``.
    """
    styles = []
    for cam in range(num_cameras):
        rng = np.random.default_rng((seed, _CAMERA, cam))
        # Cameras along a walkway see fronts and backs; across it, profiles.
        axis = rng.choice(3)
        base = ((0.4, 0.4, 0.1, 0.1), (0.1, 0.1, 0.4, 0.4), (0.25, 0.25, 0.25, 0.25))[axis]
        views = rng.dirichlet(np.array(base) * 20)
        # Colour temperature moves red against blue; tint (green-magenta) stays small.
        warmth, tint = float(np.clip(rng.normal(0, 0.08), -0.2, 0.2)), float(rng.normal(0, 0.03))
        styles.append(
            CameraStyle(
                white_balance=(1 + warmth, 1 + tint, 1 - warmth),
                gain=float(rng.uniform(0.85, 1.15)),
                gamma=float(rng.uniform(0.8, 1.25)),
                saturation=float(rng.uniform(0.6, 1.2)),
                haze=float(rng.uniform(0.0, 0.18)),
                haze_colour=tuple(float(c) for c in rng.uniform(0.5, 0.9, 3)),
                blur=float(rng.uniform(0.0, 0.9)),
                noise=float(rng.uniform(1.5, 6.0)),
                horizon=float(rng.uniform(0.4, 0.62)),
                wall=_jitter(rng, _pick(rng, _WALLS), 12),
                ground=_jitter(rng, _pick(rng, _GROUNDS), 12),
                texture=_TEXTURES[rng.integers(len(_TEXTURES))],
                accents=tuple(_mute(_pick(rng, _TOPS), rng.uniform(0.5, 0.8)) for _ in range(3)),
                view_weights=tuple(float(v) for v in views),
            )
        )
    return styles


def _draw_background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: CameraStyle) -> int:
    """Paints the camera's scene with a per-image offset; returns the horizon row."""
    w, h = IMAGE_WIDTH * _SCALE, IMAGE_HEIGHT * _SCALE
    horizon = int(h * np.clip(cam.horizon + rng.normal(0, 0.07), 0.2, 0.85))
    draw.rectangle((0, 0, w, horizon), fill=_jitter(rng, cam.wall, 15))
    draw.rectangle((0, horizon, w, h), fill=_jitter(rng, cam.ground, 12))
    line = _shade(cam.wall, 0.82)
    # A crop sees the part of the scene where the person walked: usually the camera's
    # main backdrop, sometimes another one.
    texture = cam.texture if rng.random() < 0.75 else _TEXTURES[rng.integers(len(_TEXTURES))]
    if texture == "bricks":
        step = int(rng.integers(10, 18))
        for row, y in enumerate(range(int(rng.integers(step)) - step, horizon, step)):
            draw.line((0, y, w, y), fill=line, width=2)
            for x in range((row % 2) * step, w, 2 * step):
                draw.line((x, y, x, y + step), fill=line, width=2)
    elif texture == "shops":
        x = -int(rng.integers(60))
        while x < w:
            width = int(rng.integers(25, 70))
            colour = cam.accents[rng.integers(len(cam.accents))]
            draw.rectangle((x, 0, x + width, horizon), fill=colour)
            draw.rectangle(
                (x + 6, horizon // 4, x + width - 6, horizon - 8), fill=_shade(colour, 0.7)
            )
            x += width + int(rng.integers(2, 8))
    elif texture == "foliage":
        for _ in range(int(rng.integers(8, 16))):
            x, y, r = rng.uniform(0, w), rng.uniform(0, horizon), rng.uniform(8, 30)
            green = _jitter(rng, (85, 105, 75), 12)
            draw.ellipse((x - r, y - r, x + r, y + r * 0.8), fill=green)
    else:
        step_x, step_y = int(rng.integers(28, 44)), int(rng.integers(30, 50))
        for y in range(int(rng.integers(step_y)) - step_y + 8, horizon - 10, step_y):
            for x in range(int(rng.integers(step_x)) - step_x + 6, w, step_x):
                draw.rectangle(
                    (x, y, x + step_x * 0.6, y + step_y * 0.6), fill=_shade(cam.wall, 0.72)
                )
    # Paving seams: spacing grows towards the camera like a ground plane in perspective.
    seam, y, gap = _shade(cam.ground, 0.8), float(horizon), 4.0
    while y < h:
        draw.line((0, y, w, y), fill=seam, width=1)
        y, gap = y + gap, gap * 1.5
    for _ in range(int(rng.integers(0, 3))):
        x = rng.uniform(0, w)
        kind = rng.integers(3)
        colour = _jitter(rng, (90, 90, 95), 30)
        if kind == 0:  # pole or tree trunk
            draw.rectangle(
                (x, 0, x + rng.uniform(4, 10), horizon + rng.uniform(10, 60)), fill=colour
            )
        elif kind == 1:  # bin, box, sign
            top = horizon - rng.uniform(10, 40)
            draw.rectangle(
                (x, top, x + rng.uniform(15, 35), top + rng.uniform(20, 50)), fill=colour
            )
        else:  # parked bicycle
            y = horizon + rng.uniform(0, 30)
            for dx in (0, 28):
                draw.ellipse((x + dx, y, x + dx + 22, y + 22), outline=colour, width=2)
    return horizon


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _limb(draw: ImageDraw.ImageDraw, p0, p1, w0: float, w1: float, segments) -> None:
    """Draws a tapered limb from ``p0`` to ``p1`` coloured by ``[(t_end, rgb), ...]``."""
    length = math.hypot(p1[0] - p0[0], p1[1] - p0[1]) or 1.0
    nx, ny = -(p1[1] - p0[1]) / length, (p1[0] - p0[0]) / length
    t0 = 0.0
    for t1, colour in segments:
        a, b = _lerp(p0, p1, t0), _lerp(p0, p1, t1)
        wa, wb = (w0 + (w1 - w0) * t0) / 2, (w0 + (w1 - w0) * t1) / 2
        draw.polygon(
            [
                (a[0] + nx * wa, a[1] + ny * wa),
                (b[0] + nx * wb, b[1] + ny * wb),
                (b[0] - nx * wb, b[1] - ny * wb),
                (a[0] - nx * wa, a[1] - ny * wa),
            ],
            fill=colour,
        )
        if t0 == 0.0:  # rounded shoulder / hip joint
            draw.ellipse((a[0] - wa, a[1] - wa, a[0] + wa, a[1] + wa), fill=colour)
        t0 = t1


def _patch(draw: ImageDraw.ImageDraw, quad, u0: float, u1: float, v0: float, v1: float, colour):
    """Fills the part ``[u0, u1] x [v0, v1]`` of a torso quad (tl, tr, br, bl), for prints."""
    tl, tr, br, bl = quad

    def point(u: float, v: float) -> tuple[float, float]:
        return _lerp(_lerp(tl, tr, u), _lerp(bl, br, u), v)

    draw.polygon([point(u0, v0), point(u1, v0), point(u1, v1), point(u0, v1)], fill=colour)


def draw_person(
    draw: ImageDraw.ImageDraw,
    app: Appearance,
    view: str,
    phase: float,
    cx: float,
    feet: float,
    height: float,
) -> None:
    """Draws one pedestrian onto a canvas.

    Args:
        draw: canvas (any size; coordinates are in its pixels).
        app: the person.
        view: ``front``, ``back``, ``left`` or ``right`` (the direction a profile faces).
        phase: walking phase in [-1, 1]; sets leg and arm swing.
        cx, feet: horizontal centre and the row of the soles.
        height: person height in pixels.
    """
    h, side = height, view in ("left", "right")
    face = -1 if view == "left" else 1
    top = feet - h
    head_h = 0.135 * h * app.head_scale
    head_w = head_h * (0.85 if side else 0.78)
    shoulder_y = top + head_h + 0.03 * h
    hip_y = feet - app.leg_ratio * h
    hem_y = hip_y + app.top_length * h
    # Profiles are narrower: the torso is seen edge-on.
    sw = (0.085 if side else 0.145) * h * app.build
    ww = (0.08 if side else 0.12) * h * app.build
    leg_w, arm_w, arm_len = 0.095 * h * app.build, 0.058 * h * app.build, 0.37 * h
    sleeve = [(0.92 if app.long_sleeves else 0.42, app.top), (1.0, app.skin)]
    if app.bottom_type == "trousers":
        leg_colours = [(1.0, app.bottom)]
    elif app.bottom_type == "shorts":
        leg_colours = [(0.42, app.bottom), (1.0, app.legs)]
    else:
        leg_colours = [(1.0, app.legs)]
    swing = phase * app.stride * 0.45

    def arm(sign: float, angle: float, dim: float) -> None:
        start = (cx + sign * (sw - arm_w * 0.4), shoulder_y + 0.01 * h)
        if side:
            end = (
                start[0] + math.sin(angle) * face * arm_len,
                start[1] + math.cos(angle) * arm_len,
            )
        else:
            end = (start[0] + sign * 0.025 * h, start[1] + arm_len * (1 - 0.08 * abs(angle)))
        _limb(draw, start, end, arm_w, arm_w * 0.75, [(t, _shade(c, dim)) for t, c in sleeve])
        r = arm_w * 0.45
        draw.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), fill=_shade(app.skin, dim))

    def leg(sign: float, angle: float, dim: float) -> None:
        hip = (cx + sign * 0.045 * h * app.build, hip_y)
        length = feet - hip_y
        if side:
            foot = (hip[0] + math.sin(angle) * face * length, hip_y + math.cos(angle) * length)
        else:  # the lifted foot of a walker seen head-on sits a little higher
            foot = (cx + sign * 0.05 * h * app.build, feet - max(0.0, angle) * 0.05 * h)
        _limb(draw, hip, foot, leg_w, leg_w * 0.6, [(t, _shade(c, dim)) for t, c in leg_colours])
        shoe_w = (0.11 if side else 0.075) * h
        sx = foot[0] + (face * 0.025 * h if side else 0.0)
        draw.ellipse(
            (sx - shoe_w / 2, foot[1] - 0.025 * h, sx + shoe_w / 2, foot[1] + 0.012 * h),
            fill=_shade(app.shoes, dim),
        )

    def strands(length: float) -> None:  # long hair falling past the neck
        if view == "back":
            box = (cx - head_w * 0.55, top + head_h * 0.5, cx + head_w * 0.55, shoulder_y + length)
            draw.rectangle(box, fill=app.hair)
        elif side:
            x0 = cx - face * head_w * 0.5
            draw.rectangle(
                (min(x0, cx), top + head_h * 0.5, max(x0, cx), shoulder_y + length), fill=app.hair
            )
        else:
            for s in (-1, 1):
                x0, x1 = cx + s * head_w * 0.32, cx + s * head_w * 0.6
                draw.rectangle(
                    (min(x0, x1), top + head_h * 0.5, max(x0, x1), shoulder_y + length),
                    fill=app.hair,
                )

    # Far limbs first, near limbs last: a painter's algorithm is enough at this size.
    if side:
        arm(0, -swing, 0.75)
        leg(0, -swing, 0.8)
        leg(0, swing, 1.0)
    else:
        leg(-1, phase, 1.0)
        leg(1, -phase, 1.0)
    if app.bottom_type == "skirt":
        flare = 1.4 if side else 1.5
        draw.polygon(
            [
                (cx - ww, hip_y - 0.03 * h),
                (cx + ww, hip_y - 0.03 * h),
                (cx + ww * flare, hip_y + 0.2 * h),
                (cx - ww * flare, hip_y + 0.2 * h),
            ],
            fill=app.bottom,
        )
    else:
        draw.rectangle((cx - ww, hip_y - 0.03 * h, cx + ww, hip_y + 0.05 * h), fill=app.bottom)
    if app.bag is not None and side and app.bag_side != face:  # bag on the far hip
        draw.rectangle(
            (cx - 0.06 * h, hip_y - 0.07 * h, cx + 0.04 * h, hip_y + 0.04 * h),
            fill=_shade(app.bag, 0.8),
        )
    lean = face * 0.015 * h if side else 0.0
    torso = (
        (cx - sw + lean, shoulder_y),
        (cx + sw + lean, shoulder_y),
        (cx + ww, hem_y),
        (cx - ww, hem_y),
    )
    draw.polygon(torso, fill=app.top)
    second, n = app.top_second, app.stripes
    if app.pattern == "checks":  # thin lines in a mixed colour read as plaid
        line = tuple((a + 2 * b) // 3 for a, b in zip(app.top, second, strict=True))
        for i in range(n):
            _patch(draw, torso, 0, 1, (i + 0.4) / n, (i + 0.6) / n, line)
            _patch(draw, torso, (i + 0.4) / n, (i + 0.6) / n, 0, 1, line)
    elif app.pattern in ("hstripes", "vstripes"):
        for i in range(n):
            a, b = (i + 0.5) / n, (i + 0.85) / n
            if app.pattern == "hstripes":
                _patch(draw, torso, 0, 1, a, b, second)
            else:
                _patch(draw, torso, a, b, 0, 1, second)
    if app.pattern == "zip" and view != "back":  # open jacket: the shirt shows at the front
        u0, u1 = (0.38, 0.62) if not side else ((0.8, 1.0) if face > 0 else (0.0, 0.2))
        _patch(draw, torso, u0, u1, 0, 1, second)
    if app.pattern == "logo" and view == "front":  # chest print, hidden from behind
        x, y, r = cx, shoulder_y + 0.1 * h, 0.04 * h
        if app.logo_shape == 0:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=second)
        elif app.logo_shape == 1:
            draw.rectangle((x - r * 1.3, y - r, x + r * 1.3, y + r), fill=second)
        else:
            for k in range(3):
                draw.rectangle(
                    (x - r * 1.5, y - r + k * r * 0.8, x + r * 1.5, y - r * 0.6 + k * r * 0.8),
                    fill=second,
                )
    if app.backpack is not None:
        straps = _shade(app.backpack, 0.7)
        if view == "back":
            box = (cx - sw * 0.75, shoulder_y + 0.03 * h, cx + sw * 0.75, shoulder_y + 0.3 * h)
            draw.rounded_rectangle(box, radius=0.03 * h, fill=app.backpack)
            draw.line((box[0], box[1] + 0.08 * h, box[2], box[1] + 0.08 * h), fill=straps, width=2)
        elif side:
            x0, x1 = cx - face * (ww + 0.1 * h), cx - face * (ww - 0.02 * h)
            draw.rounded_rectangle(
                (min(x0, x1), shoulder_y + 0.02 * h, max(x0, x1), shoulder_y + 0.3 * h),
                radius=0.03 * h,
                fill=app.backpack,
            )
        else:  # only the straps show from the front
            for s in (-1, 1):
                draw.line(
                    (cx + s * sw * 0.55, shoulder_y, cx + s * sw * 0.6, shoulder_y + 0.22 * h),
                    fill=straps,
                    width=max(1, int(0.02 * h)),
                )
    if app.bag is not None:
        side_x = app.bag_side * (-1 if view == "back" else 1)
        if not side:
            draw.line(
                (cx - side_x * sw * 0.7, shoulder_y, cx + side_x * ww, hip_y),
                fill=_shade(app.bag, 0.6),
                width=max(1, int(0.015 * h)),
            )
            bx = cx + side_x * (ww + 0.03 * h)
            draw.rectangle(
                (bx - 0.05 * h, hip_y - 0.06 * h, bx + 0.05 * h, hip_y + 0.05 * h), fill=app.bag
            )
        elif app.bag_side == face:
            draw.rectangle(
                (cx - 0.04 * h, hip_y - 0.07 * h, cx + 0.06 * h, hip_y + 0.04 * h), fill=app.bag
            )
    if side:
        arm(0, swing, 1.0)
    else:
        arm(-1, phase, 1.0)
        arm(1, -phase, 1.0)
    # Head: neck, hair mass, then the face where it shows.
    draw.rectangle(
        (cx - 0.022 * h, top + head_h * 0.8, cx + 0.022 * h, shoulder_y + 0.01 * h),
        fill=_shade(app.skin, 0.9),
    )
    if app.hair_length == 2:
        strands(0.12 * h)
    elif app.hair_length == 1:
        strands(0.0)
    m = 0.01 * h
    draw.ellipse(
        (cx - head_w / 2 - m, top - m, cx + head_w / 2 + m, top + head_h * 0.85), fill=app.hair
    )
    eye_y = top + head_h * 0.45
    if view == "front":
        draw.ellipse(
            (cx - head_w / 2, top + head_h * 0.15, cx + head_w / 2, top + head_h), fill=app.skin
        )
    elif side:
        fx = cx + face * head_w * 0.18
        draw.ellipse(
            (fx - head_w * 0.4, top + head_h * 0.18, fx + head_w * 0.4, top + head_h), fill=app.skin
        )
    else:
        draw.ellipse((cx - head_w / 2, top, cx + head_w / 2, top + head_h * 0.9), fill=app.hair)
    if app.glasses and view != "back":
        x0, x1 = (
            (cx - head_w * 0.42, cx + head_w * 0.42)
            if not side
            else sorted((cx + face * head_w * 0.05, cx + face * head_w * 0.55))
        )
        draw.rectangle((x0, eye_y - 0.012 * h, x1, eye_y + 0.012 * h), fill=(20, 20, 22))
    if app.hat is not None:
        draw.chord(
            (cx - head_w * 0.6, top - head_h * 0.1, cx + head_w * 0.6, top + head_h * 0.75),
            180,
            360,
            fill=app.hat,
        )
        if side:
            bx = cx + face * head_w * 0.85
            draw.rectangle(
                (min(cx, bx), top + head_h * 0.25, max(cx, bx), top + head_h * 0.33),
                fill=_shade(app.hat, 0.8),
            )


def _choose_view(rng: np.random.Generator, cam: CameraStyle) -> str:
    return _VIEWS[rng.choice(4, p=np.array(cam.view_weights) / sum(cam.view_weights))]


def _finish(canvas: Image.Image, rng: np.random.Generator, cam: CameraStyle) -> bytes:
    """Downscales, applies lighting and the camera's response, and encodes a JPEG."""
    img = canvas.resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BOX)
    x = np.asarray(img, dtype=np.float32) / 255.0
    # Exposure plus a soft gradient: sun on one side, shade on the other.
    gx = np.linspace(-1, 1, IMAGE_WIDTH, dtype=np.float32)[None, :, None]
    gy = np.linspace(-1, 1, IMAGE_HEIGHT, dtype=np.float32)[:, None, None]
    light = rng.uniform(0.7, 1.25) * (
        1 + rng.uniform(-0.25, 0.25) * gx + rng.uniform(-0.1, 0.1) * gy
    )
    x = x * light * np.array(cam.white_balance, dtype=np.float32) * cam.gain
    grey = x.mean(axis=2, keepdims=True)
    x = np.clip(grey + (x - grey) * cam.saturation, 0, 1) ** cam.gamma
    x = x * (1 - cam.haze) + cam.haze * np.array(cam.haze_colour, dtype=np.float32)
    img = Image.fromarray((x * 255 + 0.5).astype(np.uint8))
    sigma = cam.blur * rng.uniform(0.6, 1.4)
    if sigma > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    # Mostly luminance noise with a little chroma, like a small CCTV sensor.
    noise = rng.normal(0, cam.noise, (IMAGE_HEIGHT, IMAGE_WIDTH, 1))
    noise = noise + rng.normal(0, cam.noise * 0.3, (IMAGE_HEIGHT, IMAGE_WIDTH, 3))
    out = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _render(
    app: Appearance | None,
    view: str,
    rng: np.random.Generator,
    cam: CameraStyle,
    junk: bool = False,
) -> bytes:
    """One detection crop: background, bystanders, the person, occluders, camera effects.

    ``app`` None with ``junk`` draws a bad crop: mostly background, a fragment, or a tiny figure.
    """
    w, h = IMAGE_WIDTH * _SCALE, IMAGE_HEIGHT * _SCALE
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    horizon = _draw_background(draw, rng, cam)
    if rng.random() < 0.2:  # a smaller passer-by further back
        bx = w * rng.uniform(-0.3, 1.3)
        draw_person(
            draw,
            sample_appearance(rng),
            _choose_view(rng, cam),
            rng.uniform(-1, 1),
            bx,
            horizon + rng.uniform(0.2, 0.4) * h,
            h * rng.uniform(0.4, 0.6),
        )
    height = h * rng.uniform(0.88, 0.98)
    cx, feet = w / 2 + rng.normal(0, 0.045 * w), h * rng.uniform(0.95, 1.0)
    if junk:
        app = sample_appearance(rng)
        kind = rng.integers(3)
        if kind == 0:  # detector fired on background next to a person
            cx = w * rng.choice([-0.45, 1.45]) + rng.normal(0, 0.08 * w)
        elif kind == 1:  # zoomed-in body part
            height *= rng.uniform(1.8, 3.0)
            feet = h + height * rng.uniform(0.0, 0.6)
        else:  # tiny far-away figure
            height *= rng.uniform(0.25, 0.45)
            cx, feet = w * rng.uniform(0.2, 0.8), h * rng.uniform(0.5, 0.95)
    elif rng.random() < 0.12:  # loose detection: the person is cut by the border
        if rng.random() < 0.5:
            cx += w * rng.choice([-1, 1]) * rng.uniform(0.2, 0.32)
        else:
            feet += h * rng.uniform(0.08, 0.18)
    draw.ellipse(
        (cx - 0.16 * height, feet - 0.02 * height, cx + 0.16 * height, feet + 0.02 * height),
        fill=_shade(cam.ground, 0.65),
    )
    draw_person(draw, app, view, rng.uniform(-1, 1), cx, feet, height)
    if rng.random() < 0.3:
        kind = rng.integers(3)
        colour = _jitter(rng, _pick(rng, _GEAR), 30)
        if kind == 0:  # car, bench or bin in front of the legs
            x0 = w * rng.uniform(-0.3, 0.5)
            y0 = h * rng.uniform(0.55, 0.8)
            draw.rectangle((x0, y0, x0 + w * rng.uniform(0.4, 0.9), h), fill=colour)
            draw.rectangle((x0, y0, x0 + w, y0 + 0.03 * h), fill=_shade(colour, 0.7))
        elif kind == 1:  # pole or tree in the line of sight
            x0 = w * rng.uniform(0.1, 0.8)
            draw.rectangle((x0, 0, x0 + w * rng.uniform(0.06, 0.15), h), fill=colour)
        else:  # a closer pedestrian at the edge of the box
            ox = w * rng.choice([-1, 1]) * rng.uniform(0.55, 0.8) + w / 2
            draw_person(
                draw,
                sample_appearance(rng),
                _choose_view(rng, cam),
                rng.uniform(-1, 1),
                ox,
                h * rng.uniform(1.0, 1.1),
                h * rng.uniform(0.95, 1.1),
            )
    return _finish(canvas, rng, cam)


@dataclass(frozen=True)
class _Task:
    kind: int  # _IDENTITY, _DISTRACTOR or _JUNK
    index: int  # pid, or batch number
    out_dir: str
    seed: int
    cameras: tuple[CameraStyle, ...]
    test: bool = False  # identity only: split into query and gallery
    count: int = 0  # batch only: images to draw


def _plan_tasks(
    out_dir: Path, seed: int, cams: tuple[CameraStyle, ...], num_identities: int
) -> list[_Task]:
    """One task per identity (first half train), then distractor and junk batches."""
    common = {"out_dir": str(out_dir), "seed": seed, "cameras": cams}
    num_train = num_identities // 2
    tasks = [
        _Task(_IDENTITY, pid, test=pid > num_train, **common)
        for pid in range(1, num_identities + 1)
    ]
    # Like Market-1501: about one gallery image in six is a distractor, plus junk crops.
    num_test = num_identities - num_train
    for kind, total in ((_DISTRACTOR, 2 * num_test), (_JUNK, num_test)):
        for k, start in enumerate(range(0, total, _BATCH)):
            tasks.append(_Task(kind, k, count=min(_BATCH, total - start), **common))
    return tasks


def _run_task(task: _Task) -> list[str]:
    """Renders and writes one identity or one batch of distractors / junk.

    Returns:
        Paths written, relative to ``task.out_dir``.
    """
    rng = np.random.default_rng((task.seed, task.kind, task.index))
    out, cams, written = Path(task.out_dir), task.cameras, []

    def write(split: str, name: str, data: bytes) -> None:
        (out / split / name).write_bytes(data)
        written.append(f"{split}/{name}")

    if task.kind != _IDENTITY:
        pid = "0000" if task.kind == _DISTRACTOR else "-1"
        for j in range(task.count):
            cam = int(rng.integers(len(cams)))
            app = sample_appearance(rng) if task.kind == _DISTRACTOR else None
            data = _render(app, _choose_view(rng, cams[cam]), rng, cams[cam], app is None)
            write(
                SPLIT_DIRS[2], f"{pid}_c{cam + 1}s1_{task.index * _BATCH + j + 1:06d}_00.jpg", data
            )
        return written
    app = sample_appearance(rng)
    num_cams = int(rng.integers(2, len(cams) + 1))
    chosen = np.sort(rng.choice(len(cams), size=num_cams, replace=False))
    total = max(int(rng.integers(12, 21)), 2 * num_cams)
    # At least two images per camera so a test camera keeps one after its query is taken.
    counts = 2 + rng.multinomial(total - 2 * num_cams, rng.dirichlet(np.ones(num_cams)))
    frame = int(rng.integers(1, 900_000))
    for cam, count in zip(chosen, counts, strict=True):
        # People keep walking the same way under one camera: mostly one viewpoint each.
        usual_view = _choose_view(rng, cams[cam])
        query_slot = int(rng.integers(count))
        for j in range(count):
            view = usual_view if rng.random() < 0.7 else _choose_view(rng, cams[cam])
            data = _render(app, view, rng, cams[cam])
            frame += int(rng.integers(1, 120))
            split = SPLIT_DIRS[0] if not task.test else SPLIT_DIRS[1 if j == query_slot else 2]
            write(split, f"{task.index:04d}_c{cam + 1}s1_{frame:06d}_00.jpg", data)
    return written


def _split_counts(paths: list[str]) -> dict[str, dict[str, int]]:
    counts = {}
    for split in SPLIT_DIRS:
        names = [p.split("/")[1] for p in paths if p.startswith(split + "/")]
        pids = [int(n.split("_")[0]) for n in names]
        counts[split] = {
            "images": len(names),
            "identities": len({p for p in pids if p > 0}),
            "distractors": sum(p == 0 for p in pids),
            "junk": sum(p == -1 for p in pids),
            "cameras": len({n.split("_")[1][:2] for n in names}),
        }
    return counts


def _check_existing(root: Path, arguments: dict) -> bool:
    """True if ``root`` already holds this exact set; raises if it holds anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ReidError(f"{root}: is a file; expected a folder for the synthetic dataset")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        if any(root.iterdir()):
            raise ReidError(
                f"{root}: not empty and has no {MANIFEST}; expected an empty or missing folder "
                "to generate the synthetic dataset in"
            )
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        found = {"version": manifest["version"], **manifest["arguments"]}
        counts = manifest["counts"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ReidError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    expected = {"version": GENERATOR_VERSION, **arguments}
    if found != expected:
        raise ReidError(
            f"{root}: holds a synthetic dataset made with {found}, expected {expected}; "
            "choose another root or delete it"
        )
    for split in SPLIT_DIRS:
        on_disk = sum(1 for _ in (root / split).glob("*.jpg")) if (root / split).is_dir() else 0
        if on_disk != counts[split]["images"]:
            raise ReidError(
                f"{root / split}: {on_disk} images, expected {counts[split]['images']} "
                f"as listed in {MANIFEST}; the set was modified, delete it to regenerate"
            )
    return True


def generate_synthetic(
    root: str | Path,
    num_identities: int = 300,
    num_cameras: int = 6,
    seed: int = 0,
    num_workers: int = 2,
) -> Path:
    """Writes a Market-1501-layout folder of synthetic pedestrians at ``root`` and returns it.

    Identities ``1..num_identities // 2`` are for training, the rest for testing. Each
    identity is seen by 2 or more cameras, 12-20 images in all. Each test identity gives one
    query image per camera it appears in; its other images, ``0000`` distractors and ``-1``
    junk crops form the gallery. Images are 128x64 JPEGs named ``PPPP_cCs1_FFFFFF_00.jpg``.

    Generation happens in a temporary sibling folder that is renamed into place after its
    ``synthetic.json`` manifest is written, so ``root`` is either complete or absent. A
    ``root`` holding a set made with the same arguments is returned as is.

    Args:
        root: output folder; created.
        num_identities: identities in total (at least 2).
        num_cameras: cameras, 2 to 9 (Market names allow one digit).
        seed: non-negative; the same arguments give byte-identical files.
        num_workers: processes to draw with; does not change the output.

    Returns:
        ``root`` as a Path.

    Raises:
        ReidError: bad arguments, or ``root`` holds something other than this exact set.
    """
    root = Path(root)
    if num_identities < 2 or not 2 <= num_cameras <= 9 or seed < 0 or num_workers < 1:
        raise ReidError(
            f"generate_synthetic: got num_identities={num_identities}, num_cameras={num_cameras}, "
            f"seed={seed}, num_workers={num_workers}; expected >= 2, 2..9, >= 0, >= 1"
        )
    arguments = {"num_identities": num_identities, "num_cameras": num_cameras, "seed": seed}
    if _check_existing(root, arguments):
        logger.info("Synthetic dataset already at %s", root)
        return root

    start = time.perf_counter()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        for split in SPLIT_DIRS:
            (tmp / split).mkdir()
        cams = tuple(camera_styles(seed, num_cameras))
        tasks = _plan_tasks(tmp, seed, cams, num_identities)
        progress = tqdm(total=len(tasks), desc="synthetic pedestrians", unit="task")
        written: list[str] = []
        if num_workers == 1:
            for task in tasks:
                written += _run_task(task)
                progress.update()
        else:
            # fork on Linux: no __main__ guard needed in callers, and workers only use
            # numpy and PIL, so threads of the parent (torch, tqdm) do not matter.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            with multiprocessing.get_context(method).Pool(num_workers) as pool:
                for files in pool.imap_unordered(_run_task, tasks, chunksize=4):
                    written += files
                    progress.update()
        progress.close()
        counts = _split_counts(written)
        manifest = {
            "generator": __name__,
            "version": GENERATOR_VERSION,
            "arguments": arguments,
            "image_size": [IMAGE_HEIGHT, IMAGE_WIDTH],
            "counts": counts,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            if root.is_dir():
                root.rmdir()  # empty (checked above); rename cannot replace it everywhere
            os.rename(tmp, root)
        except OSError:
            # Another process (e.g. another DDP rank) may have finished the same set first.
            if not _check_existing(root, arguments):
                raise
            logger.info("Synthetic dataset at %s was written by another process", root)
            return root
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary = ", ".join(
        f"{split} {c['identities']} ids / {c['images']} images / {c['cameras']} cameras"
        for split, c in counts.items()
    )
    logger.info(
        "Generated synthetic dataset at %s in %.1fs: %s (gallery adds %d distractors, %d junk)",
        root,
        time.perf_counter() - start,
        summary,
        counts[SPLIT_DIRS[2]]["distractors"],
        counts[SPLIT_DIRS[2]]["junk"],
    )
    return root
