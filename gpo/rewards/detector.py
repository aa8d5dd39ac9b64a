"""Counting reward model: an ultralytics YOLO detector, trained by the project on rendered shapes,
or any YOLO weights the user configures (e.g. COCO). Images are upscaled to `imgsz` before detection.

YOLO .pt files are pickles that ultralytics loads itself; load them only from paths you trust.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from gpo.env import prepare_ultralytics
from gpo.errors import GpoError
from gpo.io import atomic_write_json, atomic_write_text
from gpo.params import DetectorParams, WorldParams
from gpo.prompts import Prompt
from gpo.rewards.arith import Score, counting_score
from gpo.world.dataset import build_prompts, spec
from gpo.world.render import render_counting


def upscale(images: Sequence[Image.Image], side: int) -> list[np.ndarray]:
    """RGB uint8 arrays at side×side (bilinear), the reward models' input."""
    return [np.asarray(im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)) for im in images]


def write_yolo_dataset(folder: Path, world: WorldParams, p: DetectorParams) -> Path:
    """Rendered counting images with YOLO labels (class cx cy w h, normalised) and a data.yaml."""
    classes = world.prompts.counting.classes
    prompts = [q for q in build_prompts(world.prompts) if q.task == "counting"]
    rng = random.Random(p.seed)
    sp = spec(world.render)
    folder = Path(folder)
    for split, n in (("train", p.train_images), ("val", p.val_images)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            prompt = rng.choice(prompts)
            r = render_counting(prompt, rng.randrange(2**31), sp)
            Image.fromarray(upscale([r.image], p.imgsz)[0]).save(folder / "images" / split / f"{i:05d}.png")
            s = world.render.size
            rows = [f"{classes.index(b.cls)} {(b.x0 + b.x1) / 2 / s:.6f} {(b.y0 + b.y1) / 2 / s:.6f} "
                    f"{(b.x1 - b.x0) / s:.6f} {(b.y1 - b.y0) / s:.6f}" for b in r.boxes]
            (folder / "labels" / split / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
    names = "\n".join(f"  {i}: {c}" for i, c in enumerate(classes))
    return atomic_write_text(folder / "data.yaml",
                             f"path: {folder.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")


def train_detector(world: WorldParams, p: DetectorParams, out: Path, *, workdir: Path | None = None,
                   progress: bool = True) -> Path:
    """Train YOLO from its yaml (no pretrained weights) on rendered shapes; writes out/detector.pt."""
    prepare_ultralytics()
    from ultralytics import YOLO

    out = Path(out)
    work = Path(workdir or out / "work")
    shutil.rmtree(work, ignore_errors=True)
    data = write_yolo_dataset(work / "dataset", world, p)
    model = YOLO(p.model_yaml)
    model.train(data=str(data), epochs=p.epochs, imgsz=p.imgsz, batch=p.batch, device="cpu", workers=0,
                project=str(work), name="train", exist_ok=True, seed=p.seed, deterministic=True,
                plots=False, verbose=progress, amp=False, fliplr=0.5, mosaic=1.0, close_mosaic=5)
    best = work / "train" / "weights" / "best.pt"
    if not best.exists():
        raise GpoError("YOLO training produced no best.pt", file=str(best), fix="see the ultralytics log above")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".detector.pt.tmp"
    shutil.copyfile(best, tmp)
    tmp.replace(out / "detector.pt")
    metrics = getattr(model.trainer, "metrics", {}) or {}
    atomic_write_json(out / "detector_train.json", {
        "classes": world.prompts.counting.classes, "params": p.model_dump(),
        "metrics": {k: float(v) for k, v in metrics.items()}})
    return out / "detector.pt"


class Detector:
    """Counts objects of a prompt's class. Batched; the reward arithmetic is `counting_score`."""

    def __init__(self, weights: str | Path, imgsz: int = 128, conf: float = 0.4, batch: int = 32):
        prepare_ultralytics()
        from ultralytics import YOLO

        weights = Path(weights)
        if not weights.exists():
            raise GpoError("detector weights not found", file=str(weights),
                           fix="run `gpo detector` to train one, or set rewards.yaml detector.weights")
        try:
            self.model = YOLO(str(weights), task="detect")
        except Exception as err:  # ultralytics raises many types for a bad file
            raise GpoError(f"cannot load YOLO weights: {err}", file=str(weights),
                           fix="give an ultralytics detection .pt file") from None
        self.names = {int(k): v for k, v in self.model.names.items()}
        self.imgsz, self.conf, self.batch = imgsz, conf, batch

    def class_id(self, name: str) -> int:
        for i, n in self.names.items():
            if n == name:
                return i
        raise GpoError(f"the detector cannot count {name!r}", field="cls", value=name,
                       fix=f"use one of the detector's classes: {sorted(self.names.values())}")

    def count(self, images: Sequence[Image.Image], classes: Sequence[str]) -> list[int]:
        ids = [self.class_id(c) for c in classes]
        arrays = upscale(images, self.imgsz)
        counts: list[int] = []
        for start in range(0, len(arrays), self.batch):
            results = self.model.predict(arrays[start:start + self.batch], imgsz=self.imgsz, conf=self.conf,
                                         device="cpu", verbose=False)
            for res, cid in zip(results, ids[start:start + self.batch]):
                counts.append(int((res.boxes.cls.int() == cid).sum().item()))
        return counts

    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]:
        found = self.count(images, [p.cls or "" for p in prompts])
        return [counting_score(k, int(p.count or 0)) for k, p in zip(found, prompts)]
