"""GPO fine-tuning: groupwise, reward-weighted Diffusion-DPO against a frozen reference (accelerate).

For each group: K = train.draws draws of a timestep and a noise, each shared by all G members; Δ_i
from the policy and the reference at each draw; the loss of gpo/loss.py averaged over the draws.
Memory stays flat in G·K: with more (draw, member) pairs than micro_batch the trainer first computes
every Δ without a graph, takes dL/dΔ, then back-propagates micro-batch by micro-batch (the same
gradient as one big batch, one extra forward). Full fine-tuning keeps a frozen copy of the
denoiser as reference; LoRA (peft) uses the same network with adapters disabled; with
train.reference: round the caller passes the round's start model's denoiser instead.

Memory features (params/gpo.yaml `train`): gradient checkpointing, bf16/fp16 autocast, prompt
embeddings computed once per round (text encoders then leave the accelerator).

Off by default (params/gpo.yaml `train`), measured in docs/gpo.md ("Does a GPO update reach the
sampler?"): a winner anchor against likelihood displacement (`anchor`), an EMA of the iterates as the
round's model (`ema_decay`), Δ at each member's own sampling noise (`noise: seed`) and Δ on the
guided prediction (`guidance_scale`). Every step logs the mean Δ of the above- and below-average members.

Across processes (`accelerate launch`): every rank walks the same shuffled steps; the groups of a
step are dealt round-robin to the ranks (a group stays whole on one rank), and each group's timestep
and noise come from a generator seeded by (step, slot in the step), so a group gets the same draws on
any rank. Gradients are summed across ranks once per step (an all-reduce; no DDP wrapper, whose
per-backward averaging would need equal micro-batch counts on every rank), so every rank takes the
same optimizer step as one process would on the whole step. Checkpoints, logs and the final pipeline
are written by the main process.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gpo.errors import GpoError
from gpo.io import atomic_write, atomic_write_json
from gpo.loss import gpo_loss
from gpo.model.attention import fp32_attention_under_grad
from gpo.model.pipeline import TinyT2IPipeline
from gpo.model.targets import noisy_and_target, sample_timesteps
from gpo.params import TrainParams
from gpo.rewards.arith import shaped_reward
from gpo.world.dataset import to_tensor


@dataclass
class Group:
    prompt: str
    x0: torch.Tensor  # (G, C, H, W) clean samples in model space
    rewards: torch.Tensor  # (G,)
    seeds: list[int] | None = None  # each member's sampling seed (train.noise = seed)


def groups_from_table(table: pd.DataFrame, images=None, encode=to_tensor, *, x0: torch.Tensor | None = None,
                      exact_weight: float = 0.0) -> list[Group]:
    """Groups with spread (dropped groups carry no signal) from a rewards table and its images;
    `encode` maps images to model space (pixels here, VAE latents for real pipelines). Or pass `x0`,
    the model-space samples in table order (e.g. kept latents: gpo/groups.py `model_inputs`).
    `exact_weight` (train.exact_weight): the rewards trained on are `shaped_reward` of the table's."""
    x = x0 if x0 is not None else encode(list(images))
    out = []
    for gid, rows in table.groupby("group", sort=True):
        if bool(rows["dropped"].iloc[0]):
            continue
        rows = rows[rows["reward"].notna()]  # images the reward models failed on carry no reward
        idx = torch.as_tensor(rows.index.to_numpy().copy())  # pandas 3 hands out read-only arrays
        correct = rows["correct"] if exact_weight else [False] * len(rows)  # the graded reward needs no flag
        r = [shaped_reward(float(v), bool(c), exact_weight) for v, c in zip(rows["reward"], correct)]
        if len(set(r)) < 2:  # e.g. exact_weight 1 on a group with no exact member: no signal left
            continue
        out.append(Group(rows["prompt"].iloc[0], x[idx], torch.tensor(r, dtype=torch.float32),
                         [int(v) for v in rows["seed"]] if "seed" in rows else None))
    return out


