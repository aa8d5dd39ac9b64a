"""Headroom of a model on held-out prompts: pass@k for every k its evaluation allows, per task and per
requested count (docs/GPO.md, "Headroom: pass@k"). Reads an evaluation's score table (default: the
calibration's evaluation of the shipped base) — no images are generated here.

pass@1 is where preference optimization on the model's own groups starts; pass@G (G = group size) is
about where it can go: a group with no correct member carries no signal toward correctness.

    python benchmarks/pass_at_k.py [--scores data/calibration/base_scores.parquet]

Writes benchmarks/results/pass_at_k.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from gpo.io import atomic_write_json, atomic_write_text
from gpo.metrics import pass_at_k_curve

RESULTS = Path(__file__).parent / "results"


def curves(table: pd.DataFrame) -> dict[str, dict[int, float]]:
    """pass@1..n per task/split (held-out splits) and per requested count (counting/heldout)."""
    out = {}
    ok = table[table["error"].isna()] if "error" in table else table
    for (task, split), rows in ok[ok.split != "train"].groupby(["task", "split"]):
        by_prompt = [r.correct for _, r in rows.groupby("prompt")]
        out[f"{task}/{split}"] = pass_at_k_curve(by_prompt, range(1, max(len(g) for g in by_prompt) + 1))
        if task == "counting":
            for c, part in rows.groupby("count"):
                out[f"{task}/{split} count={int(c)}"] = pass_at_k_curve(
                    [r.correct for _, r in part.groupby("prompt")], range(1, len(part) + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scores", type=Path, default=Path("data/calibration/base_scores.parquet"))
    a = ap.parse_args()
    table = pd.read_parquet(a.scores)
    got = curves(table)
    ks = [1, 2, 3, 4, 6, 8, 12, 16, 24]
    lines = [f"pass@k on held-out prompts, from `{a.scores}` (prompts × seeds as evaluated; '' = k above the seeds "
             "per prompt)", "", "| task / split | prompts | " + " | ".join(f"pass@{k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    for key, curve in got.items():
        n_prompts = table[(table.task == key.split("/")[0]) & (table.split == key.split("/")[1].split()[0])]
        if "count=" in key:
            n_prompts = n_prompts[n_prompts["count"] == int(key.split("count=")[1])]
        lines.append(f"| {key} | {n_prompts.prompt.nunique()} | " + " | ".join(
            f"{curve[k]:.3f}" if k in curve else "" for k in ks) + " |")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "pass_at_k.json", {"scores": str(a.scores), "curves": {
        k: {str(kk): round(v, 4) for kk, v in c.items()} for k, c in got.items()}})
    atomic_write_text(RESULTS / "pass_at_k.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
