"""The process's place in an `accelerate launch` run, the same in every module that asks.

accelerate keeps one process-wide state, set by whoever asks first. Asked without `cpu=True` on a
machine without CUDA, it does not join the launched process group (each rank would believe it is
alone and do all the work), so every gpo module asks through `process_state()`.
"""

from __future__ import annotations

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """Rank, world size and device: one process unless started by `accelerate launch` (or torchrun)."""
    return PartialState(cpu=not torch.cuda.is_available())
