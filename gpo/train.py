"""GPO fine-tuning: groupwise, reward-weighted Diffusion-DPO against a frozen reference (accelerate).

For each group: one timestep and one noise shared by all G members; Δ_i from the policy and the
reference; the loss of gpo/loss.py. Memory stays flat in G: with G > micro_batch the trainer first
computes every Δ_i without a graph, takes dL/dΔ_i, then back-propagates micro-batch by micro-batch
(the same gradient as one big batch, one extra forward). Full fine-tuning keeps a frozen copy of the
denoiser as reference; LoRA (peft) uses the same network with adapters disabled.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from gpo.errors import GpoError
from gpo.io import atomic_write_json
from gpo.loss import gpo_loss
from gpo.model.pipeline import TinyT2IPipeline
from gpo.model.targets import noisy_and_target, sample_timesteps
from gpo.params import TrainParams
from gpo.world.dataset import to_tensor


@dataclass
class Group:
    prompt: str
    x0: torch.Tensor  # (G, C, H, W) clean samples in model space
    rewards: torch.Tensor  # (G,)


def groups_from_table(table: pd.DataFrame, images, encode=to_tensor) -> list[Group]:
    """Groups with spread (dropped groups carry no signal) from a rewards table and its images;
    `encode` maps images to model space (pixels here, VAE latents for real pipelines)."""
    x = encode(list(images))
    out = []
    for gid, rows in table.groupby("group", sort=True):
        if bool(rows["dropped"].iloc[0]):
            continue
        rows = rows[rows["reward"].notna()]  # images the reward models failed on carry no reward
        idx = torch.as_tensor(rows.index.to_numpy().copy())  # pandas 3 hands out read-only arrays
        out.append(Group(rows["prompt"].iloc[0], x[idx], torch.tensor(rows["reward"].to_numpy().copy(), dtype=torch.float32)))
    return out


class Reference:
    """The frozen reference: a copy for full fine-tuning, or the same net with LoRA adapters disabled."""

    def __init__(self, denoiser: torch.nn.Module, lora: bool):
        self.lora = lora
        self.copy = None
        if not lora:
            self.copy = copy.deepcopy(denoiser).eval().requires_grad_(False)

    @torch.no_grad()
    def predict(self, pipe: TinyT2IPipeline, policy: torch.nn.Module, x_t, t, states, pooled) -> torch.Tensor:
        if not self.lora:
            return pipe.predict(x_t, t, states, pooled, denoiser=self.copy)
        policy.disable_adapters()
        try:
            return pipe.predict(x_t, t, states, pooled, denoiser=policy)
        finally:
            policy.enable_adapters()


def add_lora(denoiser: torch.nn.Module, p: TrainParams) -> None:
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=p.lora_rank, lora_alpha=p.lora_alpha or 2 * p.lora_rank,
                                    init_lora_weights="gaussian", target_modules=list(p.lora_targets)))


def group_step(pipe: TinyT2IPipeline, policy, ref: Reference, group: Group, p: TrainParams,
               gen: torch.Generator, scale: float) -> dict:
    """Accumulate the gradient of one group's loss (× scale) into the policy; return its stats."""
    kind = pipe.parameterization
    G = group.x0.shape[0]
    t = sample_timesteps(kind, 1, gen, min_fraction=p.timestep_min_fraction).expand(G)
    noise = torch.randn((1,) + tuple(group.x0.shape[1:]), generator=gen).expand_as(group.x0)
    x_t, target = noisy_and_target(kind, group.x0, noise, t, getattr(pipe.scheduler, "alphas_cumprod", None))
    with torch.no_grad():
        states, pooled = pipe.encode_prompt([group.prompt])
    states = states.expand(G, -1, -1)
    pooled = pooled.expand(G, -1) if pooled is not None else None
    ref_err = ((ref.predict(pipe, policy, x_t, t, states, pooled).float() - target) ** 2).mean(dim=(1, 2, 3))

    def err(sl: slice, grad: bool):
        with torch.set_grad_enabled(grad):
            pred = pipe.predict(x_t[sl], t[sl], states[sl], None if pooled is None else pooled[sl], denoiser=policy)
            return ((pred.float() - target[sl]) ** 2).mean(dim=(1, 2, 3))

    if G <= p.micro_batch:
        delta = err(slice(None), True) - ref_err
        out = gpo_loss(delta[None], group.rewards[None], p.beta, p.arm, generator=gen)
        (out.loss * scale).backward()
    else:
        with torch.no_grad():
            delta0 = torch.cat([err(slice(i, i + p.micro_batch), False) for i in range(0, G, p.micro_batch)]) - ref_err
        leaf = delta0.clone().requires_grad_(True)
        out = gpo_loss(leaf[None], group.rewards[None], p.beta, p.arm, generator=gen)
        (dL,) = torch.autograd.grad(out.loss, leaf)
        for i in range(0, G, p.micro_batch):
            sl = slice(i, i + p.micro_batch)
            (err(sl, True) * dL[sl] * scale).sum().backward()
    return {"loss": out.loss.item(), "implicit_accuracy": float(out.implicit_accuracy),
            "reward_margin": float(out.reward_margin)}