class Reference:
    """The frozen reference: a copy for full fine-tuning, the same net with LoRA adapters disabled, or
    another model's denoiser (`fixed`: train.reference round)."""

    def __init__(self, denoiser: torch.nn.Module, lora: bool, fixed: torch.nn.Module | None = None):
        """`fixed`: another model's denoiser as the reference (train.reference: round), used as it is."""
        self.lora = lora and fixed is None
        self.copy = None
        if fixed is not None:
            self.copy = fixed.eval().requires_grad_(False)
        elif not lora:
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
    """LoRA adapters with a random init seeded by train.seed: the same adapters on every rank and re-run."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        denoiser.add_adapter(LoraConfig(r=p.lora_rank, lora_alpha=p.lora_alpha or 2 * p.lora_rank,
                                        init_lora_weights="gaussian", target_modules=list(p.lora_targets)))


def group_step(pipe: TinyT2IPipeline, policy, ref: Reference, group: Group, p: TrainParams,
               gen: torch.Generator, scale: float, *, embeds: tuple | None = None, acc: Accelerator | None = None,
               uncond_embeds: tuple | None = None) -> dict:
    """Accumulate the gradient of one group's loss (× scale) into the policy; return its stats.
    `embeds`: the prompt's (states, pooled) when precomputed; `acc`: autocast and (fp16) loss scaling."""
    kind = pipe.parameterization
    device = next(policy.parameters()).device
    G, K = group.x0.shape[0], p.draws
    # K draws of (t, ε) on the CPU from `gen`, each shared by the whole group: the same draws on any
    # device and any rank; the group's loss is the mean of its K per-draw losses
    draws_t, draws_noise = [], []
    for _ in range(K):
        draws_t.append(sample_timesteps(kind, 1, gen, min_fraction=p.timestep_min_fraction))
        draws_noise.append(torch.randn((1,) + tuple(group.x0.shape[1:]), generator=gen))
    t_all, noise_all = torch.cat(draws_t).to(device), torch.cat(draws_noise)
    member_noise = None
    if p.noise == "seed":  # each member noised with its own starting noise (near its own ODE trajectory)
        if not hasattr(pipe, "initial_noise") or group.seeds is None:
            raise GpoError("train.noise = seed needs the embedded pipeline and the groups' seeds",
                           field="train.noise (params/gpo.yaml)", value=p.noise, fix="use train.noise: shared")
        member_noise = pipe.initial_noise(group.seeds).to(device)
    alphas = getattr(pipe.scheduler, "alphas_cumprod", None)
    if embeds is None:
        with torch.no_grad():
            embeds = pipe.encode_prompt([group.prompt])
    states1, pooled1 = (None if e is None else e.to(device) for e in embeds)
    guided = p.guidance_scale != 1.0
    if guided:
        if uncond_embeds is None:
            with torch.no_grad():
                uncond_embeds = pipe.encode_prompt([""])
        u_states1, u_pooled1 = (None if e is None else e.to(device) for e in uncond_embeds)
    autocast = acc.autocast if acc is not None else nullcontext
    backward = acc.backward if acc is not None else torch.Tensor.backward
    # the K·G (draw, member) pairs in draw-major order, built per micro-batch so memory does not grow with G·K
    slices = [slice(i, min(i + p.micro_batch, K * G)) for i in range(0, K * G, p.micro_batch)]

    def err(sl: slice, grad: bool, reference: bool = False) -> torch.Tensor:
        flat = torch.arange(sl.start, sl.stop)
        draw, member = flat // G, flat % G
        x0 = group.x0[member].to(device)
        n = x0.shape[0]
        t = t_all[draw.to(device)]
        noise = noise_all[draw].to(device) if member_noise is None else member_noise[member.to(device)]
        x_t, target = noisy_and_target(kind, x0, noise, t, alphas)
        states = states1.expand(n, -1, -1)
        pooled = pooled1.expand(n, -1) if pooled1 is not None else None
        if guided:  # the sampler's velocity: uncond + w·(cond − uncond), both halves in one batch
            x_t = torch.cat([x_t, x_t])
            states = torch.cat([u_states1.expand(n, -1, -1), states])
            pooled = torch.cat([u_pooled1.expand(n, -1), pooled]) if pooled is not None else None
            t = torch.cat([t, t])
        with torch.set_grad_enabled(grad and not reference), autocast():
            if reference:
                pred = ref.predict(pipe, policy, x_t, t, states, pooled)
            else:
                pred = pipe.predict(x_t, t, states, pooled, denoiser=policy)
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + p.guidance_scale * (cond - uncond)
        return ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))

    ref_err = torch.cat([err(sl, False, reference=True) for sl in slices])
    rewards = group.rewards.to(device)
    rows = rewards[None].expand(K, G)  # draw k's Δ row is scored against the same rewards
    if len(slices) == 1:
        delta = err(slices[0], True) - ref_err
        out = gpo_loss(delta.view(K, G), rows, p.beta, p.arm, generator=gen, anchor=p.anchor, anchor_kind=p.anchor_kind)
        backward(out.loss * scale)
        delta0 = delta.detach()
    else:
        with torch.no_grad():
            delta0 = torch.cat([err(sl, False) for sl in slices]) - ref_err
        leaf = delta0.clone().requires_grad_(True)
        out = gpo_loss(leaf.view(K, G), rows, p.beta, p.arm, generator=gen, anchor=p.anchor, anchor_kind=p.anchor_kind)
        (dL,) = torch.autograd.grad(out.loss, leaf)
        for sl in slices:
            backward((err(sl, True) * dL[sl] * scale).sum())
    # Δ of the above- and below-average members: both rising = the policy fits every sample worse than
    # the reference (Diffusion-DPO's likelihood displacement), the margin between them being the signal
    above, below = (rewards > rewards.mean()).repeat(K), (rewards < rewards.mean()).repeat(K)
    return {"loss": out.loss.item(), "implicit_accuracy": float(out.implicit_accuracy),
            "reward_margin": float(out.reward_margin),
            "delta_above": float(delta0[above].mean()) if above.any() else 0.0,
            "delta_below": float(delta0[below].mean()) if below.any() else 0.0}


