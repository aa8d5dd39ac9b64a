"""Paired read-out of benchmarks/gt_ceiling.py: each fine-tune against the base, image by image, with 95% intervals.

The quick evaluation is small (144 counting, 134 text images), so a difference of two accuracies means
little on its own; per (prompt, seed) differences against the base's image are tighter. For every run
folder data/gt_ceiling/NAME/step-N[-cfg1] this prints Δ counting accuracy, Δ OCR exact and Δ OCR reward
at CFG 2 and at CFG 1, and the change of guidance's margin (CFG 2 − CFG 1 of the run minus that of the
base, per image). The base of a run is its own step-0 evaluation (a run on another base, gt_ceiling.py
--base, always has one), else the shipped base's (identical in every run that started from it).

    python benchmarks/gt_ceiling_paired.py [--root data/gt_ceiling]

Writes benchmarks/results/gt_ceiling_paired.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from gpo_tuning import RESULTS, points, write_results  # noqa: E402

from gpo.metrics import mean_interval  # noqa: E402
from gpo.study import heldout_values, image_diffs  # noqa: E402


def paired(mine: pd.DataFrame, ref: pd.DataFrame, g: int) -> dict:
    """Δ counting accuracy, OCR exact and OCR reward of `mine` against `ref` at CFG g, per image."""
    return {f"counting_cfg{g}": mean_interval(image_diffs(mine, ref, "counting", "correct")).as_dict(),
            f"exact_cfg{g}": mean_interval(image_diffs(mine, ref, "text", "correct")).as_dict(),
            f"reward_cfg{g}": mean_interval(image_diffs(mine, ref, "text", "reward")).as_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("data/gt_ceiling"))
    a = ap.parse_args()
    table = lambda folder: pd.read_parquet(folder / "final_scores.parquet")  # noqa: E731
    other_base = {r["name"].split("@")[0] for r in json.loads((RESULTS / "gt_ceiling.json").read_text())
                  if ", base " in r["task"]}  # runs started from another model than the shipped base
    shipped0 = next((p for p in sorted(a.root.glob("*/step-0")) if p.parent.name not in other_base), None)
    if shipped0 is None:
        raise SystemExit(f"no step-0 evaluation of the shipped base under {a.root}: run gt_ceiling.py with --steps 0 …")
    rows = []
    for run in sorted(p for p in a.root.iterdir() if p.is_dir()):
        base0 = run / "step-0" if run.name in other_base else shipped0
        base = {2: table(base0), 1: table(base0.with_name("step-0-cfg1"))}
        steps = [p for p in run.glob("step-*") if p.name.split("-", 1)[1].isdigit()]  # not the -cfg1 folders
        for step in sorted(steps, key=lambda p: int(p.name.split("-")[1])):
            if step.name == "step-0" or not (step / "final_scores.parquet").exists():
                continue
            row = {"name": f"{run.name}@{step.name.split('-')[1]}"}
            runs = {2: table(step)}
            if (step.with_name(step.name + "-cfg1") / "final_scores.parquet").exists():
                runs[1] = table(step.with_name(step.name + "-cfg1"))
            for g, t in runs.items():
                row |= paired(t, base[g], g)
            if 1 in runs:  # guidance's margin, per image: (run CFG 2 − run CFG 1) − (base CFG 2 − base CFG 1)
                c = [heldout_values(t, "counting", "correct") for t in (runs[2], runs[1], base[2], base[1])]
                both = c[0].index.intersection(c[1].index).intersection(c[2].index).intersection(c[3].index)
                margin = (c[0][both] - c[1][both]) - (c[2][both] - c[3][both])
                row["margin_change"] = mean_interval(margin.tolist()).as_dict()
            rows.append(row)
    lines = ["| run | Δ counting CFG 2 | Δ counting CFG 1 | Δ guidance margin (CFG 2 − CFG 1) | Δ OCR exact CFG 2 | Δ OCR reward CFG 2 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        get = lambda k: points(r[k]) if k in r else "–"  # noqa: E731
        lines.append(f"| {r['name']} | {get('counting_cfg2')} | {get('counting_cfg1')} | {get('margin_change')} | "
                     f"{get('exact_cfg2')} | {get('reward_cfg2')} |")
    lines.append("")
    lines.append("Points, paired per (prompt, seed) against the base on the same images; 95% intervals.")
    bases = []  # the other bases themselves (e.g. pretraining snapshots), against the shipped base
    for name in sorted(other_base):
        own = a.root / name / "step-0"
        if not (own / "final_scores.parquet").exists():
            continue
        row = {"name": name}
        for g, folder in ((2, "step-0"), (1, "step-0-cfg1")):
            if (a.root / name / folder / "final_scores.parquet").exists():
                row |= paired(table(a.root / name / folder), table(shipped0.with_name(folder)), g)
        bases.append(row)
    if bases:
        lines += ["", "Other bases (step 0 of runs with --base) against the shipped base, same images:", "",
                  "| base | Δ counting CFG 2 | Δ counting CFG 1 | Δ OCR exact CFG 2 | Δ OCR reward CFG 2 |", "|---|---|---|---|---|"]
        for r in bases:
            get = lambda k: points(r[k]) if k in r else "–"  # noqa: E731
            lines.append(f"| {r['name']} | {get('counting_cfg2')} | {get('counting_cfg1')} | {get('exact_cfg2')} | {get('reward_cfg2')} |")
    write_results("gt_ceiling_paired", {"runs": rows, "bases": bases}, lines)


if __name__ == "__main__":
    main()