def train_gpo(pipe: TinyT2IPipeline, groups: list[Group], p: TrainParams, out: Path, *, n_dropped: int = 0,
              progress: bool = True, log_fn=None) -> Path:
    """Fine-tune `pipe.denoiser` on the round's groups; checkpoints in out/checkpoints (resumable);
    the final pipeline in out/pipeline; metrics per step in out/train_log.json."""
    if not groups:
        raise GpoError("no group with reward spread to train on", field="groups.group_size",
                       fix="raise G or prompts_per_round; check the reward models on this round's images")
    torch.set_num_threads(p.threads)
    out = Path(out)
    acc = Accelerator(cpu=not torch.cuda.is_available(), project_dir=str(out))
    policy = pipe.denoiser
    for enc in pipe.text_encoders():
        enc.requires_grad_(False).eval()
    lora = p.lora_rank > 0
    ref = Reference(policy, lora)  # before adapters are added: the copy is the plain base
    if lora:
        add_lora(policy, p)
    policy.train()
    trainable = [q for q in policy.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=p.weight_decay)
    policy, opt = acc.prepare(policy, opt)
    steps_per_epoch = -(-len(groups) // p.groups_per_step)
    total = steps_per_epoch * p.epochs
    ckpts = out / "checkpoints"
    start, log = 0, []
    done = sorted(ckpts.glob("step-*"), key=lambda c: int(c.name.split("-")[1])) if ckpts.exists() else []
    if done:
        acc.load_state(str(done[-1]))
        start = int(done[-1].name.split("-")[1])
        log = json.loads((done[-1] / "train_log.json").read_text())
    t0 = time.time()
    bad_in_a_row = 0
    bar = tqdm(total=total, initial=start, desc="gpo train", disable=not progress)
    for step in range(start, total):
        epoch, k = divmod(step, steps_per_epoch)
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(p.seed * 1000 + epoch))
        batch = [groups[int(i)] for i in order[k * p.groups_per_step:(k + 1) * p.groups_per_step]]
        gen = torch.Generator().manual_seed(p.seed * 1_000_003 + step)  # same draws after a resume
        opt.zero_grad(set_to_none=True)
        stats = [group_step(pipe, policy, ref, g, p, gen, 1.0 / len(batch)) for g in batch]
        grads_ok = all(torch.isfinite(q.grad).all() for q in trainable if q.grad is not None) and all(
            math.isfinite(s["loss"]) for s in stats)
        if grads_ok:
            acc.clip_grad_norm_(trainable, p.grad_clip)
            opt.step()
            bad_in_a_row = 0
        else:  # skip the step: the weights stay those of the last good step
            bad_in_a_row += 1
            if bad_in_a_row >= p.max_nonfinite_steps:
                atomic_write_json(out / "train_log.json", log + [{"step": step + 1, "skipped_nonfinite": True}])
                raise GpoError(f"{bad_in_a_row} optimizer steps in a row had a NaN/inf loss or gradient "
                               f"(step {step + 1}); the last good checkpoint is kept in {ckpts}",
                               field="train.max_nonfinite_steps (params/gpo.yaml)", value=p.max_nonfinite_steps,
                               fix="lower train.lr or raise train.beta; check the round's images and rewards")
        row = {"step": step + 1, "epoch": epoch, "skipped_nonfinite": not grads_ok,
               **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]},
               "dropped_group_share": n_dropped / (n_dropped + len(groups)), "seconds": round(time.time() - t0, 2)}
        log.append(row)
        if log_fn:
            log_fn(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['implicit_accuracy']:.2f}")
        if (step + 1) % steps_per_epoch == 0:
            ck = ckpts / f"step-{step + 1}"
            acc.save_state(str(ck))
            (ck / "train_log.json").write_text(json.dumps(log))
    bar.close()
    policy = acc.unwrap_model(policy)
    if lora:  # keep the adapter, then fold it in: the saved pipeline is a plain diffusers pipeline
        policy.save_lora_adapter(str(out / "lora"), safe_serialization=True)
        policy.fuse_lora()
        policy.unload_lora()
    policy.eval()
    pipe.set_denoiser(policy)
    pipe.save_pretrained(out / "pipeline", safe_serialization=True)
    atomic_write_json(out / "train_log.json", log)
    return out / "pipeline"
