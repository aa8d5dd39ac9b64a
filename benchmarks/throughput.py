"""Rollouts are the budget (#15): sampler images/s and GPO train group-steps/s against the machine's floor.

In one process, arms alternating within every repetition (so a burst of load on this shared machine hits
every arm alike), the shipped base:
- the floor: a 2048² float32 and a bf16 matrix multiply on the same threads (GFLOP/s);
- the FLOPs of one denoiser call, counted by torch.utils.flop_counter (per image, CFG's two halves included);
- sampler arms STEPS:SOLVER:PRECISION[:BATCH] (one batch of images per repetition): images/s, achieved
  GFLOP/s and its share of the floor of its precision;
- training arms fp32 / bf16 (accelerate's autocast, float32 master weights) / bf16-attn32 (the same, but
  attention computed in float32 wherever a backward follows: the CPU's bf16 flash-attention backward is
  the slow part of a bf16 step): one GPO group step (G members, K draws, forward + backward of policy
  and reference) per repetition: group-steps/s, and achieved GFLOP/s from the FLOPs of one group step
  (forward and backward, counted the same way);
- fp32-cl: the fp32 step on a channels_last copy of the denoiser (and of its reference); any arm + -cl;
- fp32-compile (fp32-cl-compile, bf16-attn32-compile, ...): the step with policy and reference wrapped in torch.compile
  (inductor); the first step's seconds (the compile) are reported beside the steady-state speed, since
  a round pays them.
Quality of the sampler arms is measured separately, on held-out prompts and the same seeds:
benchmarks/sampler_sweep.py (benchmarks/results/sampler_solvers.md).

    python benchmarks/throughput.py                       # today's vs the new defaults
    python benchmarks/throughput.py --arms 10:default:fp32 5:unipc:bf16:128 --threads 1 2

Writes benchmarks/results/throughput.{json,md} (rows replaced by name: threads/kind/arm).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gpo.cli import _load
from gpo.model.adapters import load_any
from gpo.model.attention import fp32_attention_under_grad
from gpo.train import Group, Reference, group_step, make_accelerator

from gpo_tuning import upsert_results  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

DEFAULT_ARMS = ["10:default:fp32", "10:default:bf16", "5:unipc:fp32", "5:unipc:bf16", "5:unipc:bf16:128"]
PROMPTS = ["three red circles", "two blue squares", "the word CAT", "five green triangles"]


def floor_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9


def denoiser_flops_per_image(pipe, guidance: float) -> float:
    """FLOPs of one sampler step for one image: a denoiser call on the CFG pair (or the image alone)."""
    n = 2 if guidance != 1.0 else 1
    states, pooled = pipe.encode_prompt(PROMPTS[:1] * n)
    x = torch.randn(n, int(pipe.denoiser.config.in_channels), pipe.resolution, pipe.resolution)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        pipe.predict(x, torch.tensor(500), states, pooled)
    return fc.get_total_flops()


def sample_once(pipe, arm: str, guidance: float, default_batch: int, rep: int) -> float:
    steps, solver, precision, *batch = arm.split(":")
    b = int(batch[0]) if batch else default_batch
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
    seeds = [1000 * rep + i for i in range(b)]
    t0 = time.perf_counter()
    pipe(texts, seeds=seeds, num_inference_steps=int(steps), guidance_scale=guidance, solver=solver,
         precision=precision, output_type="pt")
    return b / (time.perf_counter() - t0)


_VARIANTS: dict[str, tuple] = {}


def _variant(pipe, ref, arm: str) -> tuple:
    """(policy, reference) of a training arm, built once: the pipeline's own denoiser for the precision
    arms; for -cl a channels_last copy (oneDNN's preferred layout for convolutions) with its own
    reference; for -compile both wrapped in torch.compile."""
    if arm not in _VARIANTS:
        policy, reference = pipe.denoiser, ref
        if "-cl" in arm:
            policy = copy.deepcopy(pipe.denoiser).to(memory_format=torch.channels_last)
            reference = Reference(policy, lora=False)
        if arm.endswith("-compile"):
            compiled_ref = copy.copy(reference)
            compiled_ref.copy = torch.compile(reference.copy)
            policy, reference = torch.compile(policy), compiled_ref
        _VARIANTS[arm] = (policy, reference)
    return _VARIANTS[arm]


def train_once(pipe, ref, group: Group, p, precision: str, rep: int) -> float:
    """One group step as train_gpo takes it, under the Accelerator of train.mixed_precision (no or bf16)."""
    acc = make_accelerator(p.model_copy(update={"mixed_precision": "bf16" if precision.startswith("bf16") else "no"}))
    policy, reference = _variant(pipe, ref, precision)
    restore = fp32_attention_under_grad(policy, enabled=precision.startswith("bf16-attn32"))
    policy.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    group_step(pipe, policy, reference, group, p, torch.Generator().manual_seed(rep), 1.0, acc=acc)
    seconds = time.perf_counter() - t0
    restore()
    return 1.0 / seconds


def train_flops(pipe, ref, group: Group, p) -> float:
    """FLOPs of one fp32 group step: reference forward, policy forward and backward (flop_counter)."""
    with FlopCounterMode(display=False) as fc:
        train_once(pipe, ref, group, p, "fp32", 0)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="*", default=DEFAULT_ARMS, help="STEPS:SOLVER:PRECISION[:BATCH]")
    ap.add_argument("--train", nargs="*", default=["fp32", "bf16", "bf16-attn32", "fp32-cl", "fp32-compile"],
                    help="training arms: fp32, bf16, bf16-attn32, and any of them + -cl, -compile or -cl-compile "
                         "(e.g. bf16-attn32-cl-compile)")
    ap.add_argument("--threads", type=int, nargs="*", default=[2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None, help="default: params/eval.yaml")
    a = ap.parse_args()
    e = _load(Path("params"), "eval.yaml").eval
    p = _load(Path("params"), "gpo.yaml").train
    guidance = a.guidance if a.guidance is not None else e.guidance_scale
    pipe = load_any(Path(_load(Path("params"), "models.yaml").base))
    flops = denoiser_flops_per_image(pipe, guidance)
    G = _load(Path("params"), "gpo.yaml").groups.group_size
    x0 = pipe(PROMPTS[:1] * G, seeds=list(range(G)), num_inference_steps=5, guidance_scale=guidance,
              output_type="pt").images * 2 - 1
    group = Group(PROMPTS[0], x0, torch.linspace(0, 1, G), list(range(G)))
    ref = Reference(pipe.denoiser, lora=False)
    header = ["| threads | kind | arm | median | [min, max] over repeats | achieved GFLOP/s | floor GFLOP/s (same run) | share of floor |",
              "|---|---|---|---|---|---|---|---|"]
    for threads in a.threads:
        torch.set_num_threads(threads)
        speed = {("sample", arm): [] for arm in a.arms} | {("train", pr): [] for pr in a.train}
        floor = {"fp32": [], "bf16": []}
        for arm in a.arms:  # warm-up: oneDNN builds its kernels per shape and precision
            sample_once(pipe, arm, guidance, e.batch_size, -1)
        first_step_s = {pr: 1.0 / train_once(pipe, ref, group, p, pr, -1) for pr in a.train}  # compile happens here
        step_flops = train_flops(pipe, ref, group, p) if a.train else None
        for rep in range(a.repeats):
            floor["fp32"].append(floor_gflops(torch.float32))
            floor["bf16"].append(floor_gflops(torch.bfloat16))
            for arm in a.arms:
                speed[("sample", arm)].append(sample_once(pipe, arm, guidance, e.batch_size, rep))
            for pr in a.train:
                speed[("train", pr)].append(train_once(pipe, ref, group, p, pr, rep))
        fl = {k: statistics.median(v) for k, v in floor.items()}
        for (kind, arm), v in speed.items():
            med = statistics.median(v)
            precision = arm.split(":")[2] if kind == "sample" else ("bf16" if arm.startswith("bf16") else "fp32")
            steps = int(arm.split(":")[0]) if kind == "sample" else None
            achieved = med * steps * flops / 1e9 if kind == "sample" else med * step_flops / 1e9
            row = {"name": f"{threads}/{kind}/{arm}", "threads": threads, "kind": kind, "arm": arm,
                   "unit": "images/s" if kind == "sample" else "group-steps/s",
                   "median": round(med, 3), "min": round(min(v), 3), "max": round(max(v), 3), "repeats": a.repeats,
                   "flops_per_image_step": flops, "achieved_gflops": None if achieved is None else round(achieved, 1),
                   "floor_gflops": round(fl[precision], 1),
                   "share_of_floor": None if achieved is None else round(achieved / fl[precision], 3),
                   "guidance": guidance, "group_size": G, "draws": p.draws}
            if kind == "train":
                row |= {"flops_per_group_step": step_flops, "first_step_seconds": round(first_step_s[arm], 1)}
            upsert_results("throughput", row, header, render)


def render(r: dict) -> str:
    ach = "–" if r["achieved_gflops"] is None else f"{r['achieved_gflops']:.1f}"
    share = "–" if r["share_of_floor"] is None else f"{r['share_of_floor']:.1%}"
    label = r["arm"] if r["kind"] == "sample" else (f"{r['arm']} (G={r['group_size']}, K={r['draws']}"
                                                    + (f"; first step {r['first_step_seconds']} s" if "first_step_seconds" in r else "") + ")")
    return (f"| {r['threads']} | {r['kind']} | {label} | {r['median']:.2f} {r['unit']} | [{r['min']:.2f}, {r['max']:.2f}] | "
            f"{ach} | {r['floor_gflops']:.0f} ({'bf16' if 'bf16' in r['arm'] else 'fp32'}) | {share} |")


if __name__ == "__main__":
    main()
