"""Group generation: G images per train prompt from the current model, one recorded seed per image.

Images are PNGs under `<round>/images/<prompt-slug>/<seed>.png`; the manifest table (parquet) has one
row per image with prompt fields, seed, round and path. Re-running skips images already on disk.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
from PIL import Image

from gpo.errors import GpoError
from gpo.evaluate import save_table
from gpo.generate import generate_to
from gpo.model.pipeline import TinyT2IPipeline
from gpo.params import GroupParams
from gpo.paths import inside, safe_name
from gpo.prompts import Prompt
from gpo.resume import digest, resume_or_reset, weights_digest


def pick_prompts(prompts: list[Prompt], n: int, round_index: int, seed: int) -> list[Prompt]:
    """`n` train prompts for a round, half counting and half text where both exist, seeded by round."""
    rng = random.Random(seed * 7919 + round_index)
    by_task = {t: [p for p in prompts if p.task == t and p.split == "train"] for t in ("counting", "text")}
    tasks = [t for t, ps in by_task.items() if ps]
    chosen: list[Prompt] = []
    for i, task in enumerate(tasks):
        k = n // len(tasks) + (1 if i < n % len(tasks) else 0)
        pool = by_task[task]
        chosen += rng.sample(pool, min(k, len(pool)))
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
    # a re-run keeps the images of the same model/params/prompts (resume) and clears any others
    resume_or_reset(folder / "images", {"weights": weights_digest(pipe.denoiser), "groups": g.model_dump(),
                                        "round": round_index, "plan": digest([(r["prompt"], r["seed"]) for r in rows])})
    # missing or corrupt (e.g. truncated) images are made, batch by batch, each batch written at once
    generate_to(pipe, [r["prompt"] for r in rows], [r["seed"] for r in rows], [folder / r["path"] for r in rows],
                steps=g.steps, guidance_scale=g.guidance_scale, batch_size=g.batch_size,
                desc=f"round {round_index}: groups", progress=progress, load=False)
    table = pd.DataFrame(rows)
    save_table(table, folder / "groups.parquet")
    return table


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
