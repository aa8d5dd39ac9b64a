"""Does a GPO update reach the sampler? Train once on a fixed set of scored groups, then regenerate
the same prompts with the same seeds and score them again (a paired, same-seed check).

The groups are a round's `groups/` folder: by default the shipped base's own round-1 groups for 108
train prompts (all 54 counting ones and 54 text ones; G = 8), made here on first use: the same prompts,
seeds and images as round 1 of the H tuning run (`groups.prompts_per_round=108`). Every configuration
trains the base on those same groups, so rows differ only by the knobs. The check regenerates members 0..M−1 of every group (M = 2:
216 images) with the trained model and compares reward and accuracy with the base's, image by image.
A training step that cannot raise the reward of the very seeds it trained on will not raise held-out
accuracy (for that, benchmarks/gpo_tuning.py).

    python benchmarks/gpo_fixed_data.py D0_default
    python benchmarks/gpo_fixed_data.py D5_seednoise train.noise=seed
    python benchmarks/gpo_fixed_data.py C2_gt_sft --control ground-truth-sft train.lr=1e-4 ...

Controls (`--control`, same trainer path, data, steps and check; only the loss or the images differ):
- winners-sft: no preference term; the advantage-weighted denoising loss of the above-average members
  (`anchor_term` kind sft alone: reward-weighted SFT on the model's own best samples, RAFT-style).
- ground-truth-sft: the plain denoising loss on *rendered ground truth* of each group's prompt instead
  of the generated images (perfect supervision): what fine-tuning at these settings does by itself.

Appends a row to benchmarks/results/gpo_fixed_data.json and rewrites gpo_fixed_data.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import gpo.train
from gpo.cli import _load, _ws
from gpo.generate import generate
from gpo.groups import model_inputs
from gpo.loss import LossOut, anchor_term, group_advantages, has_spread
from gpo.model.adapters import load_any
from gpo.prompts import read_prompts
from gpo.train import groups_from_table, train_gpo
from gpo.world.dataset import spec, to_tensor
from gpo.world.render import render as render_truth

from gpo_tuning import override, upsert_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

DATA = Path("data/fixed/base-round-1/groups")


def base_groups(folder: Path, base: Path, scorers) -> None:
    """Round 1's groups of the base for 108 train prompts, half counting (all 54), half text (generate + score,
    resumable)."""
    from gpo.round import RoundDir, step_generate, step_score

    prompts = read_prompts(Path("data/prompts.jsonl"))
    cfg = _load(Path("params"), "gpo.yaml")
    n = 2 * sum(p.split == "train" and p.task == "counting" for p in prompts)
    cfg = cfg.model_copy(update={"groups": cfg.groups.model_copy(update={"prompts_per_round": n, "text_share": 0.5})})
    rd = RoundDir(folder.parent)
    step_generate(1, base, rd, prompts, cfg, progress=False)
    step_score(rd, scorers)


def winners_sft_loss(delta, rewards, beta, *_, **__) -> LossOut:
    """Control: (β/2)·Σ A_i⁺ Δ_i / G per group with spread, no preference term (the reference term of Δ
    carries no gradient, so this is the policy's denoising loss on the above-average members, advantage-weighted)."""
    keep = has_spread(rewards)
    per = anchor_term(delta, group_advantages(rewards.detach().to(delta.dtype)), beta, "sft")
    zero = torch.tensor(0.0)
    return LossOut(per[keep].mean() if keep.any() else delta.sum() * 0, zero, zero, int(keep.sum()))


def plain_sft_loss(delta, rewards, beta, *_, **__) -> LossOut:
    """Control: (β/2)·mean Δ over every member: the plain denoising loss (the reference term has no gradient)."""
    zero = torch.tensor(0.0)
    return LossOut((beta / 2) * delta.mean(), zero, zero, delta.shape[0])


def ground_truth(table: pd.DataFrame) -> torch.Tensor:
    """A rendered ground-truth image of each row's prompt (render seed 10⁷ + image seed), in table order."""
    by_text = {p.text: p for p in read_prompts(Path("data/prompts.jsonl"))}
    sp = spec(_load(Path("params"), "world.yaml").render)
    return to_tensor([render_truth(by_text[t], 10_000_000 + int(s), sp).image for t, s in zip(table.prompt, table.seed)])


def same_seed_check(model: Path, base: Path, table: pd.DataFrame, members: int, scorers, sampling) -> dict:
    """Reward, accuracy and mean absolute pixel change on the first `members` seeds of every group."""
    t = table[table.member < members].reset_index(drop=True)
    by_text = {p.text: p for p in read_prompts(Path("data/prompts.jsonl"))}
    prompts = [by_text[x] for x in t.prompt]
    kw = dict(sampling.sampler_kwargs(), progress=False)  # the groups' own sampler (params/gpo.yaml groups)
    new = generate(load_any(model), list(t.prompt), list(t.seed), **kw)
    old = generate(load_any(base), list(t.prompt), list(t.seed), **kw)
    scores = scorers.score(new, prompts)
    t["new_reward"] = [s.reward for s in scores]
    t["new_correct"] = [s.correct for s in scores]
    t["pixel_change"] = [np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() / 255 for a, b in zip(new, old)]
    return {task: {"n": len(d), "reward": [round(d.reward.mean(), 3), round(d.new_reward.mean(), 3)],
                   "accuracy": [round(d.correct.mean(), 3), round(d.new_correct.mean(), 3)],
                   "pixel_change": round(float(d.pixel_change.mean()), 4)} for task, d in t.groupby("task")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="*", help="section.field=value on params/gpo.yaml")
    ap.add_argument("--base", type=Path, default=None, help="the model trained and checked (default: models.yaml's base)")
    ap.add_argument("--data", type=Path, default=None, help="a round's groups/ folder (rewards.parquet + images); "
                    f"default {DATA}, or data/fixed/<base folder name>-round-1/groups with --base")
    ap.add_argument("--members", type=int, default=2, help="seeds per group in the same-seed check")
    ap.add_argument("--out", type=Path, default=Path("data/fixed"))
    ap.add_argument("--control", choices=["winners-sft", "ground-truth-sft"], default=None,
                    help="replace the GPO loss by a control (module docstring)")
    a = ap.parse_intermixed_args()
    cfg = override(_load(Path("params"), "gpo.yaml"), a.overrides)
    base = a.base or Path(_load(Path("params"), "models.yaml").base)
    a.data = a.data or (DATA if a.base is None else Path("data/fixed") / f"{a.base.name}-round-1" / "groups")
    scorers = _ws(Path("params")).scorers()
    if not (a.data / "rewards.parquet").exists():
        base_groups(a.data, base, scorers)
    table = pd.read_parquet(a.data / "rewards.parquet")
    pipe = load_any(base)
    x0 = ground_truth(table) if a.control == "ground-truth-sft" else model_inputs(table, a.data, pipe.encode_images)
    groups = groups_from_table(table, x0=x0)
    if a.control:  # the trainer's loss, swapped for this process only (a benchmark, not a training option)
        gpo.train.gpo_loss = winners_sft_loss if a.control == "winners-sft" else plain_sft_loss
    folder = a.out / a.name
    t0 = time.time()
    model = train_gpo(pipe, groups, cfg.train, folder / "train", progress=False)
    train_s = time.time() - t0
    log = json.loads((folder / "train" / "train_log.json").read_text())
    tail = log[-max(1, len(log) // 4):]  # the last quarter of the steps
    fit = {k: round(sum(r[k] for r in tail) / len(tail), 6) for k in ("loss", "implicit_accuracy", "delta_above", "delta_below")}
    row = {"name": a.name, "overrides": a.overrides + ([f"--control {a.control}"] if a.control else [])
           + ([f"--base {a.base}"] if a.base else []), "groups": len(groups), "steps": len(log), "train_s": round(train_s),
           "fit_last_quarter": fit,
           "same_seed": same_seed_check(model, base, table, a.members, scorers, cfg.groups)}
    header = ["| name | overrides | steps | Δ above / below avg (last ¼) | implicit acc | counting reward (same seeds) | "
              "counting acc | text reward | text exact | pixel change c / t |", "|---|---|---|---|---|---|---|---|---|---|"]
    upsert_results("gpo_fixed_data", row, header, render)


def render(r: dict) -> str:
    c, t, f = r["same_seed"]["counting"], r["same_seed"]["text"], r["fit_last_quarter"]
    return (f"| {r['name']} | {' '.join(r['overrides'])} | {r['steps']} | {f['delta_above']:.4f} / {f['delta_below']:.4f} | "
            f"{f['implicit_accuracy']:.2f} | {c['reward'][0]:.3f} → {c['reward'][1]:.3f} | {c['accuracy'][0]:.3f} → "
            f"{c['accuracy'][1]:.3f} | {t['reward'][0]:.3f} → {t['reward'][1]:.3f} | {t['accuracy'][0]:.3f} → "
            f"{t['accuracy'][1]:.3f} | {c['pixel_change']:.3f} / {t['pixel_change']:.3f} |")


if __name__ == "__main__":
    main()
