"""Calibration of the counting detector's confidence threshold τ on a labelled folder.

The counting reward asks "are there exactly n objects of class c?", so τ is chosen to maximise
exact-count accuracy over (image, class) pairs, not mAP. The folder holds images with either

- YOLO labels: `x.png` ↔ `x.txt` (same folder) or `.../images/.../x.png` ↔ `.../labels/.../x.txt`
  (the ultralytics layout), one `class cx cy w h` row per object; an image without a label file is
  a background image (no pair); or
- `counts.csv` at the folder root: columns `image,class,count` (class = name or id; image relative
  to the folder), one row per (image, class) pair to check.

Each class present in an image's labels is one pair (true count ≥ 1): what a counting prompt asks.
The detector runs once at the lowest threshold; every τ of the sweep is then a filter on confidence
(exact: see `Detector.detections`). Ties go to the middle of the best plateau (the least sensitive
choice). The result is a JSON report; set the chosen τ as rewards.yaml `detector.conf`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from gpo.errors import GpoError
from gpo.io import atomic_write_json
from gpo.metrics import accuracy
from gpo.rewards.detector import Detector

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Labelled:
    """One image and the true number of objects of each class it is checked for."""

    path: Path
    counts: dict[int, int]  # detector class id -> true count (>= 0 with counts.csv, >= 1 from labels)


def default_thresholds() -> list[float]:
    return [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 .. 0.95


def _label_file(image: Path) -> Path | None:
    beside = image.with_suffix(".txt")
    if beside.exists():
        return beside
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):  # the last `images` folder of the path, as ultralytics does
        if parts[i] == "images":
            candidate = Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
            return candidate if candidate.exists() else None
    return None


def _class_id(value: str, names: dict[int, str], where: str) -> int:
    v = value.strip()
    if v.isdigit() and int(v) in names:
        return int(v)
    for i, n in names.items():
        if n == v:
            return i
    raise GpoError(f"class {v!r} is not a class of the detector", file=where, field="class", value=v,
                   fix=f"use a class id 0..{max(names)} or one of its names ({', '.join(list(names.values())[:10])}, ...)")


def read_yolo_labels(path: Path, names: dict[int, str]) -> dict[int, int]:
    """Objects per class id in a YOLO label file (rows `class cx cy w h`, normalised)."""
    counts: dict[int, int] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) < 5:
                raise ValueError(f"expected 'class cx cy w h', got {len(fields)} fields")
            box = [float(v) for v in fields[1:5]]
            if not all(0.0 <= v <= 1.0 for v in box):
                raise ValueError(f"box values must be normalised to [0, 1], got {box}")
        except ValueError as err:
            raise GpoError(f"malformed YOLO label row: {err}", file=f"{path}:{n}", value=line[:120],
                           fix="write one 'class cx cy w h' row per object, coordinates in [0, 1]") from None
        cid = _class_id(fields[0], names, f"{path}:{n}")
        counts[cid] = counts.get(cid, 0) + 1
    return counts


def read_counts_csv(path: Path, names: dict[int, str]) -> list[Labelled]:
    """Pairs from counts.csv (image,class,count); rows of the same image are merged."""
    by_image: dict[Path, dict[int, int]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "class", "count"} <= set(reader.fieldnames):
            raise GpoError("counts.csv needs the columns image,class,count", file=str(path),
                           value=reader.fieldnames, fix="write a header row: image,class,count")
        for n, row in enumerate(reader, start=2):
            where = f"{path}:{n}"
            image = path.parent / (row["image"] or "").strip()
            if not row["image"] or not image.is_file():
                raise GpoError("image of a counts.csv row not found", file=where, field="image", value=row["image"],
                               fix="give the image path relative to the folder holding counts.csv")
            try:
                count = int(row["count"])
                if count < 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise GpoError("count must be an integer >= 0", file=where, field="count", value=row["count"],
                               fix="write the true number of objects of that class in the image") from None
            by_image.setdefault(image, {})[_class_id(row["class"] or "", names, where)] = count
    return [Labelled(p, c) for p, c in by_image.items()]


def load_labelled(folder: Path, names: dict[int, str]) -> tuple[list[Labelled], int]:
    """The (image, class) pairs of a labelled folder; also the number of background images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GpoError("labelled folder not found", file=str(folder), fix="give a folder of images with YOLO "
                       "label .txt files, or with a counts.csv (image,class,count)")
    if (folder / "counts.csv").exists():
        items = read_counts_csv(folder / "counts.csv", names)
        background = 0
    else:
        items, background = [], 0
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            label = _label_file(image)
            counts = read_yolo_labels(label, names) if label else {}
            if counts:
                items.append(Labelled(image, counts))
            else:
                background += 1
    if not items:
        raise GpoError("no labelled objects in the folder", file=str(folder),
                       fix="add YOLO label files next to the images (or under a sibling labels/ folder), "
                           "or a counts.csv with image,class,count")
    return items, background


