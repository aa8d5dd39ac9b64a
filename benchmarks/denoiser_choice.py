"""Benchmark behind the base model's architecture choice: UNet (ε, DDIM) vs MMDiT (flow, Euler).

Measures, in one run on this machine: parameters, median training-step time (batch 32 of rendered
32×32 images), and median time to sample 32 images with 20 steps and CFG. Writes JSON + a markdown table.

    python benchmarks/denoiser_choice.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gpo.model.build import build_pipeline, count_parameters
from gpo.params import ModelParams, WorldParams
from gpo.pretrain import denoising_loss
from gpo.world.dataset import GroundTruthSampler, build_prompts

CANDIDATES = {
    "unet (32,64,64), v + DDIM": ModelParams(arch="unet", unet_channels=[32, 64, 64]),
    "sd3 w96 L6, flow + Euler": ModelParams(arch="sd3", dit_width=96, dit_layers=6, attention_head_dim=16),
    "sd3 w128 L6, flow + Euler": ModelParams(arch="sd3", dit_width=128, dit_layers=6, attention_head_dim=16),
}


def measure(p: ModelParams, repeats: int, sampler: GroundTruthSampler) -> dict:
    pipe = build_pipeline(p)
    pipe.set_progress_bar_config(disable=True)
    params = list(pipe.denoiser.parameters()) + list(pipe.text_encoder.parameters())
    opt = torch.optim.AdamW(params, 1e-3)
    gen = torch.Generator().manual_seed(0)
    steps = []
    for i in range(repeats + 1):
        prompts, x0 = sampler.batch(32)
        t = time.perf_counter()
        loss = denoising_loss(pipe, prompts, x0, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up kernels
            steps.append(time.perf_counter() - t)
    samples = []
    for _ in range(max(2, repeats // 2)):
        t = time.perf_counter()
        pipe(["three red circles"] * 32, seeds=range(32), num_inference_steps=20, guidance_scale=3.0)
        samples.append(time.perf_counter() - t)
    return {"denoiser_parameters": count_parameters(pipe.denoiser),
            "train_step_s_median": statistics.median(steps), "sample32_s_median": statistics.median(samples)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    w = WorldParams()
    sampler = GroundTruthSampler(build_prompts(w.prompts), w.render, 0.5, 0)
    rows = {name: measure(p, a.repeats, sampler) for name, p in CANDIDATES.items()}
    base = rows["unet (32,64,64), v + DDIM"]
    for r in rows.values():
        r["train_step_vs_unet"] = r["train_step_s_median"] / base["train_step_s_median"]
        r["sample_vs_unet"] = r["sample32_s_median"] / base["sample32_s_median"]
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"threads": a.threads, "repeats": a.repeats, "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__}
    (a.out / "denoiser_choice.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = ["| denoiser | parameters | train step, batch 32 (s, median) | 32 images × 20 steps + CFG (s, median) | step vs UNet | sampling vs UNet |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['denoiser_parameters']:,} | {r['train_step_s_median']:.2f} | "
                     f"{r['sample32_s_median']:.2f} | {r['train_step_vs_unet']:.2f}× | {r['sample_vs_unet']:.2f}× |")
    table = "\n".join(lines) + f"\n\n{meta}\n"
    (a.out / "denoiser_choice.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
