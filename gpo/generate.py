"""Batched generation with one recorded seed per image (used by evaluation and by group generation).

`generate_to` is the resumable form: every image has a file, each batch is written (atomically) as soon
as it is made, and images already on disk (readable) are loaded instead of generated, so a process
killed mid-way loses at most one batch. With `keep_latents` (VAE pipelines: sd, sdxl, sd3) each image's
sampled model-space latents are written beside it (`<seed>.latents.safetensors`) and the PNG is their
exact decoding, so training can use the latents instead of re-encoding the PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gpo.io import atomic_write
from gpo.model.pipeline import TinyT2IPipeline


def generate(pipe: TinyT2IPipeline, texts: Sequence[str], seeds: Sequence[int], *, steps: int,
             guidance_scale: float, batch_size: int, desc: str = "generate",
             progress: bool = True, solver: str = "default", precision: str = "fp32") -> list[Image.Image]:
    """Images for (text, seed) pairs, in order. An image depends on its text and seed, not on the batch it
    was generated in (per-image starting noise, deterministic ODE sampler), up to float rounding: CPU
    kernels sum in a batch-size-dependent order, so a batch of another size can move a pixel by 1/255."""
    if len(texts) != len(seeds):
        raise ValueError("one seed per text")
    images: list[Image.Image] = []
    with tqdm(total=len(texts), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            out = pipe(list(texts[chunk]), seeds=list(seeds[chunk]), num_inference_steps=steps,
                       guidance_scale=guidance_scale, solver=solver, precision=precision)
            images.extend(out.images)
            bar.update(len(out.images))
    return images


def readable_png(path: Path) -> bool:
    """True when the file exists and decodes completely (a crash can leave a half-written file only
    without atomic writes, but a copy or a disk can still truncate one)."""
    if not Path(path).exists():
        return False
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def latents_path(png: Path) -> Path:
    """Where an image's sampled latents are kept: beside it, `<seed>.latents.safetensors`."""
    return Path(png).with_suffix(".latents.safetensors")


def readable_latents(png: Path) -> bool:
    """True when the image's latents file exists and loads."""
    try:
        load_file(str(latents_path(png)))["latents"]
        return True
    except (OSError, KeyError, ValueError, RuntimeError):
        return False


def generate_to(pipe: TinyT2IPipeline, texts: Sequence[str], seeds: Sequence[int], paths: Sequence[Path], *,
                steps: int, guidance_scale: float, batch_size: int, desc: str = "generate",
                progress: bool = True, load: bool = True,
                keep_latents: bool = False, solver: str = "default",
                precision: str = "fp32") -> tuple[list[Image.Image] | None, int]:
    """Make every missing or unreadable `paths[i]` from (texts[i], seeds[i]), one batch at a time, each
    written as soon as it exists. Returns (all images in order, or None when `load` is False; the number
    generated). Same images as `generate`: an image depends only on its text and seed.
    `keep_latents` (pipelines with `decode_latents`): also write and require each image's latents."""
    if not (len(texts) == len(seeds) == len(paths)):
        raise ValueError("one seed and one path per text")
    if keep_latents and not hasattr(pipe, "decode_latents"):
        raise ValueError("keep_latents needs a VAE pipeline (sd, sdxl, sd3)")
    todo = [i for i, path in enumerate(paths)
            if not readable_png(path) or (keep_latents and not readable_latents(path))]
    with tqdm(total=len(texts), initial=len(texts) - len(todo), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            kw = {"seeds": [seeds[i] for i in chunk], "num_inference_steps": steps, "guidance_scale": guidance_scale,
                  "solver": solver, "precision": precision}
            if keep_latents:
                latents = pipe([texts[i] for i in chunk], output_type="latent", **kw).images
                images = pipe.decode_latents(latents)
                for i, z in zip(chunk, latents):  # latents first: a PNG on disk implies its latents are there
                    z = z.clone()
                    atomic_write(latents_path(paths[i]), lambda tmp, z=z: save_file({"latents": z}, str(tmp)))
            else:
                images = pipe([texts[i] for i in chunk], **kw).images
            for i, im in zip(chunk, images):
                atomic_write(Path(paths[i]), lambda tmp, im=im: im.save(tmp, format="PNG"))
            bar.update(len(chunk))
    if not load:
        return None, len(todo)
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images, len(todo)


def load_latents(paths: Sequence[Path]) -> list[torch.Tensor | None]:
    """Each image's kept latents, or None where there are none."""
    return [load_file(str(latents_path(p)))["latents"] if latents_path(p).exists() else None for p in paths]
