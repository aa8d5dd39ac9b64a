"""The sampler trap of docs/GPO.md: x0 clipping or thresholding under classifier-free guidance.

diffusers' DDIM (and DDPM, DPM-Solver, UniPC, ...) with `clip_sample=True` or `thresholding=True` clips
the predicted x0 but keeps the unclipped noise estimate, so every step rebuilds x_{t-1} from a
mismatched pair. Under CFG the guided x0 overshoots [-1, 1] wherever the guidance pushes (a third of
the pixels of the embedded world's light backgrounds at the first step), and the sample drifts, more
with more steps. Every pipeline gpo loads goes through `unclipped`, so groups and evaluations are
drawn by the plain ODE step.
"""

from __future__ import annotations

import contextlib
import json
import logging

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from gpo.errors import GpoError

CLIPPING_KEYS = ("clip_sample", "thresholding")
log = logging.getLogger("gpo.sampler")


def clipping(scheduler) -> list[str]:
    """The x0-clipping switches that are on in a scheduler's config (empty: the plain ODE step)."""
    return [k for k in CLIPPING_KEYS if bool(scheduler.config.get(k, False))]


def unclipped(scheduler):
    """The same scheduler with x0 clipping and thresholding off (itself when none is on)."""
    on = clipping(scheduler)
    if not on:
        return scheduler
    log.warning("scheduler %s had %s on: turned off (x0 clipping with an unclipped noise estimate makes "
                "the sampler drift under guidance; docs/GPO.md)", type(scheduler).__name__, ", ".join(on))
    return type(scheduler).from_config(scheduler.config, **{k: False for k in on})


def sampler_stamp(scheduler, solver: str = "default", precision: str = "fp32") -> dict:
    """What of the sampler goes into the resume stamps of generated images (gpo/resume.py): images drawn by
    another scheduler, solver (its class and config as built) or precision, or with clipping on, are never
    reused."""
    built = solver_scheduler(scheduler, solver)
    config = {k: v for k, v in built.config.items() if not k.startswith("_")}
    return {"scheduler": type(scheduler).__name__, "clipping": clipping(scheduler),
            "solver": resolve_solver(scheduler, solver), "solver_class": type(built).__name__,
            "solver_config": json.loads(json.dumps(config, default=str)), "precision": precision}


# --- the ODE solver and the sampling precision ---------------------------------------------------------
# A pipeline keeps the scheduler it was trained with (training draws its noise levels from it); `solver`
# only chooses how the sampling ODE is integrated, per call, from the same noise schedule.
SOLVERS = ("auto", "default", "ddim", "dpm++", "unipc")
PRECISIONS = ("fp32", "bf16")


def resolve_solver(scheduler, solver: str) -> str:
    """`auto`: UniPC for a DDPM-type noise schedule (the embedded UNet, SD, SDXL), the pipeline's own
    scheduler for flow matching (sd3, the MMDiT arch), which has nothing else here. Other names as given."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: one of {SOLVERS}")
    if solver == "auto":
        return "default" if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) else "unipc"
    return solver


def solver_scheduler(scheduler, solver: str):
    """The scheduler that integrates the sampling ODE: the pipeline's own (`default`), or DDIM, DPM-Solver++
    (2nd order multistep) or UniPC (2nd order, with corrector) built from the same config (noise schedule,
    prediction type, timestep spacing), never clipping x0; DPM-Solver++ and UniPC take their last step to
    noise level 0. `auto`: see `resolve_solver`. Flow-matching pipelines (sd3, the MMDiT arch) have only
    their own Euler solver: asking for a DDPM one by name is an error."""
    solver = resolve_solver(scheduler, solver)
    if solver == "default":
        return scheduler
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        raise GpoError(f"solver {solver!r} needs a DDPM-type noise schedule; this pipeline samples by flow matching",
                       field="solver", value=solver, fix="use solver: default for flow-matching (sd3, mmdit) pipelines")
    cfg = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    off = {k: False for k in CLIPPING_KEYS}
    if solver == "ddim":
        return DDIMScheduler.from_config(cfg, **off)
    if solver == "dpm++":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero", lower_order_final=True, **off)
    return UniPCMultistepScheduler.from_config(cfg, solver_order=2, final_sigmas_type="zero", **off)


def sampling_autocast(device, precision: str, weights_dtype: torch.dtype = torch.float32):
    """The autocast context the denoiser runs under while sampling: bf16 (weights stay float32; on CPUs with
    AVX512-BF16/AMX, oneDNN runs convolutions and matmuls in bf16) or none (`fp32`). The sampler's own
    arithmetic (guidance, the ODE step) stays float32: only the denoiser's forward runs under it, and its
    output is cast back to float32 (`denoiser_autocast`, used by every pipeline gpo samples). A pipeline
    loaded in half precision (the GPU path: fp16/bf16 weights) keeps its own dtype: no autocast on top."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: one of {PRECISIONS}")
    if precision == "fp32" or weights_dtype != torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def denoiser_autocast(net: torch.nn.Module, device, precision: str):
    """For the duration, the denoiser's forward runs under `sampling_autocast` and returns float32 (the
    embedded pipeline's loop and diffusers' SD / SDXL / SD3 `__call__` alike), so the text encoders, the
    guidance and the scheduler's state stay float32 (Euler-type schedulers cast their sample to the
    model output's dtype). No-op for fp32 or half-precision weights."""
    ctx = sampling_autocast(device, precision, next(net.parameters()).dtype)
    if isinstance(ctx, contextlib.nullcontext):
        yield
        return
    inner = net.forward

    def forward(*args, **kwargs):
        with sampling_autocast(device, precision):
            out = inner(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.float() if torch.is_tensor(o) else o for o in out)
        if hasattr(out, "sample") and torch.is_tensor(out.sample):
            out.sample = out.sample.float()
        return out.float() if torch.is_tensor(out) else out

    net.forward = forward
    try:
        yield
    finally:
        del net.forward  # back to the class's forward
