"""Gradient signal against noise: how alike are two estimates of one optimizer step's gradient computed
from independent sets of (t, ε) draws, as a function of K (train.draws, draws per group per step)?

The shipped base is both policy and reference (θ = ref, the start of every round); the step's groups are
the base's own scored groups for `--prompts` train prompts (half counting, half text; made on first use in
data/grad_signal/groups). For each K, `--repeats` pairs of gradients of the same step (the same
`groups_per_step` groups), each from its own draw seed; the cosine between the two of a pair. A cosine
near 0 means one step's direction is mostly the noise of the draw; near 1, the groups' preference.

    python benchmarks/grad_signal.py --ks 1 2 4 8 --repeats 6

Writes benchmarks/results/grad_signal.{json,md} (one row per K).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from gpo.cli import _load, _ws
from gpo.groups import model_inputs
from gpo.model.adapters import load_any
from gpo.prompts import read_prompts
from gpo.round import RoundDir, step_generate, step_score
from gpo.train import Reference, group_step, groups_from_table

from gpo_tuning import upsert_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def step_gradient(pipe, ref, groups, p, seed: int) -> torch.Tensor:
    pipe.denoiser.zero_grad(set_to_none=True)
    for slot, g in enumerate(groups):
        group_step(pipe, pipe.denoiser, ref, g, p, torch.Generator().manual_seed(seed * 1000 + slot), 1.0 / len(groups))
    return torch.cat([q.grad.flatten() for q in pipe.denoiser.parameters() if q.grad is not None])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--data", type=Path, default=Path("data/grad_signal"))
    a = ap.parse_args()
    cfg = _load(Path("params"), "gpo.yaml")
    base = Path(_load(Path("params"), "models.yaml").base)
    rd = RoundDir(a.data)
    if not rd.rewards.exists():
        g = cfg.groups.model_copy(update={"prompts_per_round": a.prompts, "text_share": 0.5})
        step_generate(1, base, rd, read_prompts(Path("data/prompts.jsonl")), cfg.model_copy(update={"groups": g}), False)
        step_score(rd, _ws(Path("params")).scorers())
    table = pd.read_parquet(rd.rewards)
    pipe = load_any(base)
    torch.set_num_threads(cfg.train.threads)
    groups = groups_from_table(table, x0=model_inputs(table, rd.groups, pipe.encode_images))
    step_groups = groups[: cfg.train.groups_per_step]
    ref = Reference(pipe.denoiser, lora=False)
    pipe.denoiser.train()
    for k in a.ks:
        p = cfg.train.model_copy(update={"draws": k})
        t0 = time.time()
        cos = []
        for r in range(a.repeats):
            g1, g2 = step_gradient(pipe, ref, step_groups, p, 2 * r + 1), step_gradient(pipe, ref, step_groups, p, 2 * r + 2)
            cos.append(float(torch.nn.functional.cosine_similarity(g1, g2, dim=0)))
        q = statistics.quantiles(cos, n=4) if len(cos) > 1 else [cos[0]] * 3
        row = {"name": f"K={k}", "draws": k, "groups_per_step": len(step_groups), "repeats": a.repeats,
               "cosine_median": round(statistics.median(cos), 4), "cosine_q1_q3": [round(q[0], 4), round(q[2], 4)],
               "cosines": [round(c, 4) for c in cos], "seconds_per_gradient": round((time.time() - t0) / (2 * a.repeats), 2)}
        header = ["| K (draws per group per step) | cosine of two same-step gradients, median [q1, q3] | repeats | "
                  "s per gradient |", "|---|---|---|---|"]
        upsert_results("grad_signal", row, header, lambda r: (
            f"| {r['draws']} | {r['cosine_median']:.3f} [{r['cosine_q1_q3'][0]:.3f}, {r['cosine_q1_q3'][1]:.3f}] | "
            f"{r['repeats']} | {r['seconds_per_gradient']} |"))


if __name__ == "__main__":
    main()
