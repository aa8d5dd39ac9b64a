"""Counting reward model: an ultralytics YOLO detector, trained by the project on rendered shapes,
or any YOLO weights the user configures (e.g. COCO-pretrained yolov8n.pt from a local path; prompts
name its classes in singular or plural). Images are upscaled to `imgsz` before detection; the
confidence threshold τ is calibrated on a labelled folder by gpo/rewards/threshold.py.

YOLO .pt files are pickles that ultralytics loads itself; load them only from paths you trust.
"""

from __future__ import annotations

import difflib
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from gpo.env import prepare_ultralytics
from gpo.errors import GpoError
from gpo.io import atomic_write_json, atomic_write_text
from gpo.params import DetectorParams, WorldParams
from gpo.prompts import Prompt, class_for_noun, counting_noun, read_prompts
from gpo.rewards.arith import Score, counting_score
from gpo.world.dataset import build_prompts, spec
from gpo.world.render import render_counting


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Give torch its intra-op thread count back after ultralytics. Its `select_device`, called when a YOLO
    model sets up its predictor (its first predict), sets torch's threads to cpu_count − 1 (at most 8),
    which is 1 on a 2-core machine: every torch job after a detector's first scoring in the same process
    (EasyOCR in the same scoring, the calibration's base images) ran on half the cores (base images at
    8 img/s instead of 16 in the 5b3643c make run)."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


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
    """Counts objects of a prompt's class. Batched; the reward arithmetic is `counting_score`.

    A prompt's object is matched to the detector's class names in singular or plural, any case
    ('three cups' → COCO class 'cup', 'two people' → 'person'). `prompts_file`: check every counting
    row of a prompt table against the detector's classes up front (one error naming the first bad row),
    instead of failing image by image during scoring."""

    def __init__(self, weights: str | Path, imgsz: int = 128, conf: float = 0.4, batch: int = 32,
                 device: str = "cpu", prompts_file: str | Path | None = None):
        prepare_ultralytics()
        from ultralytics import YOLO

        weights = Path(weights)
        if not weights.exists():
            raise GpoError("detector weights not found", file=str(weights),
                           fix="run `gpo detector` to train one, or set rewards.yaml detector.weights")
        try:
            with torch_threads_kept():
                self.model = YOLO(str(weights), task="detect")
        except Exception as err:  # ultralytics raises many types for a bad file
            raise GpoError(f"cannot load YOLO weights: {err}", file=str(weights),
                           fix="give an ultralytics detection .pt file") from None
        self.weights = weights
        self.names = {int(k): v for k, v in self.model.names.items()}
        self.imgsz, self.conf, self.batch, self.device = imgsz, conf, batch, device
        self._ids: dict[str, int] = {}
        if prompts_file is not None:
            self.check_prompt_file(prompts_file)

    def class_id(self, name: str) -> int:
        """The detector's id of a class name or of a noun naming it (plural, any case)."""
        if name in self._ids:
            return self._ids[name]
        cls = class_for_noun(name, self.names.values())
        if cls is None:
            raise GpoError(f"the detector cannot count {name!r}", field="cls", value=name,
                           fix=self._fix(name))
        self._ids[name] = next(i for i, n in self.names.items() if n == cls)
        return self._ids[name]

    def _fix(self, name: str) -> str:
        close = difflib.get_close_matches(name.lower(), list(self.names.values()), n=3, cutoff=0.6)
        hint = f"did you mean {close}? " if close else ""
        return (f"{hint}ask only for the detector's classes ({len(self.names)}: "
                f"{', '.join(sorted(self.names.values())[:12])}{', ...' if len(self.names) > 12 else ''}) — "
                "regenerate the prompts for it (`gpo real-prompts`, or world.yaml prompts.counting.classes), or "
                f"set rewards.yaml detector.weights to a model trained on {name!r} (weights: {self.weights})")

    def prompt_class(self, p: Prompt) -> int:
        """The class id a counting prompt asks for: its `cls`, else the noun of its text."""
        for noun in (p.cls, counting_noun(p.text, p.color)):
            if noun and class_for_noun(noun, self.names.values()) is not None:
                return self.class_id(noun)
        return self.class_id(p.cls or counting_noun(p.text, p.color))

    def check_prompt_file(self, path: str | Path) -> int:
        """Every counting row of a prompt table (gpo/prompts.py format) names a class of this detector;
        returns the number of counting rows, or raises one GpoError naming the first bad row."""
        path = Path(path)
        prompts = read_prompts(path)  # validates the rows themselves (file:line on a malformed one)
        lines = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
        bad = []
        for line_no, p in zip(lines, prompts):
            if p.task != "counting":
                continue
            try:
                self.prompt_class(p)
            except GpoError:
                bad.append((line_no, p))
        if bad:
            line_no, p = bad[0]
            nouns = sorted({q.cls or counting_noun(q.text, q.color) for _, q in bad})
            raise GpoError(f"{len(bad)} counting prompt(s) ask for objects the detector cannot count: {nouns[:10]}",
                           file=f"{path}:{line_no}", field="cls", value=p.cls, fix=self._fix(p.cls or p.text))
        return sum(p.task == "counting" for p in prompts)

    def detections(self, images: Sequence[Image.Image], conf: float | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(class ids, confidences) of every detection kept at `conf` (default: the detector's τ), per image.
        Confidence filtering happens before class-wise NMS, which is greedy by confidence, so the
        detections kept at τ are exactly those kept at a lower threshold with confidence >= τ."""
        arrays = upscale(images, self.imgsz)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(arrays), self.batch):
            with torch_threads_kept():
                results = self.model.predict(arrays[start:start + self.batch], imgsz=self.imgsz,
                                             conf=self.conf if conf is None else conf, max_det=1000,
                                             device=self.device, verbose=False)
            out += [(r.boxes.cls.int().cpu().numpy(), r.boxes.conf.float().cpu().numpy()) for r in results]
        return out

    def count(self, images: Sequence[Image.Image], classes: Sequence[str]) -> list[int]:
        ids = [self.class_id(c) for c in classes]
        return [int((cls == cid).sum()) for (cls, _), cid in zip(self.detections(images), ids)]

    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]:
        ids = [self.prompt_class(p) for p in prompts]
        found = [int((cls == cid).sum()) for (cls, _), cid in zip(self.detections(images), ids)]
        return [counting_score(k, int(p.count or 0)) for k, p in zip(found, prompts)]
