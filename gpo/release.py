"""The shipped embedded weights (release/): copy them in, and check them against their calibration.

release/ holds the base pipeline (safetensors), the detector, the params that produced them, the
calibration report, and a small sample of calibration rows (prompt, seed, reading, reward) that a
test regenerates and re-scores to prove the shipped weights still behave as recorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from gpo.errors import GpoError
from gpo.evaluate import Scorers
from gpo.generate import generate
from gpo.io import atomic_write_json
from gpo.model.pipeline import TinyT2IPipeline
from gpo.prompts import Prompt

SAMPLE_ROWS = 24  # per task


def calibration_sample(table: pd.DataFrame, per_task: int = SAMPLE_ROWS) -> list[dict]:
    """Evenly spaced held-out rows of each task from a calibration score table."""
    rows = []
    for task in ("counting", "text"):
        part = table[(table.task == task) & (table.split == "heldout")].reset_index(drop=True)
        step = max(1, len(part) // per_task)
        rows += part.iloc[::step].head(per_task).to_dict("records")
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]


def rescore_sample(pipe: TinyT2IPipeline, scorers: Scorers, sample: list[dict], steps: int,
                   guidance_scale: float, solver: str = "default", precision: str = "fp32") -> dict:
    """Regenerate and re-score the sample; report agreement with what was recorded."""
    prompts = [Prompt(text=r["prompt"], task=r["task"], split=r["split"], cls=r["cls"],
                      count=None if r["count"] is None else int(r["count"]), word=r["word"]) for r in sample]
    images = generate(pipe, [p.text for p in prompts], [int(r["seed"]) for r in sample], steps=steps,
                      guidance_scale=guidance_scale, batch_size=64, progress=False, solver=solver, precision=precision)
    scores = scorers.score(images, prompts)
    same = [s.correct == bool(r["correct"]) for s, r in zip(scores, sample)]
    return {"n": len(sample), "same_correct": sum(same) / len(same),
            "recorded_mean_reward": sum(r["reward"] for r in sample) / len(sample),
            "mean_reward": sum(s.reward for s in scores) / len(scores)}


def release(pretrained: Path, detector: Path | None, calibration: Path | None, to: Path) -> Path:
    """Copy a pretraining output (+ detector + calibration) into the release folder, atomically per file."""
    pretrained, to = Path(pretrained), Path(to)
    if not (pretrained / "pipeline" / "model_index.json").exists():
        raise GpoError("no pretrained pipeline to release", file=str(pretrained / "pipeline"),
                       fix="run `gpo pretrain` (or `dvc repro release/dvc.yaml`) first")
    to.mkdir(parents=True, exist_ok=True)
    tmp = to / ".base.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pretrained / "pipeline", tmp)
    shutil.rmtree(to / "base", ignore_errors=True)
    tmp.rename(to / "base")
    shutil.copyfile(pretrained / "pretrain_summary.json", to / "base_pretrain.json")
    if detector is not None and (Path(detector) / "detector.pt").exists():
        for name in ("detector.pt", "detector_train.json"):
            shutil.copyfile(Path(detector) / name, to / f".{name}.tmp")
            (to / f".{name}.tmp").replace(to / name)
    if calibration is not None and (Path(calibration) / "calibration.json").exists():
        cal = Path(calibration)
        shutil.copyfile(cal / "calibration.json", to / "calibration.json")
        shutil.copyfile(cal / "calibration.md", to / "calibration.md")
        table = pd.read_parquet(cal / "base_scores.parquet")
        atomic_write_json(to / "calibration_sample.json", calibration_sample(table))
    return to


def load_sample(folder: Path) -> list[dict]:
    path = Path(folder) / "calibration_sample.json"
    if not path.exists():
        raise GpoError("no calibration sample in the release", file=str(path), fix="run `gpo release --calibration ...`")
    return json.loads(path.read_text())
