"""Does what GPO learns on the train prompts reach the held-out ones? The transfer gap of issue #13.

Evaluates models on the *train* counting prompts (relabelled so that gpo/calibrate.py's held-out
evaluation draws them, with its seeds), paired with a base: if a fine-tune gains on the prompts it
trained on and not on the held-out combinations, the block is transfer, not learning.

    python benchmarks/transfer_gap.py BASE=PIPELINE NAME=PIPELINE … [--counting-seeds 4]
    python benchmarks/transfer_gap.py BASE=PIPELINE NAME=PIPELINE … --split heldout

The first model is the base every other row is paired with (same prompts and seeds).
Writes benchmarks/results/transfer_gap.{json,md}. `--split heldout` instead evaluates the held-out
counting prompts with the full evaluation's seeds (eval.yaml: 24 a prompt, n = 432; the quick
evaluation of gpo_tuning.py uses the first 8, on which the base happens to count above its mean) and
writes benchmarks/results/heldout_counting_full.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from gpo_tuning import points, quick_metrics, upsert_results  # noqa: E402

from gpo.calibrate import evaluate_model  # noqa: E402
from gpo.cli import _load, _ws  # noqa: E402
from gpo.metrics import mean_interval  # noqa: E402
from gpo.model.adapters import load_any  # noqa: E402
from gpo.prompts import read_prompts  # noqa: E402
from gpo.study import image_diffs  # noqa: E402


def paired_by_count(t: pd.DataFrame, base: pd.DataFrame) -> dict[str, dict]:
    """Per requested count: the paired difference in exact-count accuracy (same prompt and seed) with its interval."""
    key = ["prompt", "seed"]
    j = t[t.task == "counting"].merge(base[base.task == "counting"][key + ["correct"]], on=key, suffixes=("", "_base"))
    return {str(int(n)): mean_interval((g.correct.astype(float) - g.correct_base.astype(float)).tolist()).as_dict()
            for n, g in j.groupby("count")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=PIPELINE_FOLDER; the first is the base")
    ap.add_argument("--split", choices=["train", "heldout"], default="train")
    ap.add_argument("--counting-seeds", type=int, default=None, help="seeds a prompt (default: 4 train, eval.yaml's held-out)")
    ap.add_argument("--out", type=Path, default=Path("data/transfer_gap"))
    a = ap.parse_args()
    e = _load(Path("params"), "eval.yaml").eval
    seeds = a.counting_seeds or (4 if a.split == "train" else e.counting_seeds)
    e = e.model_copy(update={"counting_seeds": seeds, "text_seeds": 0, "heldout_word_seeds": 0})
    # evaluate_model draws the split "heldout": the train prompts are relabelled to be drawn
    prompts = [dataclasses.replace(p, split="heldout") for p in read_prompts(Path("data/prompts.jsonl"))
               if p.task == "counting" and p.split == a.split]
    out = a.out if a.split == "train" else a.out.parent / "heldout_counting_full"
    scorers = _ws(Path("params")).scorers()
    tables = {}
    for item in a.models:
        name, folder = item.split("=", 1)
        evaluate_model(load_any(Path(folder)), prompts, scorers, e, out / name, a.split, progress=False)
        tables[name] = pd.read_parquet(out / name / f"{a.split}_scores.parquet")
    base = next(iter(tables))
    rows = []
    for name, t in tables.items():
        m = quick_metrics(t)
        row = {"name": name, f"{a.split}_prompts_counting": m["counting_acc"], "by_count": m["counting_by_count"],
               "n": m["n_counting"], "interval": mean_interval(t[t.task == "counting"].correct.astype(float)).as_dict()}
        if name != base:
            row["paired_with"] = base
            row["paired_vs_base"] = mean_interval(image_diffs(t, tables[base], "counting", "correct")).as_dict()
            row["paired_by_count"] = paired_by_count(t, tables[base])
        rows.append(row)
    header = [f"Counting accuracy on the {len(prompts)} {a.split} prompts × {seeds} seeds, each model paired with "
              "the base named in its row (same prompts and seeds):", "",
              f"| model | counting acc ({a.split} prompts) [95%] | Δ vs base, points [95%] | by count | Δ by count, points [95%] |",
              "|---|---|---|---|---|"]

    def render(r: dict) -> str:
        delta = f"{points(r['paired_vs_base'])} vs {r.get('paired_with', base)}" if "paired_vs_base" in r else "–"
        iv = r.get("interval")  # rows written before intervals were recorded have none
        ci = f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv else ""
        by = " ".join(f"{k}: {points(v)}" for k, v in r.get("paired_by_count", {}).items()) or "–"
        acc = " ".join(f"{k}: {v}" for k, v in r["by_count"].items())  # keys are str once read back from JSON
        return f"| {r['name']} | {r[f'{a.split}_prompts_counting']:.3f}{ci} | {delta} | {acc} | {by} |"

    # rows of earlier runs (same prompts and seeds) stay; a model evaluated again replaces its row
    for row in rows:
        upsert_results("transfer_gap" if a.split == "train" else "heldout_counting_full", row, header, render)

if __name__ == "__main__":
    main()
