"""Batched generation with one recorded seed per image (used by evaluation and by group generation)."""

from __future__ import annotations

from typing import Sequence

from PIL import Image
from tqdm.auto import tqdm

from gpo.model.pipeline import TinyT2IPipeline


def generate(pipe: TinyT2IPipeline, texts: Sequence[str], seeds: Sequence[int], *, steps: int,
             guidance_scale: float, batch_size: int, desc: str = "generate",
             progress: bool = True) -> list[Image.Image]:
    """Images for (text, seed) pairs, in order. An image depends only on its text and seed, not on
    the batch it was generated in (per-image starting noise, deterministic ODE sampler)."""
    if len(texts) != len(seeds):
        raise ValueError("one seed per text")
    images: list[Image.Image] = []
    with tqdm(total=len(texts), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            out = pipe(list(texts[chunk]), seeds=list(seeds[chunk]), num_inference_steps=steps,
                       guidance_scale=guidance_scale)
            images.extend(out.images)
            bar.update(len(out.images))
    return images
