"""What no reward sees: how far a model's backgrounds drift from the base's, on held-out evaluation images.

The world draws every shape and word on a pale, flat background (params/world.yaml render.background_min).
GPO's rewards count shapes and read words; nothing pays for the background, so a fine-tune may tint it
or speckle it. This reads the evaluation images already on disk (nothing is drawn again), takes each
image's 2-px border ring (what the second opinion also treats as background) and reports, per
evaluation:

- the mean of the border's median colour (RGB) over the images;
- its saturation: max − min of that median colour (a grey border is 0), median over the images;
- its speckle: the mean distance of the ring's pixels from that median colour, median and 90th percentile.

    python benchmarks/background_drift.py --eval base=CLONE/data/calibration/base_images \\
        --eval round-2=CLONE/data/rounds/round-2/eval/model_images

Writes benchmarks/results/background_drift.{json,md} (a row per label, replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from gpo.io import atomic_write_json, atomic_write_text
from gpo.rewards.second_opinion import border_ring

RESULTS = Path(__file__).parent / "results"


def border_stats(image: Image.Image, border: int = 2) -> tuple[np.ndarray, float, float]:
    """(median colour, saturation, speckle) of an image's border ring."""
    ring = border_ring(np.asarray(image.convert("RGB"), np.float32), border)
    med = np.median(ring, axis=0)
    return med, float(med.max() - med.min()), float(np.linalg.norm(ring - med, axis=1).mean())


def drift(folder: Path) -> dict:
    meds, sats, speckles = [], [], []
    for path in sorted(folder.glob("*.png")):
        med, sat, speck = border_stats(Image.open(path))
        meds.append(med)
        sats.append(sat)
        speckles.append(speck)
    if not meds:
        raise SystemExit(f"{folder}: no PNG images (an evaluation's <name>_images folder is expected)")
    return {"images": len(meds), "border_rgb_mean": [round(float(v), 1) for v in np.mean(meds, axis=0)],
            "saturation_median": round(float(np.median(sats)), 1),
            "speckle_median": round(float(np.median(speckles)), 1),
            "speckle_p90": round(float(np.percentile(speckles, 90)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", action="append", required=True, metavar="LABEL=FOLDER",
                    help="an evaluation's image folder, e.g. base=data/calibration/base_images")
    a = ap.parse_args()
    path = RESULTS / "background_drift.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for item in a.eval:
        label, folder = item.rsplit("=", 1)  # a label may hold "=", a folder rarely does
        row = {"label": label, "folder": folder, **drift(Path(folder))}
        print(json.dumps(row), flush=True)
        rows = [r for r in rows if r["label"] != label] + [row]
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(path, rows)
    lines = ["| evaluation | images | border colour, mean RGB | saturation (median) | speckle: median / p90 |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['images']} | {tuple(r['border_rgb_mean'])} | {r['saturation_median']} | "
              f"{r['speckle_median']} / {r['speckle_p90']} |" for r in rows]
    atomic_write_text(RESULTS / "background_drift.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
