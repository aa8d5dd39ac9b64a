"""Group generation: G images per train prompt from the current model, one recorded seed per image.

Images are PNGs under `<round>/images/<prompt-slug>/<seed>.png`; the manifest table (parquet) has one
row per image with prompt fields, seed, round and path. Re-running skips images already on disk.
With `groups.keep_latents` (VAE pipelines) each image's sampled latents sit beside it and
`model_inputs` hands them to the trainer instead of re-encoding the PNG. Under `accelerate launch`
the prompts are dealt to the ranks (a group is generated whole by one rank); the main process stamps
the folder before and writes the manifest after, once every rank is done.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from gpo.errors import GpoError
from gpo.evaluate import save_table
from gpo.generate import generate_to, load_latents
from gpo.model.device import process_state
from gpo.model.pipeline import TinyT2IPipeline
from gpo.model.sampler import sampler_stamp
from gpo.params import GroupParams
from gpo.paths import inside, safe_name
from gpo.prompts import Prompt
from gpo.resume import digest, resume_or_reset, weights_digest


def pick_prompts(prompts: list[Prompt], n: int, round_index: int, seed: int, text_share: float,
                 text_pool: str = "train") -> list[Prompt]:
    """`n` train prompts for a batch of groups, seeded by the batch index: `text_share` of them text prompts
    (floored, at least one while the share is above 0 and n >= 2), the rest counting, where both exist.
    Text prompts come from the split `train`, or with text_pool "practice" from the split `practice` (words
    never pretrained on) where the table has it.
    Counting prompts are spread evenly over the requested counts (a small batch of random prompts drifts,
    e.g. toward "draw fewer", when it happens to hold mostly large counts)."""
    rng = random.Random(seed * 7919 + round_index)
    by_task = {t: [p for p in prompts if p.task == t and p.split == "train"] for t in ("counting", "text")}
    if text_pool == "practice":  # GPO's own words (groups.text_pool), where the table has them
        by_task["text"] = [p for p in prompts if p.task == "text" and p.split == "practice"] or by_task["text"]
    want = {"counting": n, "text": n} if not all(by_task.values()) else split_tasks(n, text_share)
    chosen: list[Prompt] = []
    for task, pool in by_task.items():
        k = min(want[task], len(pool))
        if pool and k:
            chosen += balanced_sample(pool, k, rng) if task == "counting" else rng.sample(pool, k)
    return chosen


def split_tasks(n: int, text_share: float) -> dict[str, int]:
    """How many of `n` prompts are text and how many counting: floor(n·share) text (1e-9 absorbs float error,
    e.g. 25 × 0.2), but each task whose share is above 0 gets one prompt at least while n >= 2."""
    text = math.floor(n * text_share + 1e-9)
    if n >= 2:
        text = max(text, 1) if text_share > 0 else text
        text = min(text, n - 1) if text_share < 1 else text
    return {"counting": n - text, "text": text}


def balanced_sample(pool: list[Prompt], k: int, rng: random.Random) -> list[Prompt]:
    """k prompts (at most the pool) with the requested counts as even as k allows (counts in random order)."""
    k = min(k, len(pool))
    by_count: dict[int, list[Prompt]] = {}
    for p in pool:
        by_count.setdefault(int(p.count or 0), []).append(p)
    for ps in by_count.values():
        rng.shuffle(ps)
    counts = sorted(by_count)
    rng.shuffle(counts)
    chosen: list[Prompt] = []
    while len(chosen) < k:
        for c in counts:
            if by_count[c] and len(chosen) < k:
                chosen.append(by_count[c].pop())
    return chosen


def image_seed(g: GroupParams, round_index: int, prompt_index: int, member: int) -> int:
    return g.seed + 1_000_000 * round_index + 1000 * prompt_index + member


def generate_groups(pipe: TinyT2IPipeline, prompts: list[Prompt], g: GroupParams, round_index: int,
                    folder: Path, progress: bool = True) -> pd.DataFrame:
    folder = Path(folder).resolve()  # `inside` returns resolved paths
    rows = []
    for pi, p in enumerate(prompts):
        for m in range(g.group_size):
            seed = image_seed(g, round_index, pi, m)
            path = inside(folder, "images", safe_name(p.text), f"{seed}.png")
            rows.append({"round": round_index, "group": pi, "member": m, "prompt": p.text, "task": p.task,
                         "split": p.split, "cls": p.cls, "color": p.color, "count": p.count, "word": p.word,
                         "seed": seed, "path": str(path.relative_to(folder))})
    state = process_state()  # one process unless started by `accelerate launch`
    keep = g.keep_latents and hasattr(pipe, "decode_latents")  # the embedded model has no VAE: its PNG is the sample
    # a re-run keeps the images of the same model/params/prompts (resume) and clears any others
    if state.is_main_process:
        resume_or_reset(folder / "images", {"weights": weights_digest(pipe.denoiser), "groups": g.model_dump(),
                                            "sampler": sampler_stamp(pipe.scheduler, g.solver, g.precision),
                                            "round": round_index,
                                            "plan": digest([(r["prompt"], r["seed"]) for r in rows])})
    state.wait_for_everyone()
    mine = [r for r in rows if r["group"] % state.num_processes == state.process_index]  # whole groups per rank
    # missing or corrupt (e.g. truncated) images are made, batch by batch, each batch written at once
    generate_to(pipe, [r["prompt"] for r in mine], [r["seed"] for r in mine], [folder / r["path"] for r in mine],
                **g.sampler_kwargs(), desc=f"round {round_index}: groups", progress=progress, load=False, keep_latents=keep)
    state.wait_for_everyone()
    table = pd.DataFrame(rows)
    if state.is_main_process:
        save_table(table, folder / "groups.parquet")
    state.wait_for_everyone()
    return table


def model_inputs(table: pd.DataFrame, folder: Path, encode) -> torch.Tensor:
    """x0 for the trainer, in table order: each image's kept latents where they exist (exactly what the
    sampler produced), else `encode` (the pipeline's `encode_images`) of its PNG."""
    x = load_latents([Path(folder) / rel for rel in table["path"]])
    missing = [i for i, v in enumerate(x) if v is None]
    if missing:
        for i, v in zip(missing, encode(load_images(table.iloc[missing], folder))):
            x[i] = v
    return torch.stack(x)


def load_images(table: pd.DataFrame, folder: Path) -> list[Image.Image]:
    """The round's images in table order; a missing or corrupt one is a clear error naming it."""
    out = []
    for rel in table["path"]:
        path = Path(folder) / rel
        try:
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:
            raise GpoError(f"cannot read a generated image: {err}", file=str(path),
                           fix="delete it and re-run the generate step (it regenerates exactly the missing or "
                               "corrupt images from their recorded seeds)") from None
    return out
