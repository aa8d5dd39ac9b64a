"""Does what GPO learns on the train prompts reach the held-out ones? The transfer gap of issue #13.

Evaluates models on the *train* counting prompts (relabelled so that gpo/calibrate.py's held-out
evaluation draws them, with its seeds) and reads their held-out counting from their existing quick
evaluations: if a fine-tune gains on the prompts it trained on and not on the held-out combinations,
the block is transfer, not learning.

    python benchmarks/transfer_gap.py BASE=PIPELINE NAME=PIPELINE … [--counting-seeds 4]

The first model is the base every other row is paired with (same prompts and seeds).
Writes benchmarks/results/transfer_gap.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from gpo_tuning import points, quick_metrics, write_results  # noqa: E402

from gpo.calibrate import evaluate_model  # noqa: E402
from gpo.cli import _load, _ws  # noqa: E402
from gpo.metrics import mean_interval  # noqa: E402
from gpo.model.adapters import load_any  # noqa: E402
from gpo.prompts import read_prompts  # noqa: E402
from gpo.study import image_diffs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=PIPELINE_FOLDER; the first is the base")
    ap.add_argument("--counting-seeds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("data/transfer_gap"))
    a = ap.parse_args()
    e = _load(Path("params"), "eval.yaml").eval.model_copy(update={"counting_seeds": a.counting_seeds, "text_seeds": 0,
                                                                    "heldout_word_seeds": 0})
    train = [dataclasses.replace(p, split="heldout") for p in read_prompts(Path("data/prompts.jsonl"))
             if p.task == "counting" and p.split == "train"]
    scorers = _ws(Path("params")).scorers()
    tables = {}
    for item in a.models:
        name, folder = item.split("=", 1)
        evaluate_model(load_any(Path(folder)), train, scorers, e, a.out / name, "train", progress=False)
        tables[name] = pd.read_parquet(a.out / name / "train_scores.parquet")
    base = next(iter(tables))
    rows = []
    for name, t in tables.items():
        m = quick_metrics(t)
        row = {"name": name, "train_prompts_counting": m["counting_acc"], "by_count": m["counting_by_count"], "n": m["n_counting"]}
        if name != base:
            row["paired_vs_base"] = mean_interval(image_diffs(t, tables[base], "counting", "correct")).as_dict()
        rows.append(row)
        print(row, flush=True)
    lines = [f"Counting accuracy on the {len(train)} train prompts × {a.counting_seeds} seeds, paired with {base}:", "",
             "| model | counting acc (train prompts) | Δ vs base, points [95%] | by count |", "|---|---|---|---|"]
    for r in rows:
        delta = points(r["paired_vs_base"]) if "paired_vs_base" in r else "–"
        lines.append(f"| {r['name']} | {r['train_prompts_counting']:.3f} | {delta} | {r['by_count']} |")
    write_results("transfer_gap", rows, lines)


if __name__ == "__main__":
    main()
