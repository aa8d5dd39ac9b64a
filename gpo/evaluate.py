"""Evaluation on held-out prompts: generate prompts × seeds, score, summarise with 95% intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import pandas as pd
from PIL import Image

from gpo.metrics import accuracy, mean_interval, pass_at_k_curve
from gpo.prompts import HELDOUT_SPLITS, Prompt
from gpo.errors import GpoError
from gpo.rewards.arith import Score, failed_score


class Scorer(Protocol):
    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]: ...


@dataclass(frozen=True)
class Judged(Score):
    """A held-out image's reward-model score with the second opinion's beside it (None: not judged)."""

    second: Score | None = None


def _second_opinion() -> Scorer:
    from gpo.rewards.second_opinion import SecondOpinion

    return SecondOpinion()


@dataclass
class Scorers:
    """The reward model for each task (injected: real models in use, anything with `.score` in tests).

    A reward model that raises, or returns a reward outside [0, 1], fails only the images concerned:
    they get `failed_score` (reward NaN, the reason in `error`) and are left out of group statistics,
    training and metrics. More than `max_failed_share` failed images in one call stops the run.

    `second`: the second opinion (gpo/rewards/second_opinion.py, no YOLO, no EasyOCR), which judges
    held-out images only (HELDOUT_SPLITS: evaluations and ground-truth checks), so nothing is ever
    trained on it; its scores ride on the reward model's as `Judged.second` into the score table.
    It returns None for images it cannot judge; None here: no second opinion."""

    counting: Scorer
    text: Scorer
    max_failed_share: float = 0.05
    second: Scorer | None = field(default_factory=_second_opinion)

    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]:
        """Scores in input order; each prompt goes to its task's scorer in one batched call."""
        out: list[Score | None] = [None] * len(prompts)
        for task, scorer in (("counting", self.counting), ("text", self.text)):
            idx = [i for i, p in enumerate(prompts) if p.task == task]
            if idx:
                for i, s in zip(idx, _score_isolated(scorer, [images[i] for i in idx], [prompts[i] for i in idx])):
                    out[i] = s
        failed = [(prompts[i].text, s.error) for i, s in enumerate(out) if s is not None and s.error]
        if out and len(failed) / len(out) > self.max_failed_share:
            raise GpoError(f"the reward models failed on {len(failed)} of {len(out)} images "
                           f"(first: {failed[0][0]!r}: {failed[0][1]})", field="max_failed_share (params/rewards.yaml)",
                           value=self.max_failed_share, fix="check the detector/OCR weights and the images; "
                           "raise max_failed_share only if occasional failures are expected")
        held = [i for i, p in enumerate(prompts) if p.split in HELDOUT_SPLITS]
        if self.second is not None and held:
            seconds = _second_isolated(self.second, [images[i] for i in held], [prompts[i] for i in held])
            for i, sec in zip(held, seconds):
                s = out[i]
                out[i] = Judged(s.reward, s.correct, s.raw, s.error, second=sec)  # type: ignore[union-attr]
        return out  # type: ignore[return-value]


def _check(s: Score) -> Score:
    if s.error:
        return s
    if not (0.0 <= s.reward <= 1.0):  # also catches NaN
        return failed_score(f"reward model returned reward {s.reward!r}, outside [0, 1]")
    return s


def _score_isolated(scorer: Scorer, images: list, prompts: list) -> list[Score]:
    """One batched call; if it raises or returns the wrong number of scores, score image by image so a
    failure stays with the image that caused it."""
    try:
        scores = list(scorer.score(images, prompts))
        if len(scores) == len(images):
            return [_check(s) for s in scores]
    except Exception:  # noqa: BLE001 - any reward-model failure is isolated below, per image
        pass
    out = []
    for im, p in zip(images, prompts):
        try:
            got = list(scorer.score([im], [p]))
            out.append(_check(got[0]) if len(got) == 1 else failed_score(f"reward model returned {len(got)} scores for 1 image"))
        except Exception as err:  # noqa: BLE001
            out.append(failed_score(f"{type(err).__name__}: {err}"[:300]))
    return out


def _second_isolated(scorer: Scorer, images: list, prompts: list) -> list[Score | None]:
    """The second opinion's scores; one that raises fails its images (an error kept), never the evaluation."""
    try:
        got = list(scorer.score(images, prompts))
        if len(got) == len(images):
            return [None if s is None else _check(s) for s in got]
        reason = f"second opinion returned {len(got)} scores for {len(images)} images"
    except Exception as err:  # noqa: BLE001 - reported in the table, the reward models' scores stand
        reason = f"{type(err).__name__}: {err}"[:300]
    return [failed_score(reason) for _ in images]


