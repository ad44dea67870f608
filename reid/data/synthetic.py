"""Procedurally drawn pedestrians written as a Market-1501 folder.

With no datasets on the machine the framework draws its own. An identity is a
fixed combination of clothing colours, patterns and cut, body shape, skin, hair,
shoes and accessories. Colours come from a small street palette, so no single
attribute identifies a person; the combination does. Each camera has its own
colour response, blur, noise and backdrop; each image its own viewpoint, gait
phase, crop, lighting, bystanders and occluders. Figures are drawn at twice the
output size and box-downscaled, which antialiases them cheaply.

Every identity (and every batch of distractors or junk) draws from its own
``numpy.random.default_rng((seed, stream, index))``, so a seed gives the same
bytes whatever the number of worker processes (for given numpy and Pillow versions,
which the manifest records).
"""

import bisect
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
import PIL
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from reid.data.layout import MARKET_SPLIT_DIRS
from reid.errors import ReidError

__all__ = ["GENERATOR_VERSION", "MANIFEST", "draw_pedestrians", "generate_synthetic"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump whenever the pixels change: old folders then fail loudly
MANIFEST = "synthetic.json"
# The folders the Market parser reads, in the order train, query, gallery.
SPLIT_DIRS = tuple(MARKET_SPLIT_DIRS.values())
IMAGE_HEIGHT, IMAGE_WIDTH = 128, 64
_SCALE = 2
_JPEG_QUALITY = 90
_BATCH = 16  # distractor or junk images per task
# Separate random streams, so that adding identities never changes the cameras.
_IDENTITY, _DISTRACTOR, _JUNK, _CAMERA = range(4)
_IN_MEMORY = 4  # draw_pedestrians: never the pixels of a generated dataset
_VIEWS = ("front", "back", "left", "right")  # left/right: the way a profile faces
_BACKDROPS = ("bricks", "shops", "foliage", "windows")
_PATTERNS = ("plain", "hstripes", "vstripes", "zip", "logo", "checks")

RGB = tuple[int, int, int]
Palette = tuple[tuple[RGB, ...], list[float]]  # colours and cumulative weights
Point = tuple[float, float]


def _palette(*entries: tuple[RGB, float]) -> Palette:
    return tuple(c for c, _ in entries), list(np.cumsum([w for _, w in entries]))


# fmt: off
# (rgb, weight). Dark and neutral garments dominate real streets, so many
# identities share a top or a bottom colour.
_TOPS = _palette(
    ((30, 30, 33), 5), ((228, 228, 224), 4), ((128, 128, 132), 3), ((35, 45, 85), 3),
    ((50, 90, 170), 2), ((140, 175, 215), 1.5), ((180, 35, 40), 2), ((110, 30, 40), 1),
    ((50, 120, 60), 1), ((100, 105, 60), 1), ((225, 195, 60), 1), ((225, 140, 165), 1.5),
    ((105, 60, 130), 1), ((200, 180, 145), 1.5), ((110, 75, 50), 1), ((220, 120, 40), 0.7),
)
_BOTTOMS = _palette(
    ((28, 28, 30), 5), ((55, 75, 115), 4), ((110, 135, 170), 1.5), ((125, 125, 128), 2),
    ((70, 70, 75), 2), ((180, 160, 120), 2), ((225, 225, 220), 1), ((100, 70, 50), 1),
    ((35, 45, 80), 1.5), ((150, 40, 45), 0.3),
)
_SKINS = _palette(
    ((240, 205, 180), 2), ((225, 180, 150), 2), ((200, 150, 115), 1.5), ((165, 115, 85), 1),
    ((120, 80, 55), 1), ((85, 60, 45), 0.7),
)
_HAIRS = _palette(
    ((25, 22, 20), 5), ((60, 40, 30), 3), ((105, 70, 45), 2), ((195, 165, 110), 1),
    ((165, 165, 160), 0.7), ((130, 60, 35), 0.5),
)
_SHOES = _palette(
    ((25, 25, 25), 4), ((230, 230, 230), 3), ((95, 60, 40), 1.5), ((120, 120, 125), 1.5),
    ((50, 80, 150), 0.5), ((170, 40, 40), 0.5),
)
_GEAR = _palette(  # bags, hats, street furniture
    ((25, 25, 28), 4), ((35, 45, 85), 1.5), ((110, 110, 115), 1.5), ((170, 40, 45), 1),
    ((110, 75, 50), 1), ((60, 100, 60), 1), ((220, 140, 165), 0.7), ((200, 180, 145), 1),
)
# Buildings and paving are muted, so people stand out as they do in real crops.
_WALLS = _palette(
    ((165, 165, 160), 3), ((195, 185, 165), 2), ((140, 90, 75), 1.5), ((70, 78, 88), 1.5),
    ((205, 205, 200), 1.5), ((120, 130, 120), 1), ((175, 150, 120), 1),
)
_GROUNDS = _palette(
    ((105, 105, 108), 3), ((150, 150, 145), 3), ((140, 120, 105), 1), ((95, 110, 80), 1),
)
# fmt: on


@dataclass(frozen=True)
class _Appearance:
    """What stays fixed for one person across cameras."""

    skin: RGB
    hair: RGB
    hair_length: int  # 0 short, 1 to the neck, 2 past the shoulders
    hair_style: int  # 0 flat, 1 tied back (bun or ponytail), 2 full or curly
    top: RGB
    top_second: RGB  # stripes, checks, print, or the shirt under an open jacket
    pattern: str
    stripes: int
    logo_shape: int
    long_sleeves: bool
    top_length: float  # hem below the hip, fraction of height
    bottom: RGB
    bottom_type: str  # trousers, shorts or skirt
    legs: RGB  # skin, or tights under a skirt
    shoes: RGB
    backpack: RGB | None
    bag: RGB | None
    bag_side: int  # the hip the shoulder bag hangs on: -1 left, 1 right
    hat: RGB | None
    glasses: bool
    build: float  # width multiplier
    leg_ratio: float  # hip height / body height
    head_scale: float
    stride: float


@dataclass(frozen=True)
class _Camera:
    """What one camera does to every image: scene, colour response and optics."""

    backdrop: str
    wall: RGB
    ground: RGB
    accents: tuple[RGB, ...]  # shop fronts and signs
    horizon: float  # wall/ground boundary, fraction of the image height
    view_weights: tuple[float, ...]  # front, back, left, right
    white_balance: tuple[float, float, float]
    gain: float
    saturation: float
    gamma: float
    haze: float
    haze_colour: tuple[float, float, float]
    blur: float  # Gaussian sigma in output pixels
    noise: float  # sensor noise sigma, 0..255 scale


def _pick(rng: np.random.Generator, palette: Palette) -> RGB:
    colours, cumulative = palette
    return colours[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]


def _jitter(rng: np.random.Generator, rgb: RGB, sigma: float = 8.0) -> RGB:
    return tuple(int(v) for v in np.clip(np.add(rgb, rng.normal(0, sigma, 3)), 0, 255))


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(min(255, int(v * factor)) for v in rgb)


def _mute(rgb: RGB, amount: float) -> RGB:
    grey = sum(rgb) / 3
    return tuple(int(v + (grey - v) * amount) for v in rgb)


def _sample_appearance(rng: np.random.Generator) -> _Appearance:
    """Draws a random person, jittering palette colours so shared entries differ a little."""
    top = _jitter(rng, _pick(rng, _TOPS))
    second = _pick(rng, _TOPS)
    if max(abs(a - b) for a, b in zip(second, top, strict=True)) < 60:  # keep prints visible
        second = (230, 230, 228) if sum(top) < 380 else (30, 30, 32)
    skin = _jitter(rng, _pick(rng, _SKINS), 5)
    bottom_type = ("trousers", "shorts", "skirt")[rng.choice(3, p=[0.7, 0.15, 0.15])]
    tights = bottom_type == "skirt" and rng.random() < 0.4
    return _Appearance(
        skin=skin,
        hair=_jitter(rng, _pick(rng, _HAIRS), 5),
        hair_length=int(rng.choice(3, p=[0.5, 0.25, 0.25])),
        hair_style=int(rng.choice(3, p=[0.6, 0.2, 0.2])),
        top=top,
        top_second=_jitter(rng, second),
        pattern=_PATTERNS[rng.choice(6, p=[0.5, 0.12, 0.08, 0.1, 0.12, 0.08])],
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


def _camera_styles(seed: int, num_cameras: int) -> tuple[_Camera, ...]:
    """Draws each camera's scene and response; index 0 is ``c1``."""
    cameras = []
    for index in range(num_cameras):
        rng = np.random.default_rng((seed, _CAMERA, index))
        # Cameras along a walkway see fronts and backs; cameras across it, profiles.
        usual = ((0.4, 0.4, 0.1, 0.1), (0.1, 0.1, 0.4, 0.4), (0.25, 0.25, 0.25, 0.25))
        views = rng.dirichlet(np.array(usual[rng.integers(3)]) * 20)
        # Colour temperature moves red against blue; the green-magenta tint stays small.
        warmth, tint = float(np.clip(rng.normal(0, 0.08), -0.2, 0.2)), float(rng.normal(0, 0.03))
        cameras.append(
            _Camera(
                backdrop=_BACKDROPS[rng.integers(len(_BACKDROPS))],
                wall=_jitter(rng, _pick(rng, _WALLS), 12),
                ground=_jitter(rng, _pick(rng, _GROUNDS), 12),
                accents=tuple(_mute(_pick(rng, _TOPS), rng.uniform(0.5, 0.8)) for _ in range(3)),
                horizon=float(rng.uniform(0.4, 0.62)),
                view_weights=tuple(float(v) for v in views),
                white_balance=(1 + warmth, 1 + tint, 1 - warmth),
                gain=float(rng.uniform(0.85, 1.15)),
                saturation=float(rng.uniform(0.6, 1.2)),
                gamma=float(rng.uniform(0.8, 1.25)),
                haze=float(rng.uniform(0.0, 0.18)),
                haze_colour=tuple(float(c) for c in rng.uniform(0.5, 0.9, 3)),
                blur=float(rng.uniform(0.0, 0.9)),
                noise=float(rng.uniform(1.5, 6.0)),
            )
        )
    return tuple(cameras)


def _choose_view(rng: np.random.Generator, cam: _Camera) -> str:
    return _VIEWS[rng.choice(4, p=cam.view_weights)]


def _draw_background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera) -> int:
    """Paints the part of the camera's scene behind one crop; returns the horizon row."""
    w, h = IMAGE_WIDTH * _SCALE, IMAGE_HEIGHT * _SCALE
    horizon = int(h * np.clip(cam.horizon + rng.normal(0, 0.07), 0.2, 0.85))
    wall = _jitter(rng, cam.wall, 15)
    draw.rectangle((0, 0, w, horizon), fill=wall)
    draw.rectangle((0, horizon, w, h), fill=_jitter(rng, cam.ground, 12))
    # Crops sit wherever the person walked: usually before the camera's main backdrop.
    backdrop = cam.backdrop if rng.random() < 0.75 else _BACKDROPS[rng.integers(4)]
    if backdrop == "bricks":
        step, line = int(rng.integers(10, 18)), _shade(wall, 0.82)
        for row, y in enumerate(range(int(rng.integers(step)) - step, horizon, step)):
            draw.line((0, y, w, y), fill=line, width=2)
            for x in range((row % 2) * step, w, 2 * step):
                draw.line((x, y, x, y + step), fill=line, width=2)
    elif backdrop == "shops":
        x = -int(rng.integers(60))
        while x < w:
            width, colour = int(rng.integers(25, 70)), cam.accents[rng.integers(3)]
            draw.rectangle((x, 0, x + width, horizon), fill=colour)
            draw.rectangle((x + 6, horizon // 4, x + width - 6, horizon - 8), _shade(colour, 0.7))
            x += width + int(rng.integers(2, 8))
    elif backdrop == "foliage":
        for _ in range(int(rng.integers(8, 16))):
            x, y, r = rng.uniform(0, w), rng.uniform(0, horizon), rng.uniform(8, 30)
            draw.ellipse((x - r, y - r, x + r, y + r * 0.8), fill=_jitter(rng, (85, 105, 75), 12))
    else:
        sx, sy = int(rng.integers(28, 44)), int(rng.integers(30, 50))
        for y in range(int(rng.integers(sy)) - sy + 8, horizon - 10, sy):
            for x in range(int(rng.integers(sx)) - sx + 6, w, sx):
                draw.rectangle((x, y, x + sx * 0.6, y + sy * 0.6), fill=_shade(wall, 0.72))
    # Paving seams whose spacing grows towards the camera, like a ground plane.
    y, gap = float(horizon), 4.0
    while y < h:
        draw.line((0, y, w, y), fill=_shade(cam.ground, 0.8), width=1)
        y, gap = y + gap, gap * 1.5
    for _ in range(int(rng.integers(0, 3))):
        x, kind, colour = rng.uniform(0, w), rng.integers(3), _jitter(rng, (90, 90, 95), 30)
        if kind == 0:  # pole or tree trunk
            draw.rectangle((x, 0, x + rng.uniform(4, 10), horizon + rng.uniform(10, 60)), colour)
        elif kind == 1:  # bin, box or sign
            y = horizon - rng.uniform(10, 40)
            draw.rectangle((x, y, x + rng.uniform(15, 35), y + rng.uniform(20, 50)), colour)
        else:  # parked bicycle
            y = horizon + rng.uniform(0, 30)
            for dx in (0, 28):
                draw.ellipse((x + dx, y, x + dx + 22, y + 22), outline=colour, width=2)
    return horizon


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


class _Painter:
    """Draws one pedestrian; geometry is in fractions of the body height ``h``.

    Args:
        draw: the canvas.
        app: the person.
        view: ``front``, ``back``, ``left`` or ``right``.
        phase: gait phase in [-1, 1]; swings legs and arms.
        cx: horizontal centre; feet: the row of the soles; h: body height, in canvas pixels.
    """

    def __init__(
        self, draw: ImageDraw.ImageDraw, app: _Appearance, view: str, phase: float,
        cx: float, feet: float, h: float,
    ) -> None:  # fmt: skip
        self.draw, self.app, self.view, self.phase = draw, app, view, phase
        self.cx, self.feet, self.h = cx, feet, h
        self.side = view in ("left", "right")
        self.face = -1 if view == "left" else 1
        self.top = feet - h
        self.head_h = 0.135 * h * app.head_scale
        self.head_w = self.head_h * (0.85 if self.side else 0.78)
        self.shoulder_y = self.top + self.head_h + 0.03 * h
        self.hip_y = feet - app.leg_ratio * h
        # A profile shows the torso edge-on: narrower shoulders and waist.
        self.sw = (0.085 if self.side else 0.145) * h * app.build
        self.ww = (0.08 if self.side else 0.12) * h * app.build
        lean = self.face * 0.015 * h if self.side else 0.0
        hem = self.hip_y + app.top_length * h
        self.torso = (
            (cx - self.sw + lean, self.shoulder_y), (cx + self.sw + lean, self.shoulder_y),
            (cx + self.ww, hem), (cx - self.ww, hem),
        )  # fmt: skip

    def paint(self) -> None:
        """Far parts first, near parts last: painter's order is enough at this size."""
        swing = self.phase * self.app.stride * 0.45
        if self.side:
            self._arm(0, -swing, 0.75)
            self._leg(0, -swing, 0.8)
            self._leg(0, swing, 1.0)
        else:
            self._leg(-1, self.phase, 1.0)
            self._leg(1, -self.phase, 1.0)
        self._hips()
        self._torso()
        self._carried()
        if self.side:
            self._arm(0, swing, 1.0)
        else:
            self._arm(-1, self.phase, 1.0)
            self._arm(1, -self.phase, 1.0)
        self._head()

    def _limb(self, p0: Point, p1: Point, w0: float, w1: float, colours: list) -> None:
        """A tapered limb from ``p0`` to ``p1`` in segments ``[(t_end, rgb), ...]``."""
        length = math.hypot(p1[0] - p0[0], p1[1] - p0[1]) or 1.0
        nx, ny = (p0[1] - p1[1]) / length, (p1[0] - p0[0]) / length
        t0 = 0.0
        for t1, colour in colours:
            (ax, ay), (bx, by) = _lerp(p0, p1, t0), _lerp(p0, p1, t1)
            wa, wb = (w0 + (w1 - w0) * t0) / 2, (w0 + (w1 - w0) * t1) / 2
            corners = [(ax + nx * wa, ay + ny * wa), (bx + nx * wb, by + ny * wb),
                       (bx - nx * wb, by - ny * wb), (ax - nx * wa, ay - ny * wa)]  # fmt: skip
            self.draw.polygon(corners, fill=colour)
            if t0 == 0.0:  # rounded shoulder or hip joint
                self.draw.ellipse((ax - wa, ay - wa, ax + wa, ay + wa), fill=colour)
            t0 = t1

    def _patch(self, u0: float, u1: float, v0: float, v1: float, colour: RGB) -> None:
        """Fills ``[u0, u1] x [v0, v1]`` of the torso (u across, v down), following its taper."""
        tl, tr, br, bl = self.torso

        def at(u: float, v: float) -> Point:
            return _lerp(_lerp(tl, tr, u), _lerp(bl, br, u), v)

        self.draw.polygon([at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)], fill=colour)

    def _leg(self, sign: float, angle: float, dim: float) -> None:
        app, h = self.app, self.h
        hip = (self.cx + sign * 0.045 * h * app.build, self.hip_y)
        length = self.feet - self.hip_y
        if self.side:
            sx, sy = math.sin(angle) * self.face, math.cos(angle)
            foot = (hip[0] + sx * length, self.hip_y + sy * length)
        else:  # seen head-on, the lifted foot only sits a little higher
            foot = (self.cx + sign * 0.05 * h * app.build, self.feet - max(0.0, angle) * 0.05 * h)
        cover = {"trousers": 1.0, "shorts": 0.42, "skirt": 0.0}[app.bottom_type]
        colours = [(cover, app.bottom), (1.0, app.legs)] if cover < 1 else [(1.0, app.bottom)]
        width = 0.095 * h * app.build
        self._limb(hip, foot, width, width * 0.6, [(t, _shade(c, dim)) for t, c in colours])
        shoe_w = (0.11 if self.side else 0.075) * h
        x = foot[0] + (self.face * 0.025 * h if self.side else 0.0)
        box = (x - shoe_w / 2, foot[1] - 0.025 * h, x + shoe_w / 2, foot[1] + 0.012 * h)
        self.draw.ellipse(box, fill=_shade(app.shoes, dim))

    def _hips(self) -> None:
        app, cx, ww, y, h = self.app, self.cx, self.ww, self.hip_y, self.h
        if app.bottom_type == "skirt":
            flare = 1.4 if self.side else 1.5
            self.draw.polygon([(cx - ww, y - 0.03 * h), (cx + ww, y - 0.03 * h),
                               (cx + ww * flare, y + 0.2 * h), (cx - ww * flare, y + 0.2 * h)],
                              fill=app.bottom)  # fmt: skip
        else:
            self.draw.rectangle((cx - ww, y - 0.03 * h, cx + ww, y + 0.05 * h), fill=app.bottom)
        if app.bag is not None and self.side and app.bag_side != self.face:  # on the far hip
            box = (cx - 0.06 * h, y - 0.07 * h, cx + 0.04 * h, y + 0.04 * h)
            self.draw.rectangle(box, fill=_shade(app.bag, 0.8))

    def _torso(self) -> None:
        app, h, n, second = self.app, self.h, self.app.stripes, self.app.top_second
        self.draw.polygon(self.torso, fill=app.top)
        if app.pattern == "checks":  # thin lines in a mixed colour read as plaid
            line = tuple((a + 2 * b) // 3 for a, b in zip(app.top, second, strict=True))
            for i in range(n):
                self._patch(0, 1, (i + 0.4) / n, (i + 0.6) / n, line)
                self._patch((i + 0.4) / n, (i + 0.6) / n, 0, 1, line)
        elif app.pattern == "hstripes":
            for i in range(n):
                self._patch(0, 1, (i + 0.5) / n, (i + 0.85) / n, second)
        elif app.pattern == "vstripes":
            for i in range(n):
                self._patch((i + 0.5) / n, (i + 0.85) / n, 0, 1, second)
        elif app.pattern == "zip" and self.view != "back":  # open jacket: the shirt shows
            u0, u1 = (0.8, 1.0) if self.view == "right" else (0.0, 0.2)
            self._patch(*((0.38, 0.62) if not self.side else (u0, u1)), 0, 1, second)
        elif app.pattern == "logo" and self.view == "front":  # chest print, hidden elsewhere
            x, y, r = self.cx, self.shoulder_y + 0.1 * h, 0.04 * h
            if app.logo_shape == 0:
                self.draw.ellipse((x - r, y - r, x + r, y + r), fill=second)
            elif app.logo_shape == 1:
                self.draw.rectangle((x - r * 1.3, y - r, x + r * 1.3, y + r), fill=second)
            else:  # a line of lettering
                for k in range(3):
                    y0 = y - r + k * r * 0.8
                    self.draw.rectangle((x - r * 1.5, y0, x + r * 1.5, y0 + r * 0.4), fill=second)

    def _carried(self) -> None:
        """Backpack (seen from behind and the side; only straps from the front) and bag."""
        app, cx, h, y, sw, ww = self.app, self.cx, self.h, self.shoulder_y, self.sw, self.ww
        if app.backpack is not None:
            if self.view == "back":
                box = (cx - sw * 0.75, y + 0.03 * h, cx + sw * 0.75, y + 0.3 * h)
                self.draw.rounded_rectangle(box, radius=0.03 * h, fill=app.backpack)
                flap = box[1] + 0.08 * h
                self.draw.line(
                    (box[0], flap, box[2], flap), fill=_shade(app.backpack, 0.7), width=2
                )
            elif self.side:
                x0, x1 = sorted((cx - self.face * (ww + 0.1 * h), cx - self.face * (ww - 0.02 * h)))
                box = (x0, y + 0.02 * h, x1, y + 0.3 * h)
                self.draw.rounded_rectangle(box, radius=0.03 * h, fill=app.backpack)
            else:
                for s in (-1, 1):
                    strap = (cx + s * sw * 0.55, y, cx + s * sw * 0.6, y + 0.22 * h)
                    self.draw.line(strap, fill=_shade(app.backpack, 0.7), width=int(0.02 * h) + 1)
        if app.bag is not None:
            hip = self.hip_y
            if not self.side:
                s = app.bag_side * (-1 if self.view == "back" else 1)
                strap = (cx - s * sw * 0.7, y, cx + s * ww, hip)
                self.draw.line(strap, fill=_shade(app.bag, 0.6), width=int(0.015 * h) + 1)
                bx = cx + s * (ww + 0.03 * h)
                box = (bx - 0.05 * h, hip - 0.06 * h, bx + 0.05 * h, hip + 0.05 * h)
                self.draw.rectangle(box, fill=app.bag)
            elif app.bag_side == self.face:  # on the near hip
                box = (cx - 0.04 * h, hip - 0.07 * h, cx + 0.06 * h, hip + 0.04 * h)
                self.draw.rectangle(box, fill=app.bag)

    def _arm(self, sign: float, angle: float, dim: float) -> None:
        app, h = self.app, self.h
        width, length = 0.058 * h * app.build, 0.37 * h
        start = (self.cx + sign * (self.sw - width * 0.4), self.shoulder_y + 0.01 * h)
        if self.side:
            sx, sy = math.sin(angle) * self.face, math.cos(angle)
            end = (start[0] + sx * length, start[1] + sy * length)
        else:  # a swing towards or away from the camera only shortens the arm
            end = (start[0] + sign * 0.025 * h, start[1] + length * (1 - 0.08 * abs(angle)))
        sleeve = [(0.92 if app.long_sleeves else 0.42, app.top), (1.0, app.skin)]
        self._limb(start, end, width, width * 0.75, [(t, _shade(c, dim)) for t, c in sleeve])
        r = width * 0.45
        self.draw.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), _shade(app.skin, dim))

    def _head(self) -> None:
        app, cx, h, top, hw, hh = self.app, self.cx, self.h, self.top, self.head_w, self.head_h
        neck = (cx - 0.022 * h, top + hh * 0.8, cx + 0.022 * h, self.shoulder_y + 0.01 * h)
        self.draw.rectangle(neck, fill=_shade(app.skin, 0.9))
        # Loose hair falls to the neck or past the shoulders; tied hair makes a knot instead.
        if app.hair_length and app.hair_style != 1:
            bottom = self.shoulder_y + (0.12 * h if app.hair_length == 2 else 0.0)
            if self.view == "back":
                spans = [(cx - hw * 0.55, cx + hw * 0.55)]
            elif self.side:
                spans = [tuple(sorted((cx - self.face * hw * 0.5, cx)))]
            else:  # strands either side of the face
                spans = [(cx - hw * 0.6, cx - hw * 0.32), (cx + hw * 0.32, cx + hw * 0.6)]
            for x0, x1 in spans:
                self.draw.rectangle((x0, top + hh * 0.5, x1, bottom), fill=app.hair)
        m = (0.025 if app.hair_style == 2 else 0.01) * h
        self.draw.ellipse((cx - hw / 2 - m, top - m, cx + hw / 2 + m, top + hh * 0.85), app.hair)
        if self.view == "front":
            self.draw.ellipse((cx - hw / 2, top + hh * 0.15, cx + hw / 2, top + hh), app.skin)
        elif self.side:
            fx = cx + self.face * hw * 0.18
            self.draw.ellipse((fx - hw * 0.4, top + hh * 0.18, fx + hw * 0.4, top + hh), app.skin)
        else:
            self.draw.ellipse((cx - hw / 2, top, cx + hw / 2, top + hh * 0.9), app.hair)
        if app.hair_style == 1 and self.view != "front":
            bx = cx - (self.face * hw * 0.55 if self.side else 0.0)
            by, r = top + hh * (0.5 if self.side else 0.75), hw * 0.25
            self.draw.ellipse((bx - r, by - r, bx + r, by + r), fill=_shade(app.hair, 0.8))
        eye_y = top + hh * 0.45
        if app.glasses and self.view != "back":
            if self.side:
                x0, x1 = sorted((cx + self.face * hw * 0.05, cx + self.face * hw * 0.55))
            else:
                x0, x1 = cx - hw * 0.42, cx + hw * 0.42
            self.draw.rectangle((x0, eye_y - 0.012 * h, x1, eye_y + 0.012 * h), (20, 20, 22))
        if app.hat is not None:
            box = (cx - hw * 0.6, top - hh * 0.1, cx + hw * 0.6, top + hh * 0.75)
            self.draw.chord(box, 180, 360, fill=app.hat)
            if self.side:  # cap peak
                x0, x1 = sorted((cx, cx + self.face * hw * 0.85))
                self.draw.rectangle(
                    (x0, top + hh * 0.25, x1, top + hh * 0.33), _shade(app.hat, 0.8)
                )


def _draw_person(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: _Camera, **kw) -> None:
    """A random passer-by with a random gait phase (bystanders and occluders)."""
    app, view = _sample_appearance(rng), _choose_view(rng, cam)
    _Painter(draw, app, view, rng.uniform(-1, 1), **kw).paint()


def _render(
    app: _Appearance, view: str, rng: np.random.Generator, cam: _Camera, junk: bool = False
) -> bytes:
    """One detection crop: backdrop, bystander, person, occluder, camera response; a JPEG.

    With ``junk`` the crop is a bad detection instead: mostly background next to the
    person, a zoomed-in body part, or a tiny far-away figure.
    """
    w, h = IMAGE_WIDTH * _SCALE, IMAGE_HEIGHT * _SCALE
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    horizon = _draw_background(draw, rng, cam)
    if rng.random() < 0.2:  # a smaller passer-by further back
        feet = horizon + rng.uniform(0.2, 0.4) * h
        _draw_person(
            draw, rng, cam, cx=w * rng.uniform(-0.3, 1.3), feet=feet, h=h * rng.uniform(0.4, 0.6)
        )
    height = h * rng.uniform(0.88, 0.98)
    cx, feet = w / 2 + rng.normal(0, 0.045 * w), h * rng.uniform(0.95, 1.0)
    if junk:
        kind = rng.integers(3)
        if kind == 0:
            cx = w * rng.choice([-0.45, 1.45]) + rng.normal(0, 0.08 * w)
        elif kind == 1:
            height *= rng.uniform(1.8, 3.0)
            feet = h + height * rng.uniform(0.0, 0.6)
        else:
            height *= rng.uniform(0.25, 0.45)
            cx, feet = w * rng.uniform(0.2, 0.8), h * rng.uniform(0.5, 0.95)
    elif rng.random() < 0.12:  # a loose detection cuts the person at the border
        if rng.random() < 0.5:
            cx += w * rng.choice([-1, 1]) * rng.uniform(0.2, 0.32)
        else:
            feet += h * rng.uniform(0.08, 0.18)
    r = 0.16 * height
    draw.ellipse((cx - r, feet - r / 8, cx + r, feet + r / 8), fill=_shade(cam.ground, 0.65))
    _Painter(draw, app, view, rng.uniform(-1, 1), cx, feet, height).paint()
    if rng.random() < 0.3:
        kind, colour = rng.integers(3), _jitter(rng, _pick(rng, _GEAR), 30)
        if kind == 0:  # car, bench or bin in front of the legs
            x, y = w * rng.uniform(-0.3, 0.5), h * rng.uniform(0.55, 0.8)
            draw.rectangle((x, y, x + w * rng.uniform(0.4, 0.9), h), fill=colour)
            draw.rectangle((x, y, x + w, y + 0.03 * h), fill=_shade(colour, 0.7))
        elif kind == 1:  # pole or tree in the line of sight
            x = w * rng.uniform(0.1, 0.8)
            draw.rectangle((x, 0, x + w * rng.uniform(0.06, 0.15), h), fill=colour)
        else:  # a nearer pedestrian at the edge of the box
            ox = w / 2 + w * rng.choice([-1, 1]) * rng.uniform(0.55, 0.8)
            _draw_person(
                draw, rng, cam, cx=ox, feet=h * rng.uniform(1.0, 1.1), h=h * rng.uniform(0.95, 1.1)
            )
    return _finish(canvas, rng, cam)


def _finish(canvas: Image.Image, rng: np.random.Generator, cam: _Camera) -> bytes:
    """Downscales, lights, applies the camera's response, blur and noise; encodes a JPEG."""
    img = canvas.resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BOX)
    x = np.asarray(img, dtype=np.float32)
    # Exposure plus a soft gradient: sun on one side of the crop, shade on the other.
    gx = np.linspace(-1, 1, IMAGE_WIDTH, dtype=np.float32)[None, :, None]
    gy = np.linspace(-1, 1, IMAGE_HEIGHT, dtype=np.float32)[:, None, None]
    light = rng.uniform(0.7, 1.25) * (
        1 + rng.uniform(-0.25, 0.25) * gx + rng.uniform(-0.1, 0.1) * gy
    )
    x = x * light * (np.array(cam.white_balance, dtype=np.float32) * cam.gain)
    grey = x.mean(axis=2, keepdims=True)
    x = np.clip(grey + (x - grey) * cam.saturation, 0, 255).astype(np.uint8)
    # Gamma and haze are per-channel curves: one lookup table instead of per-pixel powers.
    levels = (np.arange(256) / 255) ** cam.gamma
    curves = (levels[:, None] * (1 - cam.haze) + cam.haze * np.array(cam.haze_colour)) * 255
    img = Image.fromarray(curves.round().astype(np.uint8)[x, np.arange(3)])
    sigma = cam.blur * rng.uniform(0.6, 1.4)
    if sigma > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    # Mostly luminance noise with a little chroma, like a small CCTV sensor.
    size = (IMAGE_HEIGHT, IMAGE_WIDTH)
    noise = cam.noise * rng.standard_normal((*size, 1), dtype=np.float32)
    noise = noise + 0.3 * cam.noise * rng.standard_normal((*size, 3), dtype=np.float32)
    out = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(out).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def draw_pedestrians(
    num_identities: int, images_per_identity: int, seed: int = 0, num_cameras: int = 6
) -> list[tuple[int, Image.Image]]:
    """A few pedestrians drawn in memory, for checks that need person crops but no dataset.

    Identity ``pid`` (``1..num_identities``) is one appearance seen in
    ``images_per_identity`` crops under random cameras of ``seed``'s camera set, drawn
    like the dataset's but from a stream of their own. The same arguments give the same
    pixels (for given numpy and Pillow versions).

    Returns:
        ``[(pid, RGB image of IMAGE_HEIGHT x IMAGE_WIDTH)]``, identity by identity.

    Raises:
        ReidError: a count below 1, ``num_cameras`` outside 1..9 or a negative seed.
    """
    if num_identities < 1 or images_per_identity < 1 or not 1 <= num_cameras <= 9 or seed < 0:
        raise ReidError(
            f"draw_pedestrians: got num_identities={num_identities}, "
            f"images_per_identity={images_per_identity}, num_cameras={num_cameras}, "
            f"seed={seed}; expected >= 1, >= 1, 1..9 and >= 0"
        )
    cameras = _camera_styles(seed, num_cameras)
    drawn = []
    for pid in range(1, num_identities + 1):
        rng = np.random.default_rng((seed, _IN_MEMORY, pid))
        appearance = _sample_appearance(rng)
        for _ in range(images_per_identity):
            cam = cameras[int(rng.integers(num_cameras))]
            jpeg = _render(appearance, _choose_view(rng, cam), rng, cam)
            drawn.append((pid, Image.open(io.BytesIO(jpeg)).convert("RGB")))
    return drawn


