"""The second opinion: a scorer of the embedded world that shares nothing with the reward models.

GPO trains against YOLO (counting) and EasyOCR (text); a model can learn to please them rather than to
count and to spell. This scorer is never trained on (it scores held-out images only, see
`gpo.evaluate.Scorers`) and uses no network at all, only classical image analysis of the world's images:

- counting: the background colour is estimated from the image's border, pixels far from it are the
  foreground, 4-connected components of the foreground are the objects (blobs that are too large for
  one object are split by watershed on the distance transform), and each object is classed as a
  triangle by how little of its bounding box it fills (1/2 for the ideal triangle, π/4 for a circle, 1 for
  a square), else as a square or a circle by whether the corners of its box are inside it (a square's are,
  a circle's are not: on generated images this drifts far less than the fill when a model draws its
  shapes softer, though a strong blur still turns some circles into squares: docs/second_opinion.md);
- text: normalised cross-correlation of the image, at sub-pixel shifts (±1 px in quarter pixels), with every string of the word's
  length drawn by the world's own renderer (`gpo.world.render.render_text`, DejaVu Sans Bold, the
  same size rule): the reading is the best-matching string, so it can be any letters, not only the
  prompt's word.

Its scores use the reward arithmetic of gpo/rewards/arith.py (`counting_score`, `ocr_score`), so its
accuracy and mean reward compare one to one with the reward models'. It returns None for a prompt it
cannot judge (a class that is not one of the world's shapes, a word that is not 1–3 letters A–Z) or
for an image that is not of the world's size; those images are left out of its metrics. Chosen and
calibrated by measurement: `python benchmarks/second_opinion.py` (docs/second_opinion.md).
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from gpo.params import RenderParams
from gpo.prompts import Prompt
from gpo.rewards.arith import Score, counting_score, ocr_score
from gpo.world.render import COLORS, SHAPES, RenderSpec, _font, render_text

MAX_WORD = 3  # every string of up to this many letters is a template (26³ = 17,576 at three)


def default_spec() -> RenderSpec:
    """The workspace's render settings (params/world.yaml `render`; the defaults where there is no such
    file). Templates drawn with other settings than the images' would misread every word."""
    from gpo import params as P
    from gpo.env import workspace

    path = workspace() / "params" / "world.yaml"
    render = P.load(path, P.WorldParams).render if path.exists() else RenderParams()
    return RenderSpec(**render.model_dump())


@dataclass(frozen=True)
class CountSettings:
    """The counting method's knobs (chosen on rendered training prompts, benchmarks/second_opinion.py)."""

    border: int = 2  # width of the image border whose median colour is the background
    threshold: float = 0.6  # foreground: colour distance from the background ≥ this share of the shape's
    min_area: int = 6  # smaller components are noise, not objects (a 6 px shape covers ~ 25 px)
    ref_distance: float = 180.0  # the shape's colour distance when the prompt names no world colour
    split: bool = True  # split components too large for one object (watershed on the distance transform)
    circle_fill: float = 0.69  # bounding-box fill below this: triangle; else square or circle by the corners
    # the box corners' mean coverage over the object's median coverage ≥ this: square, else circle (generated
    # circles ~0.03, squares ~0.75, base and fine-tunes alike; rendered circles ≤ 0.375, the small ones'
    # anti-aliased corners, rendered squares ≥ 0.56: benchmarks/results/second_opinion.md)
    square_corner: float = 0.4


@dataclass(frozen=True)
class Blob:
    shape: str
    area: int
    fill: float
    corner: float  # coverage at the box corners over the object's median coverage (square ≈ 1, circle ≈ 0)
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def border_ring(arr: np.ndarray, border: int) -> np.ndarray:
    """The pixels (N, 3) of the image's outer `border` rows and columns, each once."""
    b = border
    return np.concatenate([arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3),
                           arr[b:-b, :b].reshape(-1, 3), arr[b:-b, -b:].reshape(-1, 3)])


def background(arr: np.ndarray, border: int) -> np.ndarray:
    """Median colour of the image border (objects cover little of it)."""
    return np.median(border_ring(arr, border), axis=0)


