"""One self-improvement round (generate → score → train → evaluate) and a chain of rounds.

Everything a round writes is under its folder:
    groups/images/...png, groups/groups.parquet, groups/rewards.parquet   (generation + scoring)
    train/pipeline, train/checkpoints, train/train_log.json              (GPO fine-tuning)
    eval/model_scores.parquet, eval/*_grid.png, eval/summary.json        (held-out evaluation)
    summary.json                                                          (metrics + time split)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from gpo.calibrate import evaluate_model, flat_metrics
from gpo.evaluate import Scorers
from gpo.groups import generate_groups, load_images, pick_prompts
from gpo.io import atomic_write_json
from gpo.model.adapters import load_any
from gpo.params import EvalParams, GpoFile
from gpo.prompts import Prompt
from gpo.scoring import score_groups
from gpo.train import groups_from_table, train_gpo


def headline(summary: dict) -> float:
    """The number rounds are compared by: mean of held-out counting accuracy and held-out mean OCR reward."""
    return (summary["counting/heldout"]["accuracy"]["value"] + summary["text/heldout"]["mean_reward"]["value"]) / 2


@dataclass
class RoundResult:
    index: int
    model: Path
    summary: dict  # evaluation summary (evaluate.summarize) + seconds


def evaluate_once(model: Path, prompts: list[Prompt], scorers: Scorers, e: EvalParams, out: Path,
                  progress: bool = True) -> dict:
    """Evaluate a model unless `out/summary.json` already holds its evaluation (resume)."""
    done = Path(out) / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    summary = evaluate_model(load_any(model), prompts, scorers, e, Path(out), "model", progress)
    atomic_write_json(done, summary)
    return summary


def run_round(index: int, model_in: Path, folder: Path, prompts: list[Prompt], cfg: GpoFile, e: EvalParams,
              scorers: Scorers, progress: bool = True) -> RoundResult:
    folder = Path(folder)
    marker = folder / "summary.json"
    if marker.exists():
        s = json.loads(marker.read_text())
        return RoundResult(index, folder / "train" / "pipeline", s["eval"])
    times = {}
    t = time.time()
    pipe = load_any(model_in)
    chosen = pick_prompts(prompts, cfg.groups.prompts_per_round, index, cfg.groups.seed)
    groups = generate_groups(pipe, chosen, cfg.groups, index, folder / "groups", progress)
    times["generate"] = time.time() - t
    t = time.time()
    rewards = score_groups(groups, folder / "groups", scorers)
    times["score"] = time.time() - t
    t = time.time()
    n_dropped = int(rewards.groupby("group")["dropped"].first().sum())
    train_groups = groups_from_table(rewards, load_images(rewards, folder / "groups"), pipe.encode_images)
    model_out = train_gpo(pipe, train_groups, cfg.train, folder / "train", n_dropped=n_dropped, progress=progress)
    times["train"] = time.time() - t
    t = time.time()
    summary = evaluate_once(model_out, prompts, scorers, e, folder / "eval", progress)
    times["evaluate"] = time.time() - t
    record = {"round": index, "model_in": str(model_in), "model_out": str(model_out),
              "train_reward_mean": float(rewards["reward"].mean()),
              "dropped_group_share": n_dropped / max(1, rewards["group"].nunique()),
              "seconds": {k: round(v, 1) for k, v in times.items()}, "eval": summary,
              "metrics": flat_metrics(summary), "headline": headline(summary)}
    atomic_write_json(marker, record)
    return RoundResult(index, model_out, summary)


def run_rounds(base: Path, n: int, folder: Path, prompts: list[Prompt], cfg: GpoFile, e: EvalParams,
               scorers: Scorers, progress: bool = True) -> list[dict]:
    """Round 0 is the base model's evaluation; each round starts from the best model so far."""
    folder = Path(folder)
    base_summary = evaluate_once(base, prompts, scorers, e, folder / "round-0" / "eval", progress)
    rows = [{"round": 0, "model": str(base), "headline": headline(base_summary),
             "metrics": flat_metrics(base_summary), "seconds": {}, "champion": True}]
    champion, best = Path(base), headline(base_summary)
    for i in range(1, n + 1):
        r = run_round(i, champion, folder / f"round-{i}", prompts, cfg, e, scorers, progress)
        record = json.loads((folder / f"round-{i}" / "summary.json").read_text())
        better = record["headline"] > best
        if better:
            champion, best = r.model, record["headline"]
        rows.append({"round": i, "model": str(r.model), "headline": record["headline"],
                     "metrics": record["metrics"], "seconds": record["seconds"], "champion": better,
                     "started_from": record["model_in"]})
    atomic_write_json(folder / "rounds.json", {"champion": str(champion), "rounds": rows})
    return rows


def rounds_markdown(rows: list[dict]) -> str:
    lines = ["| round | counting acc (held-out) | OCR mean reward (held-out) | OCR exact | unseen words: OCR reward | "
             "generate s | score s | train s | champion |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, s = r["metrics"], r["seconds"]

        def ci(k):
            return f"{m[k]:.3f} [{m[k + '_low']:.3f}, {m[k + '_high']:.3f}]"

        lines.append(f"| {r['round']} | {ci('counting_heldout_accuracy')} | {ci('text_heldout_mean_reward')} | "
                     f"{ci('text_heldout_accuracy')} | {ci('text_heldout_words_mean_reward')} | "
                     f"{s.get('generate', 0):.0f} | {s.get('score', 0):.0f} | {s.get('train', 0):.0f} | "
                     f"{'yes' if r['champion'] else ''} |")
    return "\n".join(lines) + "\n"
