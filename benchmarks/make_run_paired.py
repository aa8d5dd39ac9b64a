"""A `make run`'s rounds against its base, image by image: the paired differences behind issue #13's table.

Reads a workspace's evaluation tables: the base's (data/calibration/base_scores.parquet) and each finished
round's (data/rounds/round-I/eval/model_scores.parquet), all drawn with eval.yaml's prompts and seeds. Every
image is paired with the base's image of the same prompt and seed: held-out counting accuracy (overall and
per requested count: a "draw fewer" shift shows as large counts falling), OCR exact and mean reward on the
held-out prompts and on the unseen words. Nothing is drawn again.

    python benchmarks/make_run_paired.py --workspace /path/to/clone --name fresh_clone_2026-12-06

Writes benchmarks/results/make_run_paired.{json,md} (a row per run name and round, replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from gpo_tuning import RESULTS, points, write_results  # noqa: E402
from transfer_gap import paired_by_count  # noqa: E402

from gpo.metrics import mean_interval  # noqa: E402
from gpo.study import image_diffs  # noqa: E402

# (label, task, split, column) of every paired difference in a row
DELTAS = [("counting", "counting", "heldout", "correct"), ("OCR exact", "text", "heldout", "correct"),
          ("OCR reward", "text", "heldout", "reward"), ("unseen words exact", "text", "heldout_words", "correct"),
          ("unseen words reward", "text", "heldout_words", "reward")]


def compare(name: str, rnd: int, table: pd.DataFrame, base: pd.DataFrame) -> dict:
    row = {"name": name, "round": rnd}
    for label, task, split, column in DELTAS:
        d = [v for v in image_diffs(table, base, task, column, split) if v == v]  # failed images: NaN, left out
        row[label] = {**mean_interval(d).as_dict(), "n": len(d)} if d else None
    row["by_count"] = paired_by_count(table[table.split == "heldout"], base[base.split == "heldout"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=Path("."))
    ap.add_argument("--name", default="make_run")
    a = ap.parse_args()
    ws = a.workspace
    base = pd.read_parquet(ws / "data" / "calibration" / "base_scores.parquet")
    rows = []
    for folder in sorted((ws / "data" / "rounds").glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        scores = folder / "eval" / "model_scores.parquet"
        if folder.name == "round-0" or not scores.exists():
            continue
        row = compare(a.name, int(folder.name.split("-")[1]), pd.read_parquet(scores), base)
        champ = folder / "champion.json"
        row["champion_after"] = json.loads(champ.read_text()).get("round") if champ.exists() else None
        rows.append(row)
    if not rows:
        raise SystemExit(f"no evaluated round under {ws / 'data' / 'rounds'}: run `make run` there first")
    path = RESULTS / "make_run_paired.json"
    old = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["name"] != a.name]
    rows = old + rows
    counts = sorted({c for r in rows for c in r["by_count"]}, key=int)
    lines = ["Paired with the base on the same prompts and seeds (Δ in points, 95% interval):", "",
             "| run | round | " + " | ".join(f"Δ {label}" for label, *_ in DELTAS) + " | "
             + " | ".join(f"Δ {c} asked" for c in counts) + " |",
             "|---|---|" + "---|" * (len(DELTAS) + len(counts))]
    for r in rows:
        cells = [f"{points(r[label])} (n {r[label]['n']})" if r[label] else "" for label, *_ in DELTAS]
        cells += [points(r["by_count"][c]) if c in r["by_count"] else "" for c in counts]
        lines.append(f"| {r['name']} | {r['round']} | " + " | ".join(cells) + " |")
    write_results("make_run_paired", rows, lines)


if __name__ == "__main__":
    main()
