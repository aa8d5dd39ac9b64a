"""Forward noising and regression targets for the three parameterizations of GPO.md.

    epsilon: x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε,  target ε
    v:       same x_t,                     target √ᾱ_t ε − √(1−ᾱ_t) x0
    flow:    x_t = (1−σ) x0 + σ ε,         target ε − x0,  model timestep = 1000 σ
"""

from __future__ import annotations

from typing import Literal

import torch

Parameterization = Literal["epsilon", "v_prediction", "flow"]


def sample_timesteps(kind: Parameterization, n: int, generator: torch.Generator | None = None,
                     num_train_timesteps: int = 1000, min_fraction: float = 0.0,
                     flow_density: str = "logit_normal") -> torch.Tensor:
    """Training timesteps. Discrete 0..T−1 uniform for epsilon/v; for flow, σ from logit-normal(0, 1)
    (the SD3 default) or uniform, returned as 1000·σ. `min_fraction` keeps only the noisier part."""
    if kind == "flow":
        if flow_density == "uniform":
            sigma = torch.rand(n, generator=generator)
        elif flow_density == "logit_normal":
            sigma = torch.sigmoid(torch.randn(n, generator=generator))
        else:
            raise ValueError(f"unknown flow timestep density {flow_density!r}; use logit_normal or uniform")
        sigma = min_fraction + (1 - min_fraction) * sigma
        return sigma * num_train_timesteps
    low = int(min_fraction * num_train_timesteps)
    return torch.randint(low, num_train_timesteps, (n,), generator=generator)


def noisy_and_target(kind: Parameterization, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     alphas_cumprod: torch.Tensor | None = None,
                     num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) for clean samples x0, noise ε and timesteps t (one per sample)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    if kind == "flow":
        sigma = (t.float() / num_train_timesteps).view(shape).to(x0)
        return (1 - sigma) * x0 + sigma * noise, noise - x0
    if alphas_cumprod is None:
        raise ValueError("epsilon/v targets need the scheduler's alphas_cumprod")
    abar = alphas_cumprod.to(x0.device)[t.long()].view(shape).to(x0)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = a * x0 + s * noise
    if kind == "epsilon":
        return x_t, noise
    if kind == "v_prediction":
        return x_t, a * noise - s * x0
    raise ValueError(f"unknown parameterization {kind!r}; use epsilon, v_prediction or flow")
