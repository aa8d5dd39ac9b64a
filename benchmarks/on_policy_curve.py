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
from gpo.round import RoundDir  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _index(p: Path) -> int:
    return int(p.name.split("-")[1])


def curve(folder: Path) -> list[dict]:
    """One row per (round, iteration, task): its images' correct share and mean reward, and the drift of that
    iteration's training (the mean delta_above / delta_below of its last six logged steps: how much worse the
    policy fits the winners / losers than the iteration's reference by the iteration's end)."""
    rows = []
    for root in sorted((r for r in folder.glob("round-*") if _index(r) >= 1), key=_index):  # round 0: the base
        rd = RoundDir(root, max(1, len(list(root.glob("iter-*")))))
        for j, part in enumerate(rd.parts, start=1):
            if not part.rewards.exists():
                return rows  # an unfinished iteration ends the arm
            tail = part.train_log()[-6:]
            drift = {k: (sum(r[k] for r in tail) / len(tail) if tail else None) for k in ("delta_above", "delta_below")}
            d = pd.read_parquet(part.rewards)
            for task, g in d.groupby("task"):
                rows.append({"round": _index(root), "iteration": j, "task": str(task), "n": len(g),
                             "correct": int(g["correct"].sum()), "reward": float(g["reward"].mean()), **drift})
    return rows


def blocks(rows: list[dict], size: int) -> list[dict]:
    """Iterations 1..size, size+1..2·size, ... of each round, pooled per task, with a 95% Wilson interval;
    the drift is the mean over the block's trained iterations."""
    out = []
    df = pd.DataFrame(rows)
    df["block"] = (df["iteration"] - 1) // size
    for (r, task, _), b in df.groupby(["round", "task", "block"]):
        n, k = int(b["n"].sum()), int(b["correct"].sum())
        est = wilson(k, n)
        trained = b.dropna(subset=["delta_above"])
        out.append({"round": int(r), "task": task, "iterations": f"{b.iteration.min()}–{b.iteration.max()}",
                    "n": n, "correct": est.value, "lo": est.low, "hi": est.high,
                    "reward": float((b["reward"] * b["n"]).sum() / n),
                    "delta_above": float(trained["delta_above"].mean()) if len(trained) else None,
                    "delta_below": float(trained["delta_below"].mean()) if len(trained) else None})
    return out


def markdown(arms: dict) -> str:
    lines = ["# On-policy learning curves of semi-online chains", "",
             "Share of each block of iterations' own group images called correct (95% Wilson interval), and their "
             "mean reward; the drift is how much worse the policy fits an iteration's winners / losers than that "
             "iteration's reference by its end (the mean delta_above / delta_below of its last six training steps, "
             "averaged over the block; the reference is the iteration's start unless the arm says otherwise). "
             "Written by `benchmarks/on_policy_curve.py`; the arms' commands are in docs/gpo.md.", ""]
    for name, arm in arms.items():
        lines += [f"## {name}", "", f"`{arm['folder']}`: {arm['note']}" if arm.get("note") else f"`{arm['folder']}`", "",
                  "| round | iterations | task | images | correct [95%] | mean reward | drift ×10⁻³: winners / losers |",
                  "|---|---|---|---|---|---|---|"]
        drift = lambda b: ("" if b.get("delta_above") is None  # noqa: E731
                           else f"{1e3 * b['delta_above']:.1f} / {1e3 * b['delta_below']:.1f}")
        lines += [f"| {b['round']} | {b['iterations']} | {b['task']} | {b['n']} | {b['correct']:.3f} "
                  f"[{b['lo']:.3f}, {b['hi']:.3f}] | {b['reward']:.3f} | {drift(b)} |" for b in arm["blocks"]]
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