@dataclass(frozen=True)
class _Task:
    kind: int  # _IDENTITY, _DISTRACTOR or _JUNK
    index: int  # pid, or batch number
    out_dir: str
    seed: int
    cameras: tuple[_Camera, ...]
    test: bool = False  # identities: split into query and gallery
    count: int = 0  # batches: images to draw


def _plan_tasks(
    out_dir: Path, seed: int, cameras: tuple[_Camera, ...], num_identities: int
) -> list[_Task]:
    """One task per identity (first half train), then distractor and junk batches."""
    common = {"out_dir": str(out_dir), "seed": seed, "cameras": cameras}
    num_train = num_identities // 2
    tasks = [
        _Task(_IDENTITY, pid, test=pid > num_train, **common)
        for pid in range(1, num_identities + 1)
    ]
    # Distractors make about one gallery image in seven, as in Market-1501; junk crops are
    # fewer than Market's, since evaluation drops them anyway.
    num_test = num_identities - num_train
    for kind, total in ((_DISTRACTOR, 2 * num_test), (_JUNK, num_test)):
        for k, start in enumerate(range(0, total, _BATCH)):
            tasks.append(_Task(kind, k, count=min(_BATCH, total - start), **common))
    return tasks


def _run_task(task: _Task) -> list[str]:
    """Draws and writes one identity or one batch; returns paths relative to ``out_dir``."""
    rng = np.random.default_rng((task.seed, task.kind, task.index))
    cams, written = task.cameras, []

    def write(split: str, name: str, data: bytes) -> None:
        (Path(task.out_dir) / split / name).write_bytes(data)
        written.append(f"{split}/{name}")

    if task.kind != _IDENTITY:
        pid = "0000" if task.kind == _DISTRACTOR else "-1"
        for j in range(task.count):
            cam = int(rng.integers(len(cams)))
            data = _render(_sample_appearance(rng), _choose_view(rng, cams[cam]), rng, cams[cam],
                           junk=task.kind == _JUNK)  # fmt: skip
            frame = task.index * _BATCH + j + 1
            write(SPLIT_DIRS[2], f"{pid}_c{cam + 1}s1_{frame:06d}_00.jpg", data)
        return written
    app = _sample_appearance(rng)
    num_cams = int(rng.integers(2, len(cams) + 1))
    chosen = np.sort(rng.choice(len(cams), size=num_cams, replace=False))
    total = max(int(rng.integers(12, 21)), 2 * num_cams)
    # Two images or more per camera: a test camera keeps one after giving its query.
    counts = 2 + rng.multinomial(total - 2 * num_cams, rng.dirichlet(np.ones(num_cams)))
    frame = int(rng.integers(1, 900_000))
    for cam, count in zip(chosen, counts, strict=True):
        # Under one camera people mostly walk one way: one usual viewpoint per camera.
        usual_view, query_slot = _choose_view(rng, cams[cam]), int(rng.integers(count))
        for j in range(count):
            view = usual_view if rng.random() < 0.7 else _choose_view(rng, cams[cam])
            data = _render(app, view, rng, cams[cam])
            frame += int(rng.integers(1, 120))
            split = SPLIT_DIRS[(1 if j == query_slot else 2) if task.test else 0]
            write(split, f"{task.index:04d}_c{cam + 1}s1_{frame:06d}_00.jpg", data)
    return written


