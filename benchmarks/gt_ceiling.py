"""What supervised fine-tuning on rendered ground truth buys the shipped base: a ceiling for issue #13.

GPO learns from the model's own images; the world can also render the right answer. Continuing the
base's pretraining objective (gpo/pretrain.py `denoising_loss`, CFG dropout, AdamW) on ground truth of
the *train* prompts only, for a few hundred steps, and evaluating on the same held-out prompts and
seeds as the base, tells whether the tiny model can learn +20 points of held-out counting at all at
this compute, and how fast. This is a diagnostic (external data), never part of a round.

    python benchmarks/gt_ceiling.py NAME --steps 100 300 600 --lr 2e-5 [--task counting]

Evaluates after each listed step count (quick held-out evaluation as benchmarks/gpo_tuning.py:
8 seeds a counting prompt, 2 a text prompt, base on the same seeds from data/calibration).
Appends rows to benchmarks/results/gt_ceiling.json and rewrites gt_ceiling.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpo_tuning import quick_metrics, upsert_results  # noqa: E402

from gpo.calibrate import evaluate_model  # noqa: E402
from gpo.cli import _load, _ws  # noqa: E402
from gpo.model.build import load_pipeline  # noqa: E402
from gpo.pretrain import _trainable, denoising_loss  # noqa: E402
from gpo.prompts import read_prompts  # noqa: E402
from gpo.world.dataset import GroundTruthSampler, build_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 300, 600])
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=0, help="linear lr warm-up steps (fresh AdamW moments)")
    ap.add_argument("--ema", type=float, default=0.0, help="evaluate an EMA of the weights (started at the base)")
    ap.add_argument("--task", choices=["counting", "text"], default=None, help="ground truth of one task only")
    ap.add_argument("--gt-split", choices=["train", "heldout"], default="train",
                    help="heldout: ground truth of the held-out prompts themselves (can the model learn them at "
                         "all? a capacity probe, not a generalization result)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--counting-seeds", type=int, default=8)
    ap.add_argument("--text-seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("data/gt_ceiling"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    world = _load(Path("params"), "world.yaml")
    pre = _load(Path("params"), "pretrain.yaml").pretrain
    e = _load(Path("params"), "eval.yaml").eval.model_copy(
        update={"counting_seeds": a.counting_seeds, "text_seeds": a.text_seeds, "heldout_word_seeds": 1})
    prompts = read_prompts(Path("data/prompts.jsonl"))
    scorers = _ws(Path("params")).scorers()
    pipe = load_pipeline(_load(Path("params"), "models.yaml").base)
    share = {"counting": 0.0, "text": 1.0}.get(a.task, pre.text_share)
    sampler = GroundTruthSampler(build_prompts(world.prompts), world.render, share, seed=1234)
    if a.gt_split == "heldout":
        held = [p for p in build_prompts(world.prompts) if p.split == "heldout"]
        sampler.counting = [p for p in held if p.task == "counting"]
        sampler.text = [p for p in held if p.task == "text"]
    params = [q for m in _trainable(pipe).values() for q in m.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=pre.weight_decay)
    gen = torch.Generator().manual_seed(1234)
    ema = [q.detach().clone() for q in params] if a.ema else None
    base_t = pd.read_parquet("data/calibration/base_scores.parquet")
    off = e.seed_offset
    keep = ((base_t.task == "counting") & (base_t.seed < off + a.counting_seeds)) | (
        (base_t.task == "text") & (base_t.seed < off + a.text_seeds))
    base = quick_metrics(base_t[keep])
    done, train_s = 0, 0.0
    for target in sorted(a.steps):
        pipe.denoiser.train()
        pipe.text_encoder.train()
        t0 = time.time()
        for step in range(done, target):
            texts, x0 = sampler.batch(a.batch_size)
            drop = torch.rand(len(texts), generator=gen) < pre.cfg_dropout
            texts = ["" if d else t for t, d in zip(texts, drop.tolist())]
            loss = denoising_loss(pipe, texts, x0, gen, pre.flow_density)
            for group in opt.param_groups:
                group["lr"] = a.lr * min(1.0, (step + 1) / max(1, a.warmup))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [q.detach() for q in params], 1 - a.ema)
        train_s += time.time() - t0
        done = target
        pipe.denoiser.eval()
        pipe.text_encoder.eval()
        folder = a.out / a.name / f"step-{target}"
        if ema is not None:  # evaluate the EMA, keep training the raw iterate
            raw = [q.detach().clone() for q in params]
            with torch.no_grad():
                torch._foreach_copy_([q.data for q in params], ema)
        evaluate_model(pipe, prompts, scorers, e, folder, "final", progress=False)
        if ema is not None:
            with torch.no_grad():
                torch._foreach_copy_([q.data for q in params], raw)
        final = quick_metrics(pd.read_parquet(folder / "final_scores.parquet"))
        row = {"name": f"{a.name}@{target}", "lr": a.lr, "warmup": a.warmup, "ema": a.ema, "task": (a.task or "both") + ("" if a.gt_split == "train" else ", held-out prompts"), "steps": target,
               "images_seen": target * a.batch_size, "train_seconds": round(train_s), "base": base, "final": final}
        print(f"step {target}: loss {loss.item():.4f} {final}", flush=True)
        header = ["| run | lr (warm-up, EMA) | ground truth of | steps (images) | train s | counting acc base → final | "
                  "OCR reward base → final | OCR exact base → final | counting by count (final) |",
                  "|---|---|---|---|---|---|---|---|---|"]

        def render(r: dict) -> str:
            b, f = r["base"], r["final"]
            return (f"| {r['name']} | {r['lr']:g} ({r.get('warmup', 0)}, {r.get('ema', 0)}) | {r['task']} | {r['steps']} ({r['images_seen']}) | "
                    f"{r['train_seconds']} | {b['counting_acc']:.3f} → {f['counting_acc']:.3f} | "
                    f"{b['ocr_reward']:.3f} → {f['ocr_reward']:.3f} | {b['ocr_exact']:.3f} → {f['ocr_exact']:.3f} | "
                    f"{f['counting_by_count']} |")

        upsert_results("gt_ceiling", row, header, render)


if __name__ == "__main__":
    main()
