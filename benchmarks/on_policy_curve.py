"""The on-policy learning curve of semi-online chains: the share of each iteration's own group images that
the reward models call correct, per task, iteration by iteration (free: the groups are scored anyway).

Each arm is a folder of rounds (round-1/iter-1/groups/rewards.parquet, ...): a workspace's data/rounds or a
gpo_tuning row's data/tuning/NAME. Iterations of different arms draw different prompts unless their
groups params match, so compare blocks of iterations (the mean of --block iterations, with a Wilson
interval over their images), not single iterations.

    python benchmarks/on_policy_curve.py NAME=FOLDER [NAME=FOLDER ...] --block 5

Writes benchmarks/results/on_policy_curve.json (one entry per arm, replacing an arm of the same name) and
rewrites on_policy_curve.md.
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpo.io import atomic_write_json, atomic_write_text  # noqa: E402
from gpo.metrics import wilson  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def curve(folder: Path) -> list[dict]:
    """One row per (round, iteration) with its images' correct share and mean reward per task."""
    rows = []
    for rd in sorted(folder.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        parts = sorted(rd.glob("iter-*"), key=lambda p: int(p.name.split("-")[1])) or [rd]
        for j, part in enumerate(parts, start=1):
            table = part / "groups" / "rewards.parquet"
            if not table.exists():
                break  # an unfinished iteration ends the arm
            d = pd.read_parquet(table)
            for task, g in d.groupby("task"):
                rows.append({"round": int(rd.name.split("-")[1]), "iteration": j, "task": str(task),
                             "n": len(g), "correct": int(g["correct"].sum()), "reward": float(g["reward"].mean())})
    return rows


def blocks(rows: list[dict], size: int) -> list[dict]:
    """Consecutive iterations of a round in blocks of `size`, pooled per task, with a 95% Wilson interval."""
    out = []
    df = pd.DataFrame(rows)
    for (r, task), g in df.groupby(["round", "task"]):
        g = g.sort_values("iteration")
        for start in range(0, len(g), size):
            b = g.iloc[start:start + size]
            n, k = int(b["n"].sum()), int(b["correct"].sum())
            est = wilson(k, n)
            out.append({"round": int(r), "task": task, "iterations": f"{b.iteration.min()}–{b.iteration.max()}",
                        "n": n, "correct": est.value, "lo": est.low, "hi": est.high, "reward": float((b["reward"] * b["n"]).sum() / n)})
    return out


def markdown(arms: dict) -> str:
    lines = ["# On-policy learning curves of semi-online chains", "",
             "Share of each block of iterations' own group images called correct (95% Wilson interval), and their "
             "mean reward. Written by `benchmarks/on_policy_curve.py`; the arms' commands are in docs/gpo.md.", ""]
    for name, arm in arms.items():
        lines += [f"## {name}", "", f"`{arm['folder']}`: {arm['note']}" if arm.get("note") else f"`{arm['folder']}`", "",
                  "| round | iterations | task | images | correct [95%] | mean reward |", "|---|---|---|---|---|---|"]
        lines += [f"| {b['round']} | {b['iterations']} | {b['task']} | {b['n']} | {b['correct']:.3f} "
                  f"[{b['lo']:.3f}, {b['hi']:.3f}] | {b['reward']:.3f} |" for b in arm["blocks"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("arms", nargs="+", help="NAME=FOLDER (a folder of round-I/ directories)")
    ap.add_argument("--block", type=int, default=5, help="iterations pooled per row")
    ap.add_argument("--note", default="", help="what the arms are (stored with each)")
    a = ap.parse_args()
    out = RESULTS / "on_policy_curve.json"
    arms = json.loads(out.read_text()) if out.exists() else {}
    for spec in a.arms:
        name, _, folder = spec.partition("=")
        rows = curve(Path(folder))
        if not rows:
            raise SystemExit(f"{folder}: no round-*/iter-*/groups/rewards.parquet; pass a folder of rounds")
        arms[name] = {"folder": folder, "note": a.note, "block": a.block, "iterations": rows,
                      "blocks": blocks(rows, a.block)}
    atomic_write_json(out, arms)
    md = markdown(arms)
    atomic_write_text(RESULTS / "on_policy_curve.md", md)
    print(md)


if __name__ == "__main__":
    main()
