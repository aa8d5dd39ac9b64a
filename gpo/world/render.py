"""Ground-truth renderer: draws the image a prompt asks for, with its labels (boxes, text).

Drawn at `supersample`× the target size, then reduced with a box filter, so edges are anti-aliased
like a generated image's. Everything is deterministic from the seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from gpo.env import font_path
from gpo.prompts import Prompt

# RGB of the world's colour words. Saturated and dark enough to read on the light backgrounds.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "green": (30, 150, 55),
    "blue": (35, 70, 215),
    "purple": (135, 45, 170),
    "orange": (235, 120, 20),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")


@dataclass
class Box:
    cls: str
    x0: float
    y0: float
    x1: float
    y1: float  # pixel coordinates in the final image


@dataclass
class Rendered:
    image: Image.Image
    boxes: list[Box] = field(default_factory=list)  # counting: one per drawn object
    text: str | None = None  # text: the word drawn


@dataclass(frozen=True)
class RenderSpec:
    """The world's difficulty knobs (all sizes are in final-image pixels)."""

    size: int = 32  # side of the square image
    supersample: int = 4  # drawing resolution multiplier
    min_object: float = 6.0  # smallest shape side
    max_object: float = 10.0  # largest shape side
    gap: float = 1.0  # minimum free space between two shapes' boxes
    text_height: float = 0.45  # cap height of the word as a share of the image side
    text_jitter: float = 1.0  # max random shift of the word's centre, pixels
    background_min: int = 205  # backgrounds are light: each channel uniform in [min, 255]


def background(rng: random.Random, spec: RenderSpec) -> tuple[int, int, int]:
    return tuple(rng.randint(spec.background_min, 255) for _ in range(3))  # type: ignore[return-value]


def _place(rng: random.Random, n: int, spec: RenderSpec) -> list[tuple[float, float, float]]:
    """Non-overlapping squares (x, y, side) inside the image; retries from scratch when stuck."""
    for _ in range(200):
        placed: list[tuple[float, float, float]] = []
        for _ in range(n):
            for _ in range(100):
                s = rng.uniform(spec.min_object, spec.max_object)
                x, y = rng.uniform(0.5, spec.size - s - 0.5), rng.uniform(0.5, spec.size - s - 0.5)
                if all(x + s + spec.gap <= px or px + ps + spec.gap <= x or
                       y + s + spec.gap <= py or py + ps + spec.gap <= y for px, py, ps in placed):
                    placed.append((x, y, s))
                    break
            else:
                break
        if len(placed) == n:
            return placed
    raise ValueError(f"cannot place {n} shapes of side {spec.min_object}-{spec.max_object} px "
                     f"in a {spec.size}px image; lower the count or the object size")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, s: float,
                color: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=color)
    elif shape == "square":
        draw.rectangle([x, y, x + s, y + s], fill=color)
    elif shape == "triangle":
        draw.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}; the world draws {SHAPES}")


def render_counting(prompt: Prompt, seed: int, spec: RenderSpec = RenderSpec()) -> Rendered:
    """`prompt.count` shapes of `prompt.cls` in `prompt.color` at random sizes and places."""
    rng = random.Random(seed)
    k = spec.supersample
    img = Image.new("RGB", (spec.size * k, spec.size * k), background(rng, spec))
    draw = ImageDraw.Draw(img)
    color = COLORS[prompt.color or "black"]
    boxes = []
    for x, y, s in _place(rng, int(prompt.count or 0), spec):
        _draw_shape(draw, prompt.cls or "", x * k, y * k, s * k, color)
        boxes.append(Box(prompt.cls or "", x, y, x + s, y + s))
    return Rendered(img.resize((spec.size, spec.size), Image.Resampling.BOX), boxes=boxes)


@lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(bold=True)), px)


def render_text(prompt: Prompt, seed: int, spec: RenderSpec = RenderSpec()) -> Rendered:
    """The word in dark bold capitals, centred (± jitter) on a light background."""
    rng = random.Random(seed)
    k = spec.supersample
    side = spec.size * k
    img = Image.new("RGB", (side, side), background(rng, spec))
    draw = ImageDraw.Draw(img)
    word = (prompt.word or "").upper()
    font = _font(max(4, round(spec.text_height * side / 0.73)))  # DejaVu cap height ≈ 0.73 em
    x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font)
    scale = min(1.0, 0.94 * side / max(1, x1 - x0))  # shrink long words to fit the width
    if scale < 1.0:
        font = _font(max(4, math.floor(font.size * scale)))
        x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font)
    jx, jy = (rng.uniform(-spec.text_jitter, spec.text_jitter) * k for _ in range(2))
    ox, oy = (side - (x1 - x0)) / 2 - x0 + jx, (side - (y1 - y0)) / 2 - y0 + jy
    ink = tuple(rng.randint(0, 50) for _ in range(3))
    draw.text((ox, oy), word, font=font, fill=ink)
    box = Box("text", (ox + x0) / k, (oy + y0) / k, (ox + x1) / k, (oy + y1) / k)
    return Rendered(img.resize((spec.size, spec.size), Image.Resampling.BOX), boxes=[box], text=word)


def render(prompt: Prompt, seed: int, spec: RenderSpec = RenderSpec()) -> Rendered:
    """Ground truth for any prompt of the embedded world."""
    return render_counting(prompt, seed, spec) if prompt.task == "counting" else render_text(prompt, seed, spec)