def score_table(prompts: Sequence[Prompt], seeds: Sequence[int], scores: Sequence[Score]) -> pd.DataFrame:
    """One row per image: prompt fields, seed, what the scorer saw, reward, correct; with second-opinion
    scores (`Judged`), also second_raw, second_reward, second_correct, second_error (NaN: not judged)."""
    table = pd.DataFrame([{
        "prompt": p.text, "task": p.task, "split": p.split, "cls": p.cls, "count": p.count, "word": p.word,
        "seed": seed, "raw": s.raw, "reward": s.reward, "correct": s.correct, "error": s.error,
    } for p, seed, s in zip(prompts, seeds, scores)])
    if any(getattr(s, "second", None) is not None for s in scores):
        seconds = [getattr(s, "second", None) for s in scores]
        table["second_raw"] = [None if x is None else x.raw for x in seconds]
        table["second_reward"] = [float("nan") if x is None else x.reward for x in seconds]
        table["second_correct"] = [None if x is None else bool(x.correct) for x in seconds]
        table["second_error"] = [None if x is None else x.error for x in seconds]
    return table


PASS_KS = (1, 2, 4, 8, 16)
SECOND = "second/"  # summary keys of the second opinion: second/<task>/<split>, same metrics and intervals


def second_summary(rows: pd.DataFrame) -> dict | None:
    """The second opinion on one task and split: its accuracy and mean reward (same arithmetic and
    intervals as the reward model's), per requested count for counting, and its agreement with the reward
    model (share of images both call right or both wrong; images either failed on are left out)."""
    if "second_reward" not in rows:
        return None
    judged = rows[rows["second_correct"].notna()]
    failed = judged["second_error"].notna()
    ok = judged[~failed]
    if ok.empty:
        return None
    entry = {"accuracy": accuracy(ok["second_correct"].astype(bool)).as_dict(),
             "mean_reward": mean_interval(ok["second_reward"]).as_dict(), "failed": int(failed.sum()),
             "not_judged": int(len(rows) - len(judged))}
    both = ok[ok["error"].isna()] if "error" in ok else ok
    if not both.empty:
        entry["agreement"] = accuracy(both["second_correct"].astype(bool) == both["correct"].astype(bool)).as_dict()
    if ok["task"].iloc[0] == "counting":
        entry["accuracy_by_count"] = {int(c): accuracy(r["second_correct"].astype(bool)).as_dict()
                                      for c, r in ok.groupby("count", sort=True)}
    return entry


def summarize(table: pd.DataFrame) -> dict:
    """Metrics per task and split: counting accuracy (+ per requested count), OCR accuracy, mean reward;
    where the table has second-opinion scores, the same under `second/<task>/<split>` (flat metrics and
    MLflow: second_<task>_<split>_accuracy, ...)."""
    out: dict = {}
    seconds: dict = {}
    for (task, split), all_rows in table.groupby(["task", "split"], sort=True):
        key = f"{task}/{split}"
        failed = all_rows["error"].notna() if "error" in all_rows else all_rows["reward"].isna()
        rows = all_rows[~failed]  # a reward-model failure is neither right nor wrong: left out, counted
        entry = {"accuracy": accuracy(rows["correct"]).as_dict(),
                 "mean_reward": mean_interval(rows["reward"]).as_dict(), "failed": int(failed.sum())}
        if task == "counting":
            entry["accuracy_by_count"] = {int(c): accuracy(r["correct"]).as_dict()
                                          for c, r in rows.groupby("count", sort=True)}
        # headroom: share of prompts with at least one correct image among k (k up to each prompt's seeds)
        entry["pass_at_k"] = {str(k): round(v, 4) for k, v in pass_at_k_curve(
            (r["correct"] for _, r in rows.groupby("prompt", sort=True)), PASS_KS).items()}
        out[key] = entry
        second = second_summary(all_rows)
        if second is not None:
            seconds[SECOND + key] = second
    return {**out, **seconds}


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
        second = key.startswith(SECOND)
        name = ("counting accuracy" if key.removeprefix(SECOND).startswith("counting") else "OCR accuracy (exact)")
        if second:
            name = f"second opinion: {name.replace('OCR', 'reading')}"
        metrics = [("accuracy", name), ("mean_reward", "second opinion: mean reward" if second else "mean reward")]
        if "agreement" in entry:
            metrics.append(("agreement", "second opinion: agrees with the reward model (right/wrong)"))
        for metric, label in metrics:
            e = entry[metric]
            lines.append(f"| {key} | {label} | {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}] | {e['n']} |")
        for c, e in entry.get("accuracy_by_count", {}).items():
            lines.append(f"| {key} | accuracy, count={c} | {e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}] | {e['n']} |")
        for k, v in entry.get("pass_at_k", {}).items():
            lines.append(f"| {key} | pass@{k} (prompts with ≥ 1 of {k} right) | {v:.3f} | |")
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, path: Path) -> Path:
    from gpo.io import atomic_write

    return atomic_write(Path(path), lambda tmp: table.to_parquet(tmp, index=False))
