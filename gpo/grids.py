"""Sample grids of an evaluation: each tile shows what was asked and what the reward model found, and is
framed green (the reward model calls it right), red (wrong) or grey (the reward model failed on it).

The grids are written by the evaluation (gpo/calibrate.py `evaluate_model`: `<name>_<task>_grid.png`),
copied to round 0 for the base and logged to every round's MLflow run under `grids/`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from gpo.io import atomic_write

RIGHT, WRONG, FAILED = (26, 152, 80), (215, 48, 39), (150, 150, 150)  # frame colours
BORDER = 3  # frame width, pixels
MAX_TILE = 256  # a tile's image side at most (real models' 512-1024 px images are shown smaller)


def asked_found(row: dict) -> tuple[str, str]:
    """('asked 3', 'found 2') for counting, ('asked CAT', 'read CAI') for text, from a score-table row
    (gpo/evaluate.py `score_table`: task, count, word, raw, error)."""
    failed = isinstance(row.get("error"), str) and bool(row["error"])
    raw = "" if row.get("raw") is None or (isinstance(row["raw"], float) and math.isnan(row["raw"])) else str(row["raw"])
    if row["task"] == "counting":
        asked = f"asked {int(row['count'])}" if row.get("count") is not None and not pd.isna(row["count"]) else "asked ?"
        found = "found ?" if failed else ("found " + (raw[2:] if raw.startswith("k=") else raw))
    else:
        asked = f"asked {row.get('word') or '?'}"
        found = "read: failed" if failed else f"read {raw if raw.strip() else '(nothing)'}"
    return asked, found


def verdict(row: dict) -> str:
    """right, wrong or failed: what the frame colour says."""
    if isinstance(row.get("error"), str) and row["error"]:
        return "failed"
    return "right" if bool(row.get("correct")) else "wrong"


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut (with an ellipsis) to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _mark(draw: ImageDraw.ImageDraw, x: int, y: int, size: int, kind: str) -> None:
    """A tick (right), a cross (wrong) or a dash (failed), drawn as lines (no glyph needed)."""
    colour = {"right": RIGHT, "wrong": WRONG, "failed": FAILED}[kind]
    s = size
    if kind == "right":
        draw.line([(x, y + s * 0.55), (x + s * 0.38, y + s * 0.9), (x + s, y + s * 0.1)], fill=colour, width=2)
    elif kind == "wrong":
        draw.line([(x + 1, y + 1), (x + s - 1, y + s - 1)], fill=colour, width=2)
        draw.line([(x + 1, y + s - 1), (x + s - 1, y + 1)], fill=colour, width=2)
    else:
        draw.line([(x + 1, y + s / 2), (x + s - 1, y + s / 2)], fill=colour, width=2)


def judged_grid(images: Sequence[Image.Image], rows: pd.DataFrame | Sequence[dict], path: Path, cols: int = 8,
                scale: int = 3, title: str = "") -> Path:
    """A contact sheet of judged images: per tile the image in a frame (green right, red wrong, grey
    failed), under it 'asked …' and 'found …' / 'read …' with a tick or cross; a header line with the
    title, the legend and the count right. `rows`: the images' score-table rows, in order. Written
    atomically as PNG."""
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    if len(records) != len(images) or not images:
        raise ValueError(f"one score row per image: {len(images)} images, {len(records)} rows")
    w0, h0 = images[0].size
    f = min(scale, max(1, MAX_TILE // max(w0, h0)))
    w, h = w0 * f, h0 * f
    font = ImageFont.load_default(size=10)
    line = 12
    tile_w, tile_h = w + 2 * BORDER + 4, h + 2 * BORDER + 2 * line + 6
    cols = max(1, min(cols, len(images)))
    n_rows = (len(images) + cols - 1) // cols
    header = 2 * line + 6
    sheet = Image.new("RGB", (cols * tile_w, header + n_rows * tile_h), "white")
    draw = ImageDraw.Draw(sheet)
    kinds = [verdict(r) for r in records]
    right = kinds.count("right")
    head = f"{title}: " if title else ""
    draw.text((4, 2), _fit(draw, f"{head}{right} of {len(kinds)} right (reward model)", font, sheet.width - 8),
              fill="black", font=font)
    draw.text((4, 2 + line), _fit(draw, "frame: green right, red wrong, grey failed; under each: asked vs found",
                                  font, sheet.width - 8), fill=(90, 90, 90), font=font)
    for i, (im, row, kind) in enumerate(zip(images, records, kinds)):
        x, y = (i % cols) * tile_w + 2, header + (i // cols) * tile_h
        colour = {"right": RIGHT, "wrong": WRONG, "failed": FAILED}[kind]
        draw.rectangle([x, y, x + w + 2 * BORDER - 1, y + h + 2 * BORDER - 1], fill=colour)
        sheet.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (x + BORDER, y + BORDER))
        asked, found = asked_found(row)
        ty = y + h + 2 * BORDER + 1
        text_w = w + 2 * BORDER - 12
        draw.text((x, ty), _fit(draw, asked, font, text_w), fill="black", font=font)
        draw.text((x, ty + line), _fit(draw, found, font, text_w), fill=colour if kind != "right" else "black", font=font)
        _mark(draw, x + w + 2 * BORDER - 10, ty + line + 1, 9, kind)
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
