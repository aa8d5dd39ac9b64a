"""Sampler steps × guidance (× x0 clipping) on held-out prompts, same prompts and seeds for every arm.

The shipped base model, a fixed held-out sample (every counting prompt × `--counting-seeds`, the first
`--text-prompts` text prompts × `--text-seeds`, evaluation seeds from params/eval.yaml seed_offset), one
row per sampler setting: counting accuracy (Wilson 95%), accuracy at each requested count, OCR exact and
mean reward, images/s. `clip` rows rebuild the DDIM scheduler with clip_sample=True: the trap of
gpo/model/sampler.py, kept as the reference row.

    python benchmarks/sampler_sweep.py                          # the default sweep
    python benchmarks/sampler_sweep.py --arms 10:3 20:3 20:3:clip
    python benchmarks/sampler_sweep.py --arms 10:2 5:2:dpm++:bf16 6:2:unipc   # solver and precision

An arm is STEPS:CFG[:clip][:SOLVER][:bf16], SOLVER one of gpo/model/sampler.py SOLVERS (default: the
pipeline's own DDIM); bf16 = bf16 autocast for the denoiser calls.

Writes benchmarks/results/<--out, default sampler_sweep>.{json,md} (rows replaced by name). The ODE solvers
and bf16 (#15): benchmarks/results/sampler_solvers.md, made by
    python benchmarks/sampler_sweep.py --out sampler_solvers --counting-seeds 12 \
        --arms 10:2 10:2:bf16 5:2:unipc:bf16 6:2:unipc:bf16 5:2:dpm++:bf16 4:2:unipc:bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from gpo.cli import _load, _ws
from gpo.evaluate import score_table
from gpo.generate import generate
from gpo.metrics import accuracy, mean_interval
from gpo.model.adapters import load_any
from gpo.model.sampler import SOLVERS
from gpo.prompts import Prompt, read_prompts

from gpo_tuning import upsert_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

DEFAULT_ARMS = ["10:3:clip", "10:3", "20:3", "30:3", "20:2", "20:4.5", "20:6", "40:3"]


def heldout_sample(prompts: list[Prompt], counting_seeds: int, text_prompts: int, text_seeds: int,
                   offset: int) -> tuple[list[Prompt], list[int]]:
    """Every held-out counting prompt × counting_seeds, the first text_prompts held-out text prompts × text_seeds."""
    c = [p for p in prompts if p.task == "counting" and p.split == "heldout"]
    t = [p for p in prompts if p.task == "text" and p.split == "heldout"][:text_prompts]
    plan = [(p, offset + j) for p in c for j in range(counting_seeds)] + [(p, offset + j) for p in t for j in range(text_seeds)]
    return [p for p, _ in plan], [s for _, s in plan]


def sampler_pipe(model: Path, clip: bool):
    pipe = load_any(model)
    if clip:  # the trap, rebuilt on purpose for the reference row
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, clip_sample=True)
    return pipe


def measure(table: pd.DataFrame) -> dict:
    c, t = table[table.task == "counting"], table[table.task == "text"]
    return {"counting_acc": accuracy(c.correct).as_dict(), "counting_reward": round(float(c.reward.mean()), 4),
            "by_count": {int(k): round(float(v), 3) for k, v in c.groupby("count").correct.mean().items()},
            "ocr_exact": accuracy(t.correct).as_dict(), "ocr_reward": mean_interval(t.reward).as_dict()}


def paired(ref_name: str, ref: pd.DataFrame, table: pd.DataFrame) -> dict:
    """Same prompts and seeds as the reference arm: the mean per-image difference (this − reference) and its
    95% interval, for counting correctness, OCR exactness and OCR reward — tighter than two separate intervals."""
    c, t = (table.task == "counting").to_numpy(), (table.task == "text").to_numpy()
    d_ok = table.correct.astype(float).to_numpy() - ref.correct.astype(float).to_numpy()
    d_r = table.reward.to_numpy() - ref.reward.to_numpy()
    return {"vs": ref_name, "counting_acc": mean_interval(d_ok[c]).as_dict(),
            "ocr_exact": mean_interval(d_ok[t]).as_dict(), "ocr_reward": mean_interval(d_r[t]).as_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="*", default=DEFAULT_ARMS, help="STEPS:CFG[:clip][:SOLVER][:bf16]")
    ap.add_argument("--model", type=Path, default=None, help="pipeline folder (default params/models.yaml base)")
    ap.add_argument("--counting-seeds", type=int, default=6)
    ap.add_argument("--text-prompts", type=int, default=54)
    ap.add_argument("--text-seeds", type=int, default=2)
    ap.add_argument("--out", default="sampler_sweep", help="results stem under benchmarks/results/")
    a = ap.parse_args()
    model = a.model or Path(_load(Path("params"), "models.yaml").base)
    e = _load(Path("params"), "eval.yaml").eval
    plan_p, plan_s = heldout_sample(read_prompts(Path("data/prompts.jsonl")), a.counting_seeds, a.text_prompts,
                                    a.text_seeds, e.seed_offset)
    scorers = _ws(Path("params")).scorers()
    ref = None  # the first arm's per-image table: later arms report paired differences against it
    for arm in a.arms:
        steps, cfg, *rest = arm.split(":")
        solver = next((r for r in rest if r in SOLVERS), "default")
        precision = "bf16" if "bf16" in rest else "fp32"
        pipe = sampler_pipe(model, clip="clip" in rest)
        t0 = time.time()
        images = generate(pipe, [p.text for p in plan_p], plan_s, steps=int(steps), guidance_scale=float(cfg),
                          batch_size=e.batch_size, progress=False, solver=solver, precision=precision)
        seconds = time.time() - t0
        table = score_table(plan_p, plan_s, scorers.score(images, plan_p))
        row = {"name": arm, "model": str(model), "steps": int(steps), "guidance": float(cfg), "clip": "clip" in rest,
               "solver": solver, "precision": precision,
               "n": len(plan_p), "images_per_s": round(len(plan_p) / seconds, 2), **measure(table)}
        if ref is None:
            ref = (arm, table)
        else:
            row["paired"] = paired(ref[0], ref[1], table)
        header = ["| sampler (steps:CFG[:solver][:bf16]) | x0 clip | counting acc [95% CI] | counting reward | by count 1…6 | "
                  "OCR exact [95% CI] | OCR mean reward [95% CI] | images/s | paired Δ vs first arm of its run: counting, OCR exact, OCR reward [95% CI] |",
                  "|---|---|---|---|---|---|---|---|---|"]
        upsert_results(a.out, row, header, render)


def render(r: dict) -> str:
    def ci(e):
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}] (n={e['n']})"

    by = " ".join(f"{r['by_count'][k]:.2f}" for k in sorted(r["by_count"], key=int))
    extra = "".join(f":{x}" for x in (r.get("solver", "default"), r.get("precision", "fp32")) if x not in ("default", "fp32"))
    return (f"| {r['steps']}:{r['guidance']:g}{extra} | {'on' if r['clip'] else 'off'} | {ci(r['counting_acc'])} | "
            f"{r['counting_reward']:.3f} | {by} | {ci(r['ocr_exact'])} | {ci(r['ocr_reward'])} | {r['images_per_s']} | "
            f"{delta(r.get('paired'))} |")


def delta(d: dict | None) -> str:
    if not d:
        return "(reference)"
    f = lambda e: f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"  # noqa: E731
    return f"vs {d['vs']}: {f(d['counting_acc'])}, {f(d['ocr_exact'])}, {f(d['ocr_reward'])}"


if __name__ == "__main__":
    main()