def _split_counts(paths: list[str]) -> dict[str, dict[str, int]]:
    """Images, identities, distractors, junk and cameras per split folder."""
    counts = {}
    for split in SPLIT_DIRS:
        names = [p.split("/")[1] for p in paths if p.startswith(split + "/")]
        pids = [int(n.split("_")[0]) for n in names]
        counts[split] = {
            "images": len(names),
            "identities": len({p for p in pids if p > 0}),
            "distractors": pids.count(0),
            "junk": pids.count(-1),
            "cameras": len({n.split("_")[1].split("s")[0] for n in names}),
        }
    return counts


def _is_complete(root: Path, arguments: dict) -> bool:
    """True if ``root`` holds exactly this set, False if it is missing or empty.

    Raises:
        ReidError: ``root`` holds anything else; it is never deleted.
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise ReidError(f"{root}: is a file; expected a folder for the synthetic dataset")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        if any(root.iterdir()):
            raise ReidError(
                f"{root}: not empty and has no {MANIFEST}; expected an empty or missing folder "
                "for the synthetic dataset"
            )
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        found = {"version": manifest["version"], **manifest["arguments"]}
        counts = manifest["counts"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ReidError(f"{manifest_path}: unreadable manifest ({exc!r})") from exc
    expected = {"version": GENERATOR_VERSION, **arguments}
    if found != expected:
        raise ReidError(
            f"{root}: holds a synthetic set made with {found}, expected {expected}; "
            "use another root or delete this one"
        )
    for split in SPLIT_DIRS:
        on_disk = len(list((root / split).glob("*.jpg")))
        if on_disk != counts[split]["images"]:
            raise ReidError(
                f"{root / split}: {on_disk} images, expected {counts[split]['images']} as "
                f"listed in {MANIFEST}; delete the folder to regenerate it"
            )
    return True


def generate_synthetic(
    root: str | Path, num_identities: int = 300, num_cameras: int = 6, seed: int = 0,
    num_workers: int = 2,
) -> Path:  # fmt: skip
    """Writes a Market-1501-layout folder of synthetic pedestrians at ``root`` and returns it.

    Identities ``1..num_identities // 2`` train, the rest test. Each identity is seen by 2 or
    more cameras, 12-20 images in all. A test identity gives one query image per camera it
    appears in; its other images, ``0000`` distractors and ``-1`` junk crops form the
    gallery. Images are 128x64 (HxW) JPEGs named ``PPPP_cCs1_FFFFFF_00.jpg``.

    The set is drawn in a temporary sibling folder, its ``synthetic.json`` manifest written
    last, then renamed into place, so ``root`` is either complete or absent. A ``root``
    already holding the set made with the same arguments is returned untouched.

    Args:
        root: output folder; created, with its parents.
        num_identities: identities in all, at least 2.
        num_cameras: 2 to 9 (Market names hold a one-digit camera).
        seed: non-negative; the same arguments give byte-identical files.
        num_workers: processes to draw with; the output does not depend on it.

    Returns:
        ``root`` as a Path.

    Raises:
        ReidError: bad arguments, or ``root`` holds something other than this exact set.
    """
    root = Path(root)
    if num_identities < 2 or not 2 <= num_cameras <= 9 or seed < 0 or num_workers < 1:
        raise ReidError(
            f"generate_synthetic: got num_identities={num_identities}, num_cameras={num_cameras}, "
            f"seed={seed}, num_workers={num_workers}; expected >= 2, 2..9, >= 0 and >= 1"
        )
    arguments = {"num_identities": num_identities, "num_cameras": num_cameras, "seed": seed}
    if _is_complete(root, arguments):
        logger.info("Synthetic dataset found at %s", root)
        return root

    start = time.perf_counter()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        counts = _draw(tmp, root, arguments, num_workers)
    except OSError as err:
        raise ReidError(
            f"cannot write the synthetic dataset at {root}: {err.strerror or err}"
        ) from None
    if counts is None:
        return root
    train, query, gallery = (counts[split] for split in SPLIT_DIRS)
    logger.info(
        "Generated synthetic dataset at %s in %.1fs: train %d ids / %d images, query %d ids / "
        "%d images, gallery %d ids / %d images (%d distractors, %d junk), %d cameras",
        root, time.perf_counter() - start, train["identities"], train["images"],
        query["identities"], query["images"], gallery["identities"], gallery["images"],
        gallery["distractors"], gallery["junk"], num_cameras,
    )  # fmt: skip
    return root


def _draw(tmp: Path, root: Path, arguments: dict, num_workers: int) -> dict | None:
    """Draws the set into ``tmp`` and renames it to ``root``.

    Returns:
        The per-split counts, or None when another process wrote ``root`` first.
    """
    seed = arguments["seed"]
    try:
        for split in SPLIT_DIRS:
            (tmp / split).mkdir()
        styles = _camera_styles(seed, arguments["num_cameras"])
        tasks = _plan_tasks(tmp, seed, styles, arguments["num_identities"])
        written: list[str] = []
        with tqdm(total=len(tasks), desc="drawing synthetic pedestrians", unit="task") as bar:
            if num_workers == 1:
                for task in tasks:
                    written += _run_task(task)
                    bar.update()
            else:
                # fork on Linux: callers need no __main__ guard, and the workers run only
                # numpy and PIL code, never the libraries behind the parent's threads (torch).
                method = "fork" if sys.platform.startswith("linux") else "spawn"
                with multiprocessing.get_context(method).Pool(num_workers) as pool:
                    for files in pool.imap_unordered(_run_task, tasks, chunksize=4):
                        written += files
                        bar.update()
        counts = _split_counts(written)
        manifest = {
            "generator": __name__,
            "version": GENERATOR_VERSION,
            "arguments": arguments,
            "image_size": [IMAGE_HEIGHT, IMAGE_WIDTH],
            "software": {"numpy": np.__version__, "pillow": PIL.__version__},
            "counts": counts,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            if root.is_dir():
                root.rmdir()  # empty, checked above; rename cannot replace a folder everywhere
            os.rename(tmp, root)
        except OSError:
            # Another process (another DDP rank, say) may have finished the same set first.
            if not _is_complete(root, arguments):
                raise
            logger.info("Synthetic dataset at %s was written by another process", root)
            return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts
