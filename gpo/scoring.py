"""Reward scoring of a round's groups: reward per image, group mean/std, standardized advantage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from gpo.evaluate import Scorers, save_table
from gpo.groups import load_images
from gpo.loss import group_advantages
from gpo.prompts import Prompt


def row_prompt(r) -> Prompt:
    return Prompt(text=r.prompt, task=r.task, split=r.split, cls=r.cls, color=r.color,
                  count=None if pd.isna(r.count) else int(r.count), word=r.word)


def add_advantages(table: pd.DataFrame, eps: float = 1e-4, clip: float = 5.0) -> pd.DataFrame:
    """Group statistics and A_i (docs/GPO.md step 4); zero-spread groups are flagged `dropped`."""
    out = table.copy()
    ok = out["reward"].notna()  # failed images (reward NaN) are left out of their group
    out["group_mean"] = out["reward"].where(ok).groupby(out["group"]).transform("mean")
    out["group_std"] = out["reward"].where(ok).groupby(out["group"]).transform(lambda r: r.dropna().std(ddof=0))
    out["advantage"] = float("nan")
    for _, idx in out[ok].groupby("group").groups.items():
        r = torch.tensor(out.loc[idx, "reward"].to_numpy(), dtype=torch.float64)
        out.loc[idx, "advantage"] = group_advantages(r[None], eps, clip)[0].numpy()
    counts = ok.groupby(out["group"]).transform("sum")
    out["dropped"] = (out["group_std"].fillna(0) == 0) | (counts < 2)  # no spread or < 2 scored members
    return out


def score_groups(groups: pd.DataFrame, folder: Path, scorers: Scorers) -> pd.DataFrame:
    """Score every image of the manifest; write `<round>/rewards.parquet`."""
    images = load_images(groups, folder)
    scores = scorers.score(images, [row_prompt(r) for r in groups.itertuples()])
    table = groups.copy()
    table["raw"] = [s.raw for s in scores]
    table["reward"] = [s.reward for s in scores]
    table["correct"] = [s.correct for s in scores]
    table["error"] = [s.error for s in scores]
    table = add_advantages(table)
    save_table(table, Path(folder) / "rewards.parquet")
    return table
