"""GPU check: the cost of GPO on an SD3.5-Medium-sized transformer, random weights, no download.

Builds `SD3Transformer2DModel` from SD3.5 Medium's published transformer config (written below and
checked against diffusers' signature), and at 512 px (64×64 latents), G = 16, LoRA r32 (peft), bf16
measures:

  sampling     one group of G images, 40 flow-Euler steps (FlowMatchEulerDiscreteScheduler, shift 3),
               classifier-free guidance (one transformer call on 2G latents per step) → images/s and
               seconds per sampler step. Transformer only: text encoders (random embeddings of SD3's
               shapes: 77 CLIP + 256 T5 tokens × 4096, pooled 2048) and the VAE decoder are not included.
  train step   one group through `gpo.train.group_step` (gpo.loss.gpo_loss, the project's micro-batching:
               reference pass, no-grad pass for dL/dΔ, then backward micro-batch by micro-batch), bf16
               autocast through accelerate (gpo.train.make_accelerator), + the AdamW step on the LoRA
               weights → seconds and peak memory.
  floor        forward+backward of the policy on the same G latents in the same micro-batches (the least
               any method pays for one gradient of G samples) → step / floor ratio.
  memory by G  peak memory of one training step at G = 4, 8, 16 (micro-batch fixed): flat beyond it.

    python benchmarks/gpu_check.py                  # full size; needs a GPU (≈ 2-3 min on one H100/H200)
    python benchmarks/gpu_check.py --scale          # scaled-down config on the CPU (< 2 min)
    python benchmarks/gpu_check.py --cost           # the cost model table of docs/scale_out.md

Writes benchmarks/results/gpu_check_{gpu,cpu}.json and .md (by device type).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GPO_WORKSPACE", str(ROOT))

import torch  # noqa: E402

import gpo  # noqa: E402,F401  (offline switches)

RESULTS = ROOT / "benchmarks" / "results"

# stabilityai/stable-diffusion-3.5-medium, transformer/config.json (MMDiT-X: dual attention in blocks 0-12)
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
# the same architecture, small enough for a CPU: every kind of block is still there
SCALED = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=32,
              num_attention_heads=4, joint_attention_dim=256, caption_projection_dim=128,
              pooled_projection_dim=128, out_channels=16, pos_embed_max_size=32,
              dual_attention_layers=(0,), qk_norm="rms_norm")

RUN_FULL = dict(latent=64, text_tokens=77 + 256, G=16, steps=40, guidance=4.5, lora_rank=32, micro_batch=8,
                sample_batch=16, repeats=3, g_sweep=(4, 8, 16))
RUN_SCALED = dict(latent=16, text_tokens=64, G=16, steps=40, guidance=4.5, lora_rank=32, micro_batch=8,
                  sample_batch=16, repeats=5, g_sweep=(4, 8, 16))


def check_config(cfg: dict) -> None:
    """Every key is an argument of diffusers' SD3Transformer2DModel (a renamed one fails here, not silently)."""
    from diffusers import SD3Transformer2DModel

    params = inspect.signature(SD3Transformer2DModel.__init__).parameters
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise SystemExit(f"SD3Transformer2DModel has no argument(s) {unknown}; diffusers changed its signature")