STAT_KEYS = ("loss", "implicit_accuracy", "reward_margin", "delta_above", "delta_below")


def group_generator(seed: int, step: int, slot: int, batch: int = 0) -> torch.Generator:
    """The draws of the group in `slot` of optimizer step `step` of the chain's batch of groups `batch`
    (gpo/round.py batch_index): independent of which rank runs it, fresh for every iteration and round."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 10_007 + slot) + batch * 998_244_353)


def precompute_embeds(pipe, prompts: list[str]) -> dict[str, tuple]:
    """Each prompt encoded once (alone, as per-group encoding does: the same numbers), kept on the CPU."""
    out = {}
    with torch.no_grad():
        for text in sorted(set(prompts)):
            states, pooled = pipe.encode_prompt([text])
            out[text] = (states.cpu(), None if pooled is None else pooled.cpu())
    return out


def all_reduce_sum(tensors: list[torch.Tensor], bucket_elems: int = 1 << 24) -> None:
    """Sum tensors in place across ranks, in flat buckets (one collective per ~64 MB of float32)."""
    import torch.distributed as dist

    i = 0
    while i < len(tensors):
        j, n = i, 0
        while j < len(tensors) and (n == 0 or n + tensors[j].numel() <= bucket_elems):
            n += tensors[j].numel()
            j += 1
        flat = torch.cat([x.reshape(-1).float() for x in tensors[i:j]])
        dist.all_reduce(flat)
        k = 0
        for x in tensors[i:j]:
            x.copy_(flat[k:k + x.numel()].view_as(x))
            k += x.numel()
        i = j


def make_accelerator(p: TrainParams, project_dir: Path | None = None) -> Accelerator:
    """An Accelerator with this round's mixed precision. accelerate keeps its settings in a process-wide
    singleton that refuses a second precision, so a long-lived process (a flow, the tests) training
    twice resets it here; the process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=p.mixed_precision,
                      project_dir=None if project_dir is None else str(project_dir))
    if p.mixed_precision == "fp16" and acc.device.type == "cpu":
        raise GpoError("fp16 mixed precision needs a GPU (accelerate ignores it on the CPU)",
                       field="train.mixed_precision (params/gpo.yaml)", value=p.mixed_precision,
                       fix="use bf16 on the CPU, or run on a GPU")
    return acc


