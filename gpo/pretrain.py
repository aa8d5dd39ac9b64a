"""Pretrain the embedded base model on rendered ground truth (the 'pretraining' of the tiny world).

Plain denoising regression with classifier-free-guidance dropout, AdamW with warm-up + cosine decay,
and an EMA of the weights (what is saved). Snapshots every `save_every` steps double as resume points:
re-running the same command continues from the newest one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gpo.errors import GpoError
from gpo.io import atomic_write, atomic_write_json
from gpo.model.build import build_pipeline, count_parameters, load_pipeline
from gpo.model.pipeline import TinyT2IPipeline
from gpo.model.targets import noisy_and_target, sample_timesteps
from gpo.params import PretrainFile, WorldParams
from gpo.world.dataset import GroundTruthSampler, build_prompts


def _trainable(pipe: TinyT2IPipeline) -> dict[str, torch.nn.Module]:
    return {"denoiser": pipe.denoiser, "text_encoder": pipe.text_encoder}


def _flat_state(pipe: TinyT2IPipeline) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, m in _trainable(pipe).items() for k, v in m.state_dict().items()}


def _load_flat(pipe: TinyT2IPipeline, flat: dict[str, torch.Tensor]) -> None:
    for name, m in _trainable(pipe).items():
        prefix = name + "."
        m.load_state_dict({k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)})


def lr_at(step: int, warmup: int) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then constant. Constant (with EMA) keeps a
    snapshot at step N identical to a run with `steps: N`, so any snapshot is a reproducible release."""
    return min(1.0, (step + 1) / max(1, warmup))


def denoising_loss(pipe: TinyT2IPipeline, prompts: list[str], x0: torch.Tensor,
                   generator: torch.Generator, flow_density: str = "uniform") -> torch.Tensor:
    kind = pipe.parameterization
    t = sample_timesteps(kind, x0.shape[0], generator, flow_density=flow_density)
    noise = torch.randn(x0.shape, generator=generator)
    abar = getattr(pipe.scheduler, "alphas_cumprod", None)
    x_t, target = noisy_and_target(kind, x0, noise, t, abar)
    states, pooled = pipe.encode_prompt(prompts)
    pred = pipe.predict(x_t, t, states, pooled)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def _latest_snapshot(out: Path, at_most: int | None = None) -> Path | None:
    """Newest complete snapshot (not past `at_most` steps: a shorter run reuses a longer run's prefix)."""
    snaps = sorted((out / "snapshots").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if at_most is not None:
        snaps = [s for s in snaps if int(s.name.split("-")[1]) <= at_most]
    snaps = [s for s in snaps if (s / "state.safetensors").exists() and (s / "pipeline" / "model_index.json").exists()]
    return snaps[-1] if snaps else None


def pretrain(world: WorldParams, cfg: PretrainFile, out: Path, *, progress: bool = True) -> Path:
    """Train from scratch (or resume from `out/snapshots`) and write the EMA pipeline to `out/pipeline`."""
    p, m = cfg.pretrain, cfg.model
    if m.resolution != world.render.size:
        raise GpoError("model resolution differs from the rendered image size", file="params/pretrain.yaml",
                       field="model.resolution", value=m.resolution,
                       fix=f"set it to world.render.size = {world.render.size}")
    torch.set_num_threads(p.threads)
    out = Path(out)
    pipe = build_pipeline(m, seed=p.seed)
    sampler = GroundTruthSampler(build_prompts(world.prompts), world.render, p.text_share, p.seed)
    params = [q for mod in _trainable(pipe).values() for q in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    ema = {k: v.detach().clone().float() for k, v in _flat_state(pipe).items()}
    gen = torch.Generator().manual_seed(p.seed)
    start, log = 0, []

    snap = _latest_snapshot(out, p.steps)
    if snap is not None:
        state = load_file(snap / "state.safetensors")
        _load_flat(pipe, {k[6:]: v for k, v in state.items() if k.startswith("model.")})
        ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
        extra = torch.load(snap / "optimizer.pt", weights_only=True)
        opt.load_state_dict(extra["optimizer"])
        gen.set_state(extra["generator"])
        sampler.set_state(_tuple(json.loads((snap / "sampler.json").read_text())))
        start = int(snap.name.split("-")[1])
        log = json.loads((snap / "log.json").read_text())

    pipe.denoiser.train()
    pipe.text_encoder.train()
    t0 = time.time() - (log[-1]["seconds"] if log else 0.0)  # seconds in the log add up across resumes
    bar = tqdm(range(start, p.steps), initial=start, total=p.steps, desc="pretrain", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = p.lr * lr_at(step, p.warmup_steps)
        prompts, x0 = sampler.batch(p.batch_size)
        drop = torch.rand(len(prompts), generator=gen) < p.cfg_dropout
        prompts = ["" if d else t for t, d in zip(prompts, drop.tolist())]
        loss = denoising_loss(pipe, prompts, x0, gen, p.flow_density)
        if not torch.isfinite(loss):
            raise GpoError(f"pretraining loss is {loss.item()} at step {step}", field="pretrain.lr",
                           value=p.lr, fix="lower the learning rate; the last snapshot is intact")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if p.ema_decay > 0:
            decay = min(p.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in _flat_state(pipe).items():
                    if v.dtype.is_floating_point:
                        ema[k].mul_(decay).add_(v.float(), alpha=1 - decay)
                    else:
                        ema[k].copy_(v)
        log.append({"step": step + 1, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 2)})
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % p.save_every == 0 or step + 1 == p.steps:
            _snapshot(out / "snapshots" / f"step-{step + 1}", pipe, ema, opt, gen, sampler, log, p.ema_decay > 0)

    final = _latest_snapshot(out, p.steps)
    if final is None:
        raise GpoError("pretraining wrote no snapshot", file=str(out), fix="check pretrain.steps >= 1")
    ema_pipe = load_pipeline(final / "pipeline")
    target = out / "pipeline"
    ema_pipe.save_pretrained(target, safe_serialization=True)
    log = json.loads((final / "log.json").read_text())
    atomic_write_json(out / "pretrain_summary.json", {
        "steps": p.steps, "final_loss": log[-1]["loss"] if log else None,
        "seconds_total": log[-1]["seconds"] if log else None,
        "denoiser_parameters": count_parameters(ema_pipe.denoiser),
        "text_encoder_parameters": count_parameters(ema_pipe.text_encoder),
        "arch": m.arch,
        "params": cfg.model_dump()})
    return target


def _tuple(x):
    return tuple(_tuple(i) for i in x) if isinstance(x, list) else x


def _snapshot(folder: Path, pipe: TinyT2IPipeline, ema: dict[str, torch.Tensor], opt, gen, sampler,
              log: list, use_ema: bool) -> None:
    """A complete resume point. Written into a temp folder, then renamed: never half a snapshot."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {f"model.{k}": v.contiguous() for k, v in _flat_state(pipe).items()}
    state.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
    save_file(state, tmp / "state.safetensors")
    torch.save({"optimizer": opt.state_dict(), "generator": gen.get_state()}, tmp / "optimizer.pt")
    (tmp / "sampler.json").write_text(json.dumps(sampler.state()))
    (tmp / "log.json").write_text(json.dumps(log))
    live = {k: v.detach().clone() for k, v in _flat_state(pipe).items()}  # state_dict aliases the weights
    if use_ema:
        _load_flat(pipe, {k: v.to(live[k].dtype) for k, v in ema.items()})
    pipe.save_pretrained(tmp / "pipeline", safe_serialization=True)
    if use_ema:
        _load_flat(pipe, live)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
