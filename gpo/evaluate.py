"""Evaluation on held-out prompts: generate prompts × seeds, score, summarise with 95% intervals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import pandas as pd
from PIL import Image

from gpo.metrics import accuracy, mean_interval
from gpo.prompts import Prompt
from gpo.rewards.arith import Score


class Scorer(Protocol):
    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]: ...


@dataclass
class Scorers:
    """The reward model for each task (injected: real models in use, anything with `.score` in tests)."""

    counting: Scorer
    text: Scorer

    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]:
        """Scores in input order; each prompt goes to its task's scorer in one batched call."""
        out: list[Score | None] = [None] * len(prompts)
        for task, scorer in (("counting", self.counting), ("text", self.text)):
            idx = [i for i, p in enumerate(prompts) if p.task == task]
            if idx:
                for i, s in zip(idx, scorer.score([images[i] for i in idx], [prompts[i] for i in idx])):
                    out[i] = s
        return out  # type: ignore[return-value]


def score_table(prompts: Sequence[Prompt], seeds: Sequence[int], scores: Sequence[Score]) -> pd.DataFrame:
    """One row per image: prompt fields, seed, what the scorer saw, reward, correct."""
    return pd.DataFrame([{
        "prompt": p.text, "task": p.task, "split": p.split, "cls": p.cls, "count": p.count, "word": p.word,
        "seed": seed, "raw": s.raw, "reward": s.reward, "correct": s.correct,
    } for p, seed, s in zip(prompts, seeds, scores)])


def summarize(table: pd.DataFrame) -> dict:
    """Metrics per task and split: counting accuracy (+ per requested count), OCR accuracy, mean reward."""
    out: dict = {}
    for (task, split), rows in table.groupby(["task", "split"], sort=True):
        key = f"{task}/{split}"
        entry = {"accuracy": accuracy(rows["correct"]).as_dict(),
                 "mean_reward": mean_interval(rows["reward"]).as_dict()}
        if task == "counting":
            entry["accuracy_by_count"] = {int(c): accuracy(r["correct"]).as_dict()
                                          for c, r in rows.groupby("count", sort=True)}
        out[key] = entry
    return out


def eval_plan(prompts: Sequence[Prompt], seeds_per_prompt: dict[str, int], seed_offset: int
              ) -> tuple[list[Prompt], list[int]]:
    """Every prompt × its task's seeds (seed_offset, seed_offset+1, ...), same for every model."""
    plan_p, plan_s = [], []
    for p in prompts:
        for j in range(seeds_per_prompt[p.task if p.split != "heldout_words" else "heldout_words"]):
            plan_p.append(p)
            plan_s.append(seed_offset + j)
    return plan_p, plan_s


def markdown(summary: dict, title: str) -> str:
    lines = [f"### {title}", "", "| task / split | metric | value [95% CI] | n |", "|---|---|---|---|"]
    for key, entry in summary.items():
        name = "counting accuracy" if key.startswith("counting") else "OCR accuracy (exact)"
        for metric, label in (("accuracy", name), ("mean_reward", "mean reward")):
            e = entry[metric]
            lines.append(f"| {key} | {label} | {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}] | {e['n']} |")
        for c, e in entry.get("accuracy_by_count", {}).items():
            lines.append(f"| {key} | accuracy, count={c} | {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}] | {e['n']} |")
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, path: Path) -> Path:
    from gpo.io import atomic_write

    return atomic_write(Path(path), lambda tmp: table.to_parquet(tmp, index=False))