def train_gpo(pipe: TinyT2IPipeline, groups: list[Group], p: TrainParams, out: Path, *, n_dropped: int = 0,
              progress: bool = True, log_fn=None, chain_batch: int = 0,
              reference: torch.nn.Module | None = None) -> Path:
    """Fine-tune `pipe.denoiser` on the round's groups; checkpoints in out/checkpoints (resumable);
    the final pipeline in out/pipeline; metrics per step in out/train_log.json. Under `accelerate
    launch` every rank calls this with the same groups (see the module docstring). `chain_batch`: the chain's
    batch index of these groups, so that every iteration draws its own (t, ε), not the previous one's.
    `reference`: the frozen reference's denoiser when it is not the start model (train.reference: round);
    None = a frozen copy of `pipe.denoiser` as it starts (LoRA: the same net with adapters disabled)."""
    if not groups:
        raise GpoError("no group with reward spread to train on", field="groups.group_size",
                       fix="raise G or prompts_per_round; check the reward models on this round's images")
    torch.set_num_threads(p.threads)
    out = Path(out)
    acc = make_accelerator(p, out)
    world, rank = acc.num_processes, acc.process_index
    policy = pipe.denoiser
    encoders = pipe.text_encoders()
    for enc in encoders:
        enc.requires_grad_(False).eval()
    embeds = None
    if p.precompute_prompt_embeds:  # text encoders are not needed again until the pipeline is saved
        embeds = precompute_embeds(pipe, [g.prompt for g in groups] + ([""] if p.guidance_scale != 1.0 else []))
        homes = [next(enc.parameters()).device for enc in encoders]
        for enc in encoders:
            enc.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    policy.to(acc.device)
    lora = p.lora_rank > 0
    if reference is not None:
        reference.to(acc.device)
    ref = Reference(policy, lora, reference)  # before adapters are added: the copy is the plain base
    if lora:
        add_lora(policy, p)
    if p.gradient_checkpointing:
        if not getattr(policy, "_supports_gradient_checkpointing", False):
            raise GpoError(f"{type(policy).__name__} does not support gradient checkpointing",
                           field="train.gradient_checkpointing (params/gpo.yaml)", value=True, fix="set it to false")
        policy.enable_gradient_checkpointing()
    policy.train()
    # bf16 on the CPU: attention in float32 where a backward follows (gpo/model/attention.py)
    cpu_bf16 = p.mixed_precision == "bf16" and acc.device.type == "cpu"
    restore_attention = fp32_attention_under_grad(policy, enabled=cpu_bf16 and p.fp32_attention_on_cpu)
    trainable = [q for q in policy.parameters() if q.requires_grad]
    opt = acc.prepare(torch.optim.AdamW(trainable, lr=p.lr, weight_decay=p.weight_decay))
    # EMA of the trainable weights, started at the start model; the round's model is the EMA when on
    ema = [q.detach().clone() for q in trainable] if p.ema_decay > 0 else None
    # the policy is not prepared (no DDP wrapper: gradients are summed by hand), so accelerate's state
    # holds the optimizer and RNGs; the weights go beside it as safetensors (no pickle)
    steps_per_epoch = -(-len(groups) // p.groups_per_step)
    total = steps_per_epoch * p.epochs
    ckpts = out / "checkpoints"
    start, log = 0, []
    # complete checkpoints only: the train log is written last (a kill mid-save leaves an older one to use)
    done = sorted((c for c in ckpts.glob("step-*") if (c / "policy.safetensors").exists()
                   and (c / "train_log.json").exists()), key=lambda c: int(c.name.split("-")[1])) if ckpts.exists() else []
    if done:
        acc.load_state(str(done[-1]))
        policy.load_state_dict(load_file(str(done[-1] / "policy.safetensors"), device=str(acc.device)))
        if ema is not None:
            saved = load_file(str(done[-1] / "ema.safetensors"), device=str(acc.device))
            ema = [saved[str(i)] for i in range(len(ema))]
        start = int(done[-1].name.split("-")[1])
        log = json.loads((done[-1] / "train_log.json").read_text())
    bad_in_a_row = 0
    bar = tqdm(total=total, initial=start, desc="gpo train", disable=not progress or not acc.is_main_process)
    for step in range(start, total):
        epoch, k = divmod(step, steps_per_epoch)
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(p.seed * 1000 + epoch))
        batch = [groups[int(i)] for i in order[k * p.groups_per_step:(k + 1) * p.groups_per_step]]
        opt.zero_grad(set_to_none=True)
        sums = torch.zeros(len(STAT_KEYS))
        for slot in range(rank, len(batch), world):  # this rank's share of the step, groups whole
            g = batch[slot]
            stats = group_step(pipe, policy, ref, g, p, group_generator(p.seed, step, slot, chain_batch), 1.0 / len(batch),
                               embeds=embeds[g.prompt] if embeds is not None else None, acc=acc,
                               uncond_embeds=embeds.get("") if embeds is not None else None)
            sums += torch.tensor([stats[key] for key in STAT_KEYS])
        if world > 1:  # the step's gradient = the sum over all its groups, on every rank
            for q in trainable:
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
            sums = sums.to(acc.device)
            all_reduce_sum([q.grad for q in trainable] + [sums])
            sums = sums.cpu()
        loss_ok = bool(torch.isfinite(sums).all())
        grads_ok = loss_ok and all(torch.isfinite(q.grad).all() for q in trainable if q.grad is not None)
        overflow, grad_norm = False, None
        if grads_ok:
            grad_norm = float(acc.clip_grad_norm_(trainable, p.grad_clip))  # before clipping
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [q.detach() for q in trainable], 1 - p.ema_decay)
            bad_in_a_row = 0
        elif loss_ok and acc.scaler is not None:  # fp16: the loss scale overflowed; the scaler skips the
            opt.step()                            # update and lowers the scale (not a fault of the data)
            overflow = True
        else:  # skip the step: the weights stay those of the last good step
            bad_in_a_row += 1
            if bad_in_a_row >= p.max_nonfinite_steps:
                if acc.is_main_process:
                    atomic_write_json(out / "train_log.json", log + [{"step": step + 1, "skipped_nonfinite": True}])
                raise GpoError(f"{bad_in_a_row} optimizer steps in a row had a NaN/inf loss or gradient "
                               f"(step {step + 1}); the last good checkpoint is kept in {ckpts}",
                               field="train.max_nonfinite_steps (params/gpo.yaml)", value=p.max_nonfinite_steps,
                               fix="lower train.lr or raise train.beta; check the round's images and rewards")
        row = {"step": step + 1, "epoch": epoch, "skipped_nonfinite": not grads_ok and not overflow,
               **{key: float(v) / len(batch) for key, v in zip(STAT_KEYS, sums)}, "grad_norm": grad_norm,
               "dropped_group_share": n_dropped / (n_dropped + len(groups))}  # no seconds: a DVC output
        if overflow:
            row["skipped_fp16_overflow"] = True
        log.append(row)
        if log_fn and acc.is_main_process:
            log_fn(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['implicit_accuracy']:.2f}")
        if (step + 1) % steps_per_epoch == 0:
            ck = ckpts / f"step-{step + 1}"
            acc.save_state(str(ck))  # every rank: accelerate writes the optimizer on the main process only
            if acc.is_main_process:
                weights = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
                atomic_write(ck / "policy.safetensors", lambda tmp: save_file(weights, str(tmp)))
                if ema is not None:
                    ema_w = {str(i): v.detach().cpu().contiguous() for i, v in enumerate(ema)}
                    atomic_write(ck / "ema.safetensors", lambda tmp: save_file(ema_w, str(tmp)))
                atomic_write_json(ck / "train_log.json", log)
            acc.wait_for_everyone()
    bar.close()
    restore_attention()
    if ema is not None:  # the model of the round is the EMA of the iterates
        with torch.no_grad():
            for q, v in zip(trainable, ema):
                q.copy_(v)
    if lora:  # keep the adapter, then fold it in: the saved pipeline is a plain diffusers pipeline
        if acc.is_main_process:
            policy.save_lora_adapter(str(out / "lora"), safe_serialization=True)
        policy.fuse_lora()
        policy.unload_lora()
    if p.gradient_checkpointing:
        policy.disable_gradient_checkpointing()
    policy.eval()
    pipe.set_denoiser(policy)
    if embeds is not None:
        for enc, home in zip(encoders, homes):
            enc.to(home)
    if acc.is_main_process:
        pipe.save_pretrained(out / "pipeline", safe_serialization=True)
        atomic_write_json(out / "train_log.json", log)
    acc.wait_for_everyone()
    return out / "pipeline"
