"""The sampler trap of docs/GPO.md: x0 clipping or thresholding under classifier-free guidance.

diffusers' DDIM (and DDPM, DPM-Solver, UniPC, ...) with `clip_sample=True` or `thresholding=True` clips
the predicted x0 but keeps the unclipped noise estimate, so every step rebuilds x_{t-1} from a
mismatched pair. Under CFG the guided x0 overshoots [-1, 1] wherever the guidance pushes (a third of
the pixels of the embedded world's light backgrounds at the first step), and the sample drifts, more
with more steps. Every pipeline gpo loads goes through `unclipped`, so groups and evaluations are
drawn by the plain ODE step.
"""

from __future__ import annotations

import logging

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


def sampler_stamp(scheduler) -> dict:
    """What of the sampler goes into the resume stamps of generated images (gpo/resume.py): images drawn by
    another scheduler or with clipping on are never reused."""
    return {"scheduler": type(scheduler).__name__, "clipping": clipping(scheduler)}
