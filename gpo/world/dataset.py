"""Prompt tables of the embedded world and batches of rendered ground truth for pretraining."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from gpo import prompts as P
from gpo.model.pipeline import images_to_tensor as to_tensor  # noqa: F401  (re-exported for the world's users)
from gpo.params import PromptParams, RenderParams
from gpo.world.render import RenderSpec, render


def build_prompts(p: PromptParams) -> list[P.Prompt]:
    """The full prompt table (all tasks, all splits) for a vocabulary."""
    c, t = p.counting, p.text
    counting = P.counting_prompts(c.classes, c.colors, c.counts, c.heldout_per_count, p.seed)
    text = P.text_prompts(t.words, t.templates, t.heldout_words, t.heldout_share, p.seed, t.practice_words)
    return P.dedupe(counting + text)


def spec(r: RenderParams) -> RenderSpec:
    return RenderSpec(**r.model_dump())


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Inverse of `to_tensor` (values clamped)."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class GroundTruthSampler:
    """Endless random batches of (prompt text, rendered image) from the training prompts."""

    def __init__(self, prompts: list[P.Prompt], render_params: RenderParams, text_share: float, seed: int):
        self.counting = [p for p in prompts if p.task == "counting" and p.split == "train"]
        self.text = [p for p in prompts if p.task == "text" and p.split == "train"]
        self.spec = spec(render_params)
        self.text_share = text_share if self.text and self.counting else float(bool(self.text))
        self.rng = random.Random(seed)

    def state(self) -> object:
        return self.rng.getstate()

    def set_state(self, state: object) -> None:
        self.rng.setstate(state)

    def batch(self, n: int) -> tuple[list[str], torch.Tensor]:
        chosen = [self.rng.choice(self.text if self.rng.random() < self.text_share else self.counting)
                  for _ in range(n)]
        images = [render(p, self.rng.randrange(2**31), self.spec).image for p in chosen]
        return [p.text for p in chosen], to_tensor(images)


def save_grid(images: list[Image.Image], path: Path, cols: int = 8, scale: int = 2,
              labels: list[str] | None = None) -> Path:
    """A contact sheet of images (optionally captioned), written atomically as PNG."""
    from PIL import ImageDraw

    from gpo.io import atomic_write

    w, h = images[0].size
    w, h = w * scale, h * scale
    cap = 12 if labels else 0
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * (h + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + cap)
        sheet.paste(im.resize((w, h), Image.Resampling.NEAREST), (x, y + cap))
        if labels:
            draw.text((x + 1, y), labels[i][: max(4, w // 6)], fill="black")
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