class BenchPipe:
    """The trainer's pipeline interface (gpo.model.adapters) around a bare transformer: flow matching."""

    parameterization = "flow"

    def __init__(self, transformer, scheduler):
        self.denoiser, self.scheduler = transformer, scheduler

    def encode_prompt(self, prompts):  # not called: the benchmark passes precomputed embeddings
        raise RuntimeError("random text embeddings are passed as `embeds`")

    def predict(self, x_t, t, states, pooled, denoiser=None):
        net = denoiser if denoiser is not None else self.denoiser
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return net(hidden_states=x_t, timestep=t.to(x_t.device), encoder_hidden_states=states,
                   pooled_projections=pooled, return_dict=False)[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: process peak RSS


def build(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are made in bf16 on the device directly: no fp32 copy
    try:
        with torch.device(device):
            model = SD3Transformer2DModel(**cfg)
    finally:
        torch.set_default_dtype(old)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def sample(pipe: BenchPipe, run: dict, emb: dict, device, dtype) -> dict:
    """One group: G images of one prompt, each from its own seed, CFG, `steps` flow-Euler steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    G, L, C = run["G"], run["latent"], pipe.denoiser.config.in_channels
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    x = torch.stack([torch.randn(C, L, L, generator=torch.Generator().manual_seed(s)) for s in range(G)])
    x = x.to(device, dtype)
    states = torch.cat([emb["uncond"], emb["cond"]]).to(device, dtype)
    pooled = torch.cat([emb["uncond_pooled"], emb["cond_pooled"]]).to(device, dtype)
    sched.set_timesteps(run["steps"], device=device)

    def step(x, t):
        outs = []
        for i in range(0, G, run["sample_batch"]):  # CFG: the uncond and cond halves in one call
            xb = x[i:i + run["sample_batch"]]
            n = xb.shape[0]
            out = pipe.predict(torch.cat([xb, xb]), t.expand(2 * n), states.repeat_interleave(n, 0),
                               pooled.repeat_interleave(n, 0))
            u, c = out.chunk(2)
            outs.append(u + run["guidance"] * (c - u))
        return torch.cat(outs)

    step(x, sched.timesteps[0])  # warm-up (kernels, allocator)
    sync(device)
    peak_reset(device)
    t0 = time.perf_counter()
    for t in sched.timesteps:
        x = sched.step(step(x, t), t, x, return_dict=False)[0]
    sync(device)
    seconds = time.perf_counter() - t0
    if not torch.isfinite(x).all():
        raise SystemExit("sampling produced non-finite latents")
    return {"seconds": round(seconds, 3), "images_per_s": round(G / seconds, 4),
            "s_per_sampler_step": round(seconds / run["steps"], 5),
            "s_per_image_step": round(seconds / run["steps"] / G, 6), "peak_gib": round(peak_gib(device), 3)}


def train_measures(pipe: BenchPipe, run: dict, emb: dict, device, out_dir: Path) -> dict:
    from gpo.params import TrainParams
    from gpo.train import Group, Reference, add_lora, group_step, make_accelerator

    p = TrainParams(lora_rank=run["lora_rank"], micro_batch=run["micro_batch"], mixed_precision="bf16",
                    beta=5000.0, timestep_min_fraction=0.5)
    acc = make_accelerator(p, out_dir)
    policy = pipe.denoiser
    ref = Reference(policy, lora=True)
    add_lora(policy, p)
    trainable = [q for q in policy.parameters() if q.requires_grad]
    for q in trainable:  # LoRA weights (and AdamW state) in float32; the frozen base stays bf16
        q.data = q.data.float()
    policy.train()
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    C, L = policy.config.in_channels, run["latent"]
    embeds = (emb["cond"], emb["cond_pooled"])

    def group(G: int, seed: int) -> Group:
        g = torch.Generator().manual_seed(seed)
        return Group("bench", torch.randn(G, C, L, L, generator=g), torch.rand(G, generator=g))

    def one_step(G: int, seed: int) -> tuple[float, dict]:
        grp = group(G, seed)
        sync(device)
        t0 = time.perf_counter()
        stats = group_step(pipe, policy, ref, grp, p, torch.Generator().manual_seed(seed), 1.0,
                           embeds=embeds, acc=acc)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0, stats

    def floor_step(G: int, seed: int) -> float:
        grp = group(G, seed)
        x0 = grp.x0.to(device)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(device)
        sigma = torch.full((G,), 0.7, device=device)
        x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        states = emb["cond"].to(device).expand(G, -1, -1)
        pooled = emb["cond_pooled"].to(device).expand(G, -1)
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, G, p.micro_batch):
            sl = slice(i, i + p.micro_batch)
            with acc.autocast():
                pred = pipe.predict(x_t[sl], sigma[sl] * 1000, states[sl], pooled[sl], denoiser=policy)
            acc.backward(((pred.float() - (noise - x0)[sl]) ** 2).mean())
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t0

    G, R = run["G"], run["repeats"]
    one_step(G, 99)  # warm-up
    floor_step(G, 98)
    peak_reset(device)
    steps, stats = [], {}
    for r in range(R):
        s, stats = one_step(G, r)
        steps.append(s)
    step_peak = peak_gib(device)
    floors = [floor_step(G, 100 + r) for r in range(R)]
    by_g = {}
    for g in run["g_sweep"]:
        peak_reset(device)
        s, _ = one_step(g, 200 + g)
        by_g[str(g)] = {"seconds": round(s, 3), "peak_gib": round(peak_gib(device), 3)}
    step_s, floor_s = statistics.median(steps), statistics.median(floors)
    return {"train_step_s": round(step_s, 4), "train_step_s_all": [round(s, 4) for s in steps],
            "floor_fwd_bwd_s": round(floor_s, 4), "floor_all": [round(s, 4) for s in floors],
            "step_over_floor": round(step_s / floor_s, 3), "train_peak_gib": round(step_peak, 3),
            "last_step_stats": {k: round(float(v), 5) for k, v in stats.items()},
            "lora_params": sum(q.numel() for q in trainable), "memory_by_G": by_g,
            "micro_batch": p.micro_batch}


# --- cost model (docs/scale_out.md) -----------------------------------------------------------------
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 (and H100 SXM) spec sheet, dense bf16 tensor cores
ASSUMED_MFU = 0.40  # assumption: share of that peak a 2.2B MMDiT reaches at batch 16-32 (not measured)
ASSUMED_TRAIN_FWD_EQUIV = 5.0  # assumption: reference fwd + no-grad fwd + fwd+bwd (≈3 fwd) per image
ASSUMED_OTHER_PER_IMAGE_S = 0.03  # assumption: text encoders, VAE decode, YOLO/OCR per image on one GPU


def forward_tflop(cfg: dict, latent: int, text_tokens: int) -> float:
    """FLOPs (×1e-12) of one transformer forward for one sample: 2·weights·tokens for the linear layers of
    each stream (image tokens through the image weights, text tokens through the context weights, the
    dual-attention layers on image tokens only) + 4·N²·width per joint attention (scores and values)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n_img = (latent // cfg["patch_size"]) ** 2
    n_all = n_img + text_tokens
    layers, dual = cfg["num_layers"], len(cfg["dual_attention_layers"])
    # per token and block: q,k,v,out (4·d²) + MLP with 4× hidden (8·d²); adaLN acts on the pooled vector only
    linear = 2 * layers * (4 * d * d + 8 * d * d) * n_all + 2 * dual * 4 * d * d * n_img
    attention = 4 * layers * n_all ** 2 * d + 4 * dual * n_img ** 2 * d
    return (linear + attention) / 1e12


def unit_costs(result: dict | None) -> dict:
    """Seconds per image per sampler step (CFG included) and per image per training epoch: measured
    (a full-size GPU result of this script) or assumed (FLOPs at ASSUMED_MFU of an H200's peak)."""
    if result and result.get("config") == "sd3.5-medium":  # full size only runs on a GPU (main refuses CPU)
        s, t = result["sampling"], result["training"]
        return {"source": f"measured: benchmarks/results/gpu_check_gpu.json ({result['device']})",
                "image_step_s": s["s_per_image_step"], "train_image_s": t["train_step_s"] / result["run"]["G"],
                "other_image_s": ASSUMED_OTHER_PER_IMAGE_S}
    tf = forward_tflop(SD35_MEDIUM, RUN_FULL["latent"], RUN_FULL["text_tokens"])
    fwd_s = tf / (H200_BF16_DENSE_TFLOPS * ASSUMED_MFU)
    return {"source": f"assumed: {tf:.2f} TFLOP per forward per image at {ASSUMED_MFU:.0%} of "
                      f"{H200_BF16_DENSE_TFLOPS:.0f} TFLOP/s (H200 bf16 dense); no GPU measurement yet",
            "image_step_s": 2 * fwd_s, "train_image_s": ASSUMED_TRAIN_FWD_EQUIV * fwd_s,
            "other_image_s": ASSUMED_OTHER_PER_IMAGE_S}


def round_gpu_hours(prompts: int, G: int, steps: int, c: dict, epochs: int = 1) -> dict:
    """GPU-hours of one GPO round: generate (prompts·G images × steps), train (epochs over the groups:
    one timestep per group and epoch), and the per-image rest (encoders, decode, rewards)."""
    images = prompts * G
    gen = images * steps * c["image_step_s"] / 3600
    train = epochs * images * c["train_image_s"] / 3600
    other = images * c["other_image_s"] / 3600
    return {"prompts": prompts, "G": G, "steps": steps, "epochs": epochs, "images": images,
            "generate_h": gen, "train_h": train, "other_h": other, "total_h": gen + train + other}


def cost_markdown(c: dict) -> str:
    flow_grpo, dgpo = 16 * 24, 16 * 24 / 20
    lines = [f"unit costs ({c['source']}): {c['image_step_s'] * 1e3:.1f} ms per image per sampler step (CFG), "
             f"{c['train_image_s'] * 1e3:.1f} ms per image per training epoch, "
             f"{c['other_image_s'] * 1e3:.0f} ms per image other (assumed)", "",
             "| prompts | G | steps | images | generate GPU-h | train GPU-h | other GPU-h | round GPU-h | "
             "rounds in Flow-GRPO's 384 GPU-h | rounds in DGPO's ≈19 GPU-h |", "|---|---|---|---|---|---|---|---|---|---|"]
    for prompts in (64, 256, 1024):
        for G in (8, 16, 24):
            for steps in (10, 40):
                r = round_gpu_hours(prompts, G, steps, c)
                lines.append(f"| {prompts} | {G} | {steps} | {r['images']} | {r['generate_h']:.2f} | {r['train_h']:.2f} "
                             f"| {r['other_h']:.2f} | {r['total_h']:.2f} | {flow_grpo / r['total_h']:.0f} | "
                             f"{dgpo / r['total_h']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", action="store_true", help="scaled-down config (runs on the CPU in < 2 min)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--cost", action="store_true", help="print the cost model table (docs/scale_out.md) from "
                    "gpu_check_gpu.json when it holds a full-size GPU run, else from the FLOP assumption; no run")
    a = ap.parse_args(argv)
    if a.cost:
        path = a.out / "gpu_check_gpu.json"
        print(cost_markdown(unit_costs(json.loads(path.read_text()) if path.exists() else None)))
        return {}
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not a.scale:
        raise SystemExit("the full-size check needs a GPU (about 2.5B parameters); use --scale on a CPU")
    torch.set_num_threads(a.threads)
    cfg, run = (SCALED, RUN_SCALED) if a.scale else (SD35_MEDIUM, RUN_FULL)
    check_config(cfg)
    dtype = torch.bfloat16
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    from diffusers import FlowMatchEulerDiscreteScheduler

    transformer = build(cfg, device, dtype)
    n_params = sum(q.numel() for q in transformer.parameters())
    built_s = time.perf_counter() - t_start
    g = torch.Generator().manual_seed(1)
    T, D, Pd = run["text_tokens"], cfg["joint_attention_dim"], cfg["pooled_projection_dim"]
    emb = {"cond": torch.randn(1, T, D, generator=g), "uncond": torch.randn(1, T, D, generator=g),
           "cond_pooled": torch.randn(1, Pd, generator=g), "uncond_pooled": torch.randn(1, Pd, generator=g)}
    pipe = BenchPipe(transformer, FlowMatchEulerDiscreteScheduler(shift=3.0))
    sampling = sample(pipe, run, emb, device, dtype)
    training = train_measures(pipe, run, emb, device, a.out / ".gpu_check_tmp")
    total_s = time.perf_counter() - t_start
    name = "gpu" if device.type == "cuda" else "cpu"
    result = {
        "config": "scaled" if a.scale else "sd3.5-medium", "transformer_config": {k: list(v) if isinstance(v, tuple) else v
                                                                               for k, v in cfg.items()},
        "run": {k: list(v) if isinstance(v, tuple) else v for k, v in run.items()},
        "resolution_px": run["latent"] * 8, "dtype": "bf16 weights; LoRA + AdamW float32; bf16 autocast",
        "parameters": n_params, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({platform.processor() or platform.machine()}, {a.threads} threads)",
        "torch": torch.__version__, "build_s": round(built_s, 2), "sampling": sampling, "training": training,
        "total_s": round(total_s, 1),
        "loadavg_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2),
                         "cpus": os.cpu_count()},  # CPU timings are only as good as the machine was idle
        "memory_note": "peak torch.cuda.max_memory_allocated" if device.type == "cuda" else
        "peak process RSS (whole process, not per phase: the CPU has no allocator statistics)"}
    a.out.mkdir(parents=True, exist_ok=True)
    from gpo.io import atomic_write_json, atomic_write_text

    atomic_write_json(a.out / f"gpu_check_{name}.json", result)
    atomic_write_text(a.out / f"gpu_check_{name}.md", markdown(result))
    import shutil

    shutil.rmtree(a.out / ".gpu_check_tmp", ignore_errors=True)
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    s, t, run = r["sampling"], r["training"], r["run"]
    lines = [f"## GPU check: {r['config']} transformer ({r['parameters'] / 1e9:.3f} B parameters) on {r['device']}",
             "", f"{r['resolution_px']} px ({run['latent']}×{run['latent']} latents), G = {run['G']}, "
             f"LoRA r{run['lora_rank']}, {r['dtype']}, {run['text_tokens']} text tokens; "
             f"total {r['total_s']} s (build {r['build_s']} s)", "",
             "| measure | value |", "|---|---|",
             f"| sampling: images/s ({run['steps']} steps, CFG) | {s['images_per_s']} |",
             f"| sampling: s per sampler step (G images, CFG) | {s['s_per_sampler_step']} |",
             f"| sampling: peak memory GiB | {s['peak_gib']} |",
             f"| GPO train step (1 group of G, micro-batch {t['micro_batch']}) s | {t['train_step_s']} |",
             f"| forward+backward floor (same G, same micro-batches) s | {t['floor_fwd_bwd_s']} |",
             f"| step / floor | {t['step_over_floor']} |",
             f"| train step peak memory GiB | {t['train_peak_gib']} |"]
    for g, m in t["memory_by_G"].items():
        lines.append(f"| train step at G = {g}: s / peak GiB | {m['seconds']} / {m['peak_gib']} |")
    lines += ["", f"memory: {r['memory_note']}",
              f"load average (1 min) at start / end: {r['loadavg_1min']['start']} / {r['loadavg_1min']['end']} "
              f"on {r['loadavg_1min']['cpus']} CPUs", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
