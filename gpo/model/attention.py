"""float32 attention under gradients, for bf16 autocast on the CPU.

On this CPU (AVX512-BF16) a bf16 GPO step is slower than a float32 one because the bf16
scaled-dot-product attention's backward is (benchmarks/results/throughput.md: bf16 0.55 group-steps/s,
fp32 0.71, bf16 with float32 attention 0.94, one run). `fp32_attention_under_grad` wraps each attention module's
own processor so that it runs with autocast off, on float32 inputs, whenever gradients are on; without
gradients (the reference's forward, sampling) the processor runs unchanged in bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Fp32UnderGrad:
    """An attention processor that calls `inner` in float32 (autocast off) while grad is enabled."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kw):
        if not torch.is_grad_enabled():
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kw)
        with torch.autocast(hidden_states.device.type, enabled=False):
            ehs = None if encoder_hidden_states is None else encoder_hidden_states.float()
            return self.inner(attn, hidden_states.float(), ehs, *args, **kw)


def fp32_attention_under_grad(module: torch.nn.Module, enabled: bool = True) -> Callable[[], None]:
    """Wrap `module`'s attention processors (see Fp32UnderGrad); returns the function that restores them.
    Not enabled, or a module without diffusers attention processors: left as it is (the restore is a no-op)."""
    procs = dict(getattr(module, "attn_processors", None) or {}) if enabled else {}
    if not procs:
        return lambda: None
    module.set_attn_processor({name: Fp32UnderGrad(p) for name, p in procs.items()})
    return lambda: module.set_attn_processor(dict(procs))
