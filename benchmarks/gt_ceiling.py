"""What supervised fine-tuning on rendered ground truth buys the shipped base: a ceiling for issue #13.

GPO learns from the model's own images; the world can also render the right answer. Continuing the
base's pretraining objective (gpo/pretrain.py `denoising_loss`, CFG dropout, AdamW) on ground truth of
the *train* prompts only, for a few hundred steps, and evaluating on the same held-out prompts and
seeds as the base, tells whether the tiny model can learn +20 points of held-out counting at all at
this compute, and how fast. This is a diagnostic (external data), never part of a round.

    python benchmarks/gt_ceiling.py NAME --steps 0 100 300 --lr 2e-5 [--task counting]
        [--freeze-text-encoder] [--cfg-dropout 0] [--eval-guidance 2 1]

Evaluates after each listed step count (step 0: the untouched base) at each listed guidance scale
(quick held-out evaluation as benchmarks/gpo_tuning.py: 8 seeds a counting prompt, 2 a text prompt;
the base row is the step-0 evaluation at the same guidance, or data/calibration's at the eval.yaml one).
It also measures the denoising loss on held-out counting ground truth at fixed (t, noise) draws,
per requested count, before and after: if training lowers that loss while the sampled counts get
worse, the fault is between the conditional model and the sampler (guidance), not the learning.
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
from gpo_tuning import add_quick_args, quick_base, quick_eval, quick_metrics, upsert_results  # noqa: E402

from gpo.calibrate import evaluate_model  # noqa: E402
from gpo.cli import _load, _ws  # noqa: E402
from gpo.model.build import load_pipeline  # noqa: E402
from gpo.pretrain import _trainable, denoising_loss  # noqa: E402
from gpo.prompts import read_prompts  # noqa: E402
from gpo.model.targets import noisy_and_target  # noqa: E402
from gpo.world.dataset import GroundTruthSampler, build_prompts, spec, to_tensor  # noqa: E402
from gpo.world.render import render  # noqa: E402


def loss_probe_set(world, seed: int, per_prompt: int = 8) -> list[tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, list[int]]]:
    """Fixed held-out counting ground truth with fixed (t, noise) draws: batches of (texts, x0, t, noise, counts)."""
    held = [p for p in build_prompts(world.prompts) if p.split == "heldout" and p.task == "counting"]
    sp, g = spec(world.render), torch.Generator().manual_seed(seed)
    out = []
    for i, p in enumerate(held):
        x0 = to_tensor([render(p, seed * 1000 + i * per_prompt + j, sp).image for j in range(per_prompt)])
        t = torch.linspace(50, 950, per_prompt).long()  # spread over the schedule, the same for every prompt
        out.append(([p.text] * per_prompt, x0, t, torch.randn(x0.shape, generator=g), [p.count] * per_prompt))
    return out


@torch.no_grad()
def probe_loss(pipe, probe) -> dict[str, float]:
    """Mean v-loss of the conditional prediction on the probe set, overall and per requested count."""
    abar = getattr(pipe.scheduler, "alphas_cumprod", None)
    per: dict[int, list[float]] = {}
    for texts, x0, t, noise, counts in probe:
        x_t, target = noisy_and_target(pipe.parameterization, x0, noise, t, abar)
        states, pooled = pipe.encode_prompt(texts)
        err = (pipe.predict(x_t, t, states, pooled).float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        for c, v in zip(counts, err.tolist()):
            per.setdefault(int(c), []).append(v)
    res = {str(c): round(sum(v) / len(v), 5) for c, v in sorted(per.items())}
    res["all"] = round(sum(sum(v) for v in per.values()) / sum(len(v) for v in per.values()), 5)
    return res


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
    ap.add_argument("--freeze-text-encoder", action="store_true", help="train the denoiser only (as GPO does)")
    ap.add_argument("--cfg-dropout", type=float, default=None, help="share of prompts dropped to '' (default: pretraining's)")
    ap.add_argument("--eval-guidance", type=float, nargs="+", default=None, help="guidance scales to evaluate at (default: eval.yaml's)")
    ap.add_argument("--save", action="store_true", help="save each evaluated model (the EMA when on) as a pipeline "
                    "in OUT/NAME/step-N/pipeline, for benchmarks/guidance_probe.py")
    ap.add_argument("--threads", type=int, default=2)
    add_quick_args(ap)
    ap.add_argument("--out", type=Path, default=Path("data/gt_ceiling"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    world = _load(Path("params"), "world.yaml")
    pre = _load(Path("params"), "pretrain.yaml").pretrain
    e = quick_eval(a)
    prompts = read_prompts(Path("data/prompts.jsonl"))
    scorers = _ws(Path("params")).scorers()
    pipe = load_pipeline(a.base or _load(Path("params"), "models.yaml").base)
    share = {"counting": 0.0, "text": 1.0}.get(a.task, pre.text_share)
    sampler = GroundTruthSampler(build_prompts(world.prompts), world.render, share, seed=1234)
    if a.gt_split == "heldout":
        held = [p for p in build_prompts(world.prompts) if p.split == "heldout"]
        sampler.counting = [p for p in held if p.task == "counting"]
        sampler.text = [p for p in held if p.task == "text"]
    trained = {k: m for k, m in _trainable(pipe).items() if not (a.freeze_text_encoder and k == "text_encoder")}
    params = [q for m in trained.values() for q in m.parameters()]
    dropout = pre.cfg_dropout if a.cfg_dropout is None else a.cfg_dropout
    scales = a.eval_guidance or [e.guidance_scale]
    probe = loss_probe_set(world, seed=99)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=pre.weight_decay)
    gen = torch.Generator().manual_seed(1234)
    ema = [q.detach().clone() for q in params] if a.ema else None
    if a.base is not None and 0 not in a.steps:
        raise SystemExit("--base needs step 0 in --steps: the comparison is with that model's own evaluation")
    bases = {} if a.base is not None else {e.guidance_scale: quick_metrics(quick_base(a, e.seed_offset))}
    loss0 = probe_loss(pipe, probe)
    done, train_s = 0, 0.0
    for target in sorted(a.steps):
        for m in trained.values():
            m.train()
        t0 = time.time()
        for step in range(done, target):
            texts, x0 = sampler.batch(a.batch_size)
            drop = torch.rand(len(texts), generator=gen) < dropout
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
        if ema is not None and target:  # evaluate the EMA, keep training the raw iterate
            raw = [q.detach().clone() for q in params]
            with torch.no_grad():
                torch._foreach_copy_([q.data for q in params], ema)
        loss1 = probe_loss(pipe, probe)
        if a.save and target:
            pipe.save_pretrained(a.out / a.name / f"step-{target}" / "pipeline")
        rows = []
        for g in scales:
            folder = a.out / a.name / (f"step-{target}" + ("" if g == e.guidance_scale else f"-cfg{g:g}"))
            evaluate_model(pipe, prompts, scorers, e.model_copy(update={"guidance_scale": g}), folder, "final", progress=False)
            final = quick_metrics(pd.read_parquet(folder / "final_scores.parquet"))
            if target == 0:
                bases[g] = final
            if g not in bases:
                raise SystemExit(f"no base at guidance {g}: list step 0 in --steps")
            rows.append({"name": f"{a.name}@{target}" + ("" if g == e.guidance_scale else f"@cfg{g:g}"), "lr": a.lr,
                         "warmup": a.warmup, "ema": a.ema, "guidance": g,
                         "task": (a.task or "both") + ("" if a.base is None else f", base {a.base}") + ("" if a.gt_split == "train" else ", held-out prompts")
                         + (", text encoder frozen" if a.freeze_text_encoder else "") + ("" if a.cfg_dropout is None else f", CFG dropout {dropout:g}"),
                         "steps": target, "images_seen": target * a.batch_size, "train_seconds": round(train_s),
                         "probe_loss": {"base": loss0, "final": loss1}, "base": bases[g], "final": final})
            print(f"step {target} cfg {g}: probe loss {loss0['all']:.4f} -> {loss1['all']:.4f} {final}", flush=True)
        if ema is not None and target:
            with torch.no_grad():
                torch._foreach_copy_([q.data for q in params], raw)
        header = ["| run | lr (warm-up, EMA) | ground truth of | steps (images) | train s | CFG | counting acc base → final | "
                  "OCR reward base → final | OCR exact base → final | counting by count (final) | GT loss base → final |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]

        def render_row(r: dict) -> str:
            b, f = r["base"], r["final"]
            pl = (f"{r['probe_loss']['base']['all']:.4f} → {r['probe_loss']['final']['all']:.4f}"
                  if "probe_loss" in r else "")
            return (f"| {r['name']} | {r['lr']:g} ({r.get('warmup', 0)}, {r.get('ema', 0)}) | {r['task']} | {r['steps']} ({r['images_seen']}) | "
                    f"{r['train_seconds']} | {r.get('guidance', 2.0):g} | {b['counting_acc']:.3f} → {f['counting_acc']:.3f} | "
                    f"{b['ocr_reward']:.3f} → {f['ocr_reward']:.3f} | {b['ocr_exact']:.3f} → {f['ocr_exact']:.3f} | "
                    f"{f['counting_by_count']} | {pl} |")

        for row in rows:
            upsert_results("gt_ceiling", row, header, render_row)


if __name__ == "__main__":
    main()
