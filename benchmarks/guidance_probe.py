"""Does a fine-tune move the conditional model but not the guided sampler? Held-out accuracy vs CFG scale.

Every supervised fine-tune on rendered ground truth (benchmarks/gt_ceiling.py) raised held-out counting
at CFG 1 (the conditional model alone) while the sampler's CFG 2 lost what guidance had added to the base.
This evaluates saved pipelines (the base, GPO rounds, tuning chains) on the same quick held-out sample at
several guidance scales, so the same question can be asked of GPO's own models:

    python benchmarks/guidance_probe.py base=release/base gpo=data/tuning/X/round-1/iter-3/train/pipeline \
        --guidance 1 1.5 2 3

Quick evaluation as benchmarks/gpo_tuning.py (8 seeds a counting prompt, 2 a text prompt, the eval.yaml
sampler except its guidance). Rows (model × guidance) go to benchmarks/results/guidance_probe.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from gpo.calibrate import evaluate_model
from gpo.cli import _ws
from gpo.model.adapters import load_any
from gpo.prompts import read_prompts

from gpo_tuning import add_quick_args, quick_eval, quick_metrics, upsert_results  # noqa: E402  (benchmarks/ is on sys.path as a script)

HEADER = ["| model | path | CFG | counting acc | OCR reward | OCR exact | counting by count 1…6 |",
          "|---|---|---|---|---|---|---|"]


def render(r: dict) -> str:
    m = r["metrics"]
    by = " ".join(f"{m['counting_by_count'][k]:.2f}" for k in sorted(m["counting_by_count"], key=int))
    return (f"| {r['model']} | `{r['path']}` | {r['guidance']:g} | {m['counting_acc']:.3f} | {m['ocr_reward']:.3f} | "
            f"{m['ocr_exact']:.3f} | {by} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=PIPELINE_DIR")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    add_quick_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("data/guidance_probe"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    e = quick_eval(a)
    prompts = read_prompts(Path("data/prompts.jsonl"))
    scorers = _ws(Path("params")).scorers()
    for item in a.models:
        name, _, path = item.partition("=")
        if not path or not Path(path, "model_index.json").exists():
            raise SystemExit(f"{item}: expected NAME=PIPELINE_DIR with a model_index.json")
        pipe = load_any(Path(path))
        for g in a.guidance:
            folder = a.out / name / f"cfg{g:g}"
            evaluate_model(pipe, prompts, scorers, e.model_copy(update={"guidance_scale": g}), folder, "final",
                           progress=False)
            m = quick_metrics(pd.read_parquet(folder / "final_scores.parquet"))
            upsert_results("guidance_probe", {"name": f"{name}@cfg{g:g}", "model": name, "path": path,
                                              "guidance": g, "metrics": m}, HEADER, render)


if __name__ == "__main__":
    main()
