"""The GPO loss and its ablation arms, as pure functions of tensors (docs/GPO.md, "The loss").

Shapes: a batch of B groups of G members. `delta[b, i]` = Δ_i = ‖f_θ − y‖² − ‖f_ref − y‖² (mean over
elements) for member i of group b, computed with one timestep and one noise shared by the group.
Δ_i < 0 means the policy explains sample i better than the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Arm = Literal["gpo", "dpo", "dpo-random", "group-unweighted", "dgpo"]
ARMS: tuple[str, ...] = ("gpo", "dpo", "dpo-random", "group-unweighted", "dgpo")


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, clip: float = 5.0) -> torch.Tensor:
    """A_i = (r_i − mean r) / (std r + eps) within each group (last dim), population std, clipped."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    return ((rewards - mean) / (std + eps)).clamp(-clip, clip)


def has_spread(rewards: torch.Tensor) -> torch.Tensor:
    """Groups whose rewards are not all equal (the others carry no signal and are dropped)."""
    return rewards.std(dim=-1, unbiased=False) > 0


def member_delta(pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Δ per sample: policy error minus reference error, mean over all non-batch elements."""
    dims = tuple(range(1, pred.ndim))
    dtype = torch.promote_types(pred.dtype, torch.float32)  # bf16/fp16 models: reduce in fp32
    pred, ref_pred, target = pred.to(dtype), ref_pred.to(dtype), target.to(dtype)
    return ((pred - target) ** 2).mean(dims) - ((ref_pred - target) ** 2).mean(dims)


@dataclass
class LossOut:
    loss: torch.Tensor  # scalar, mean over groups that have at least one pair
    implicit_accuracy: torch.Tensor  # share of weighted pairs where the policy prefers the better sample
    reward_margin: torch.Tensor  # mean (β/2)(Δ_l − Δ_w) over pairs: how far the policy favours winners
    pairs: int


def _pairs(arm: str, rewards: torch.Tensor, adv: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """weights[b, i, j] ≥ 0 for the pair 'i beats j' used by an arm (0 = pair not used)."""
    B, G = rewards.shape
    better = rewards[:, :, None] > rewards[:, None, :]
    if arm == "gpo":
        return (adv[:, :, None] - adv[:, None, :]).clamp(min=0) * better
    if arm == "group-unweighted":
        return better.to(rewards.dtype)
    w = torch.zeros(B, G, G, dtype=rewards.dtype)
    for b in range(B):
        if arm == "dpo":
            i, j = int(rewards[b].argmax()), int(rewards[b].argmin())
            if rewards[b, i] > rewards[b, j]:
                w[b, i, j] = 1.0
        elif arm == "dpo-random":
            cand = better[b].nonzero()
            if len(cand):
                i, j = cand[int(torch.randint(len(cand), (1,), generator=generator))].tolist()
                w[b, i, j] = 1.0
        else:
            raise ValueError(f"unknown loss arm {arm!r}; choose one of {ARMS}")
    return w


def anchor_term(delta: torch.Tensor, adv: torch.Tensor, beta: float, kind: str) -> torch.Tensor:
    """Per-group anchor on the above-average members, (β/2)·Σ_i A_i⁺·g(Δ_i) / G:
    dpop: g = max(0, Δ) — only a winner the policy explains worse than the reference is pulled back;
    sft:  g = Δ — every winner is pulled toward the policy explaining it better than the reference."""
    pos = adv.clamp(min=0)
    g = delta.clamp(min=0) if kind == "dpop" else delta
    return (beta / 2) * (pos * g).sum(-1) / delta.shape[-1]


def gpo_loss(delta: torch.Tensor, rewards: torch.Tensor, beta: float, arm: Arm = "gpo",
             generator: torch.Generator | None = None, eps: float = 1e-4, clip: float = 5.0,
             anchor: float = 0.0, anchor_kind: str = "dpop") -> LossOut:
    """Groupwise preference loss. `delta` (B, G) carries the gradient; `rewards` (B, G) do not.

    gpo:              mean over pairs A_i > A_j of (A_i − A_j) · softplus((β/2)(Δ_i − Δ_j))
    dpo:              softplus((β/2)(Δ_best − Δ_worst)) per group (Diffusion-DPO on one pair)
    dpo-random:       the same on one random pair with r_w > r_l
    group-unweighted: all pairs r_i > r_j with weight 1
    dgpo:             softplus((β/2) Σ_i A_i Δ_i / G)

    anchor > 0 adds anchor · `anchor_term` per group with spread (any arm): a guard against Diffusion-DPO's
    likelihood displacement, where the policy fits winners and losers alike worse than the reference.
    """
    if delta.shape != rewards.shape or delta.ndim != 2:
        raise ValueError(f"delta and rewards must both be (groups, members), got {tuple(delta.shape)} and "
                         f"{tuple(rewards.shape)}")
    rewards = rewards.detach().to(delta.dtype)
    adv = group_advantages(rewards, eps, clip)
    half_beta = beta / 2
    if arm == "dgpo":
        G = delta.shape[1]
        keep = has_spread(rewards)
        z = half_beta * (adv * delta).sum(-1) / G
        per = F.softplus(z) + (anchor * anchor_term(delta, adv, beta, anchor_kind) if anchor else 0)
        loss = per[keep].mean() if keep.any() else delta.sum() * 0
        acc = (z[keep] < 0).float().mean() if keep.any() else torch.tensor(0.0)
        return LossOut(loss, acc, (-z[keep]).mean() if keep.any() else torch.tensor(0.0), int(keep.sum()))
    w = _pairs(arm, rewards, adv, generator)  # (B, G, G)
    diff = delta[:, :, None] - delta[:, None, :]  # Δ_i − Δ_j
    used = w > 0
    n_per_group = used.sum(dim=(1, 2))
    keep = n_per_group > 0
    if not keep.any():  # no group with a usable pair: zero loss, zero gradient, graph intact
        zero = delta.sum() * 0
        return LossOut(zero, torch.tensor(0.0), torch.tensor(0.0), 0)
    per_group = (w * F.softplus(half_beta * diff)).sum(dim=(1, 2))[keep] / n_per_group[keep]
    if anchor:
        per_group = per_group + anchor * anchor_term(delta, adv, beta, anchor_kind)[keep]
    with torch.no_grad():
        acc = ((diff < 0) & used).sum().float() / used.sum()
        margin = (-half_beta * diff)[used].mean()
    return LossOut(per_group.mean(), acc, margin, int(used.sum()))
