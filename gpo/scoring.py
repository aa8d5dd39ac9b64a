"""Reward scoring of a round's groups: reward per image, group mean/std, standardized advantage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from gpo.evaluate import Scorers, save_table
from gpo.groups import load_images
from gpo.loss import group_advantages
from gpo.model.device import process_state
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
    """Score every image of the manifest; write `<round>/rewards.parquet`.

    Under `accelerate launch` scoring is rank-local: each rank scores the whole groups it would have
    generated (group % world == rank), the scores are gathered, and the main process writes the table
    (every rank returns it)."""
    state = process_state()
    mine = groups[groups["group"] % state.num_processes == state.process_index] if state.num_processes > 1 else groups
    scores = scorers.score(load_images(mine, folder), [row_prompt(r) for r in mine.itertuples()])
    rows = [(int(i), s.raw, s.reward, s.correct, s.error) for i, s in zip(mine.index, scores)]
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    by_index = {r[0]: r[1:] for r in rows}
    table = groups.copy()
    for k, col in enumerate(("raw", "reward", "correct", "error")):
        table[col] = [by_index[int(i)][k] for i in table.index]
    table = add_advantages(table)
    if state.is_main_process:
        save_table(table, Path(folder) / "rewards.parquet")
    state.wait_for_everyone()
    return table