def sweep(found: Sequence[tuple[np.ndarray, np.ndarray]], items: Sequence[Labelled], thresholds: Sequence[float]
          ) -> list[dict]:
    """Exact-count accuracy (Wilson 95% interval) and mean |error| at each τ, from detections kept at
    the lowest τ."""
    rows = []
    for tau in thresholds:
        right, errors = [], []
        for (cls, conf), item in zip(found, items):
            keep = cls[conf >= tau]
            for cid, true in item.counts.items():
                k = int((keep == cid).sum())
                right.append(k == true)
                errors.append(abs(k - true))
        acc = accuracy(right).as_dict()
        rows.append({"conf": float(tau), "accuracy": acc["value"], "low": acc["low"], "high": acc["high"],
                     "n": acc["n"], "mean_abs_error": float(np.mean(errors))})
    return rows


def best_threshold(rows: Sequence[dict]) -> dict:
    """The τ of highest accuracy; among equals, the middle of the tied thresholds."""
    top = max(r["accuracy"] for r in rows)
    tied = [r for r in rows if r["accuracy"] == top]
    return tied[(len(tied) - 1) // 2]


def calibrate_threshold(weights: Path, folder: Path, out: Path, *, imgsz: int = 128,
                        thresholds: Sequence[float] | None = None, current: float = 0.4,
                        device: str = "cpu", batch: int = 32) -> dict:
    """Sweep τ on a labelled folder; write the JSON report to `out`; return it."""
    thresholds = sorted(thresholds or default_thresholds())
    if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise GpoError("confidence thresholds must lie in (0, 1)", field="--thresholds", value=thresholds,
                       fix="e.g. 0.05 .. 0.95")
    det = Detector(weights, imgsz=imgsz, conf=thresholds[0], batch=batch, device=device)
    items, background = load_labelled(Path(folder), det.names)
    images = []
    for item in items:
        try:
            with Image.open(item.path) as im:
                images.append(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:
            raise GpoError(f"cannot read a labelled image: {err}", file=str(item.path),
                           fix="replace or remove the image (and its label)") from None
    found = det.detections(images, conf=thresholds[0])
    rows = sweep(found, items, thresholds)
    best = best_threshold(rows)
    at_current = sweep(found, items, [current])[0] if current >= thresholds[0] else None
    per_class: dict[str, dict] = {}
    for cid in sorted({c for item in items for c in item.counts}):
        sub = [(f, Labelled(i.path, {cid: i.counts[cid]})) for f, i in zip(found, items) if cid in i.counts]
        r = sweep([f for f, _ in sub], [i for _, i in sub], [best["conf"]])[0]
        per_class[det.names[cid]] = {"accuracy": r["accuracy"], "low": r["low"], "high": r["high"], "n": r["n"]}
    report = {"weights": str(weights), "labels": str(folder), "imgsz": imgsz, "images": len(items),
              "background_images": background, "pairs": best["n"], "best": best, "at_current": at_current,
              "current_conf": current, "sweep": rows, "per_class_at_best": per_class,
              "set": f"params/rewards.yaml detector.conf: {best['conf']}"}
    atomic_write_json(Path(out), report)
    return report


def markdown(report: dict) -> str:
    lines = [f"τ sweep of `{report['weights']}` on `{report['labels']}` ({report['images']} images, "
             f"{report['pairs']} (image, class) pairs)", "", "| conf τ | exact-count accuracy [95% CI] | mean |k−n| |",
             "|---|---|---|"]
    for r in report["sweep"]:
        mark = " **best**" if r["conf"] == report["best"]["conf"] else ""
        lines.append(f"| {r['conf']:.2f}{mark} | {r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | "
                     f"{r['mean_abs_error']:.3f} |")
    lines.append("")
    lines.append(f"set {report['set']}")
    return "\n".join(lines) + "\n"