def foreground(arr: np.ndarray, s: CountSettings, color: tuple[int, int, int] | None = None) -> np.ndarray:
    """Soft foreground in [0, 1]: colour distance from the background over the requested colour's distance
    from it (`ref_distance` with no colour). Any colour counts, as for the detector: the colour only sets
    the scale, so an empty image stays empty."""
    bg = background(arr, s.border)
    dist = np.linalg.norm(arr - bg, axis=2)
    ref = float(np.linalg.norm(np.asarray(color, np.float32) - bg)) if color is not None else s.ref_distance
    return np.clip(dist / max(ref, 1.0), 0.0, 1.0)


def _shape(fill: float, corner: float, s: CountSettings) -> str:
    if fill < s.circle_fill:
        return "triangle"
    return "square" if corner >= s.square_corner else "circle"


def _corner(soft: np.ndarray, comp: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean soft coverage at the four corner pixels of the component's box, over its median coverage.
    The corners read the whole image: a corner on a touching neighbour counts (a circle pressed against
    another object reads higher), which keeps touching squares squares. Removing the neighbours' pixels
    was measured and lost: 3–4 % of the generated squares read as circles, against ≤ 0.5 % this way."""
    y0, x0, y1, x1 = box
    corners = soft[[y0, y0, y1 - 1, y1 - 1], [x0, x1 - 1, x0, x1 - 1]]
    return float(corners.mean() / max(float(np.median(soft[comp])), 1e-3))


def _split(mask: np.ndarray) -> list[np.ndarray]:
    """A component too large for one object, cut by watershed from its distance-transform peaks."""
    from skimage.segmentation import watershed

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    peaks = (dist == ndimage.maximum_filter(dist, size=5)) & (dist >= 2.0) & mask
    markers, n = ndimage.label(peaks, structure=np.ones((3, 3)))
    if n < 2:
        return [mask]
    labels = watershed(-dist, markers, mask=mask)
    return [labels == i for i in range(1, n + 1)]


def blobs(image: Image.Image, s: CountSettings = CountSettings(),
          color: tuple[int, int, int] | None = None) -> list[Blob]:
    """The objects of a counting image: components of the thresholded foreground, classed by their box fill
    (triangles) and box corners (squares, circles)."""
    soft = foreground(_rgb(image), s, color)
    mask = soft >= s.threshold
    labels, n = ndimage.label(mask)
    out: list[Blob] = []
    parts: list[np.ndarray] = []
    for i in range(1, n + 1):
        comp = labels == i
        if comp.sum() < s.min_area:
            continue
        parts.append(comp)
    if s.split and parts:
        typical = float(np.median([p.sum() for p in parts]))
        parts = [q for p in parts for q in (_split(p) if p.sum() > 1.6 * max(typical, 36.0) else [p])]
    taken = np.zeros_like(mask)
    for comp in parts:
        taken |= comp
    for comp in parts:
        ys, xs = np.nonzero(comp)
        if len(ys) < s.min_area:
            continue
        # the object with its anti-aliased rim (the ring around it that no other object holds): soft area
        # over the soft extents (per column / row, the largest coverage), exact for box-filtered shapes
        region = soft * (ndimage.binary_dilation(comp) & ~(taken & ~comp))
        width, height = region.max(axis=0).sum(), region.max(axis=1).sum()
        fill = float(region.sum() / max(width * height, 1e-6))
        box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
        corner = _corner(soft, comp, box)
        out.append(Blob(_shape(fill, corner, s), int(len(ys)), fill, corner, box))
    return out


def count(image: Image.Image, cls: str, s: CountSettings = CountSettings(), color: str | None = None) -> int:
    """Objects of shape `cls` in the image (`color`: a world colour word, sets the foreground's scale)."""
    return sum(b.shape == cls for b in blobs(image, s, COLORS.get(color or "")))


# --- text --------------------------------------------------------------------------------------------
def _gray(images: Sequence[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("L"), dtype=np.float32) for im in images])


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows made zero-mean, unit-norm (flat rows stay zero)."""
    x = x - x.mean(axis=-1, keepdims=True)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-6)


@lru_cache(maxsize=4)
def templates(length: int, spec: RenderSpec) -> tuple[tuple[str, ...], np.ndarray]:
    """Every string of `length` capitals as the world's renderer draws it (centred, no jitter), as
    zero-mean unit-norm grey vectors. Drawn in order of width so the font cache is reused (≈ 7 s at 3)."""
    flat = RenderSpec(**{**spec.__dict__, "text_jitter": 0.0})
    words = ["".join(t) for t in itertools.product(string.ascii_uppercase, repeat=length)]
    font = _font(max(4, round(spec.text_height * spec.size * spec.supersample / 0.73)))
    words.sort(key=font.getlength)
    rows = [np.asarray(render_text(Prompt(text=w, task="text", split="train", word=w), 0, flat).image.convert("L"),
                       dtype=np.float32).ravel() for w in words]
    return tuple(words), _unit(np.stack(rows)).astype(np.float32)


def _shifted(gray: np.ndarray, radius: float, step: float) -> np.ndarray:
    """Each image moved by every (dy, dx) on a grid of `step` px within ±radius (cubic-spline
    interpolation, edges replicated): (images, shifts, pixels). The renderer jitters words by up to
    ±1 px at sub-pixel steps; a template a fraction of a pixel off confuses O with Q, P with F."""
    n, h, w = gray.shape
    offsets = np.arange(-radius, radius + 1e-9, step)
    out = [np.stack([ndimage.shift(g, (dy, dx), order=3, mode="nearest") for g in gray]).reshape(n, -1)
           for dy in offsets for dx in offsets]
    return np.stack(out, axis=1)


def read(images: Sequence[Image.Image], length: int, spec: RenderSpec, radius: float = 1.0,
         step: float = 0.25) -> list[tuple[str, float]]:
    """(reading, its correlation) per image: the best-matching string of `length` capitals."""
    words, tmpl = templates(length, spec)
    out = []
    for start in range(0, len(images), 16):
        batch = _gray([im.resize((spec.size, spec.size), Image.Resampling.BOX) if im.size != (spec.size, spec.size)
                       else im for im in images[start:start + 16]])  # (the scorer only passes world-sized ones)
        shifted = _unit(_shifted(batch, radius, step)).astype(np.float32)  # (b, shifts, pixels)
        corr = shifted @ tmpl.T  # (b, shifts, words)
        best = corr.max(axis=1)
        idx = best.argmax(axis=1)
        out += [(words[i], float(best[k, i])) for k, i in enumerate(idx)]
    return out


# --- the scorer --------------------------------------------------------------------------------------
def judgeable(p: Prompt) -> bool:
    """Whether the second opinion can score this prompt (world shapes; words of 1–3 letters A–Z)."""
    if p.task == "counting":
        return p.cls in SHAPES and p.count is not None and p.count >= 1
    word = (p.word or "").upper()
    return 1 <= len(word) <= MAX_WORD and all(c in string.ascii_uppercase for c in word)


class SecondOpinion:
    """`score(images, prompts) -> list[Score | None]` by the classical methods above (None: not judgeable)."""

    name = "classical (components + template matching)"

    def __init__(self, spec: RenderSpec | None = None, counting: CountSettings = CountSettings(),
                 radius: float = 1.0, step: float = 0.25):
        self.spec = spec or default_spec()
        self.counting = counting
        self.radius, self.step = radius, step  # text: shifts tried, ±radius px in steps of `step`

    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score | None]:
        out: list[Score | None] = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        side = (self.spec.size, self.spec.size)
        for i, (im, p) in enumerate(zip(images, prompts)):
            if not judgeable(p) or im.size != side:  # not the world's prompt or image size: no opinion
                continue
            if p.task == "counting":
                out[i] = counting_score(count(im, p.cls or "", self.counting, p.color), int(p.count or 0))
            else:
                by_length.setdefault(len(p.word or ""), []).append(i)
        for length, idx in by_length.items():
            for i, (word, _) in zip(idx, read([images[i] for i in idx], length, self.spec, self.radius, self.step)):
                out[i] = ocr_score(word, prompts[i].word or "")
        return out
