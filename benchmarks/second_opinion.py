"""The second-opinion scorer (gpo/rewards/second_opinion.py), measured: how its method was chosen, its
accuracy on rendered ground truth, and its agreement with the reward models (YOLO, EasyOCR) on a
model's generated held-out images.

1. Choice (rendered *training* prompts, seeds of their own): the counting and reading variants side by
   side, so the defaults are picked on images the calibration does not use.
2. Calibration (rendered *held-out* prompts, the protocol of `gpo calibrate`: `eval.gt_images` per task,
   seeds from `eval.seed_offset`): exact-count accuracy, letter accuracy, exact-word accuracy.
3. Agreement on generated images: evaluations' score tables and images (default: the calibration's
   evaluation of the shipped base, data/calibration/base_scores.parquet + base_images/, scored there by
   YOLO and EasyOCR, then every trained model's quick evaluation in data/tuning/*/eval); the second
   opinion scores the same images. No image is generated here.
4. The promotion rule with its guard (gpo/promotion.py decide) for each later evaluation against the
   first (the base) restricted to the same prompts and seeds.

    python benchmarks/second_opinion.py [--eval data/calibration:base --eval data/rounds/round-2/eval:model]

Writes benchmarks/results/second_opinion.{json,md}.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gpo.evaluate import summarize
from gpo.io import atomic_write_json, atomic_write_text
from gpo.metrics import accuracy, mean_interval
from gpo.params import EvalParams, WorldParams
from gpo.promotion import GUARD_Z, PARTS, decide, second_opinion_checks
from gpo.prompts import read_prompts
from gpo.rewards import second_opinion as so
from gpo.world.dataset import build_prompts, spec
from gpo.world.render import render

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def est(flags) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in accuracy(flags).as_dict().items()}


def rendered(prompts, task: str, splits: set[str], n: int, seed: int, sp):
    pool = [p for p in prompts if p.task == task and p.split in splits]
    rng = random.Random(seed)
    chosen = [pool[i % len(pool)] for i in range(n)]
    return chosen, [render(p, rng.randrange(2**31), sp).image for p in chosen]


def counting_on(chosen, images, s: so.CountSettings) -> dict:
    t0 = time.time()
    found = [so.count(im, p.cls, s, p.color) for p, im in zip(chosen, images)]
    ms = (time.time() - t0) / len(images) * 1000
    right = [k == p.count for k, p in zip(found, chosen)]
    out = {"accuracy": est(right), "ms_per_image": round(ms, 2),
           "by_count": {c: est([r for r, p in zip(right, chosen) if p.count == c]) for c in sorted({p.count for p in chosen})},
           "by_shape": {c: est([r for r, p in zip(right, chosen) if p.cls == c]) for c in sorted({p.cls for p in chosen})},
           "misses": [f"{p.text}: {k}" for k, p, r in zip(found, chosen, right) if not r][:10]}
    return out


def reading_on(chosen, images, sp, radius: float, step: float) -> dict:
    t0 = time.time()
    got = [w for w, _ in so.read(images, 3, sp, radius, step)]
    ms = (time.time() - t0) / len(images) * 1000
    letters = [a == b for g, p in zip(got, chosen) for a, b in zip(g, p.word)]
    return {"letters": est(letters), "exact": est([g == p.word for g, p in zip(got, chosen)]), "ms_per_image": round(ms, 1),
            "misses": [f"{p.word} -> {g}" for g, p in zip(got, chosen) if g != p.word][:10]}


def counting_objects(folder: Path, name: str, prompts_file: Path, s: so.CountSettings):
    """(score-table row, objects found) for every counting image of an evaluation on disk."""
    table = pd.read_parquet(folder / f"{name}_scores.parquet")
    by_text = {p.text: p for p in read_prompts(prompts_file)}
    for i, r in zip(table.index, table.itertuples()):
        if r.task == "counting":
            im = Image.open(folder / f"{name}_images" / f"{i:05d}-{r.seed}.png")
            yield r, so.blobs(im, s, so.COLORS.get(by_text[r.prompt].color or ""))


def fill_valleys(folder: Path, name: str, prompts_file: Path, s: so.CountSettings) -> dict:
    """Where the shape-class boundaries come from, with no label and no reward model: the soft box fill of
    every object (area ≥ 15 px) the counting method finds in a model's generated counting images has a
    valley between triangles (~0.58) and the rest; among the rest, the box corners' coverage (over the
    object's own) has a valley between circles (~0.03) and squares (~0.7). The fill's second valley
    (circles ~0.77 | squares ~0.94) moves when a model draws its shapes softer; the corners' moves far
    less (docs/second_opinion.md). Rendered ground truth is separated anywhere in 0.66-0.76 (fill)."""
    found = [b for _, bl in counting_objects(folder, name, prompts_file, s) for b in bl if b.area >= 15]

    def valley(values, lo, hi, start, stop, step):
        edges = np.round(np.arange(start, stop + 1e-4, step), 2)
        hist, _ = np.histogram(values, bins=edges)
        centres = (edges[:-1] + edges[1:]) / 2
        m = (centres > lo) & (centres < hi)
        return round(float(centres[m][hist[m].argmin()]), 2), {f"{a:.2f}": int(n) for a, n in zip(edges[:-1], hist)}

    tri, fill_hist = valley([b.fill for b in found], 0.62, 0.76, 0.40, 1.0, 0.02)
    sq, corner_hist = valley([b.corner for b in found if b.fill >= s.circle_fill], 0.1, 0.6, 0.0, 1.2, 0.05)
    return {"objects": len(found), "histogram": fill_hist, "corner_histogram": corner_hist,
            "valley_triangle_circle": tri, "valley_circle_square_corner": sq}


def ground_truth_corners(chosen, images, s: so.CountSettings) -> dict:
    """The corner feature on rendered shapes: the largest a circle reaches, the smallest a square does."""
    found = [(p.cls, b) for p, im in zip(chosen, images) for b in so.blobs(im, s, so.COLORS.get(p.color or ""))]
    return {"circle_max": round(max(b.corner for c, b in found if c == "circle"), 3),
            "square_min": round(min(b.corner for c, b in found if c == "square"), 3)}


def variant_agreement(folder: Path, name: str, prompts_file: Path, variants: dict) -> dict:
    """Each counting variant's right/wrong agreement with YOLO on the generated images (shown, not chosen by)."""
    table = pd.read_parquet(folder / f"{name}_scores.parquet")
    table = table[(table.task == "counting") & table["error"].isna()]
    by_text = {p.text: p for p in read_prompts(prompts_file)}
    images = [Image.open(folder / f"{name}_images" / f"{i:05d}-{s}.png").convert("RGB") for i, s in zip(table.index, table.seed)]
    out = {}
    for label, s in variants.items():
        right = np.array([so.count(im, r.cls, s, by_text[r.prompt].color) == r.count for im, r in zip(images, table.itertuples())])
        out[label] = {"accuracy": est(right), "agree": est(right == table["correct"].astype(bool).to_numpy())}
    return out


def judged(folder: Path, name: str, prompts_file: Path, sp) -> tuple[pd.DataFrame, float]:
    """An evaluation's score table (reward models) with the second opinion's columns, as gpo.evaluate
    writes them (s_* short names for this report), and the second opinion's seconds."""
    table = pd.read_parquet(folder / f"{name}_scores.parquet")
    by_text = {p.text: p for p in read_prompts(prompts_file)}
    prompts = [by_text[t] for t in table.prompt]
    images = [Image.open(folder / f"{name}_images" / f"{i:05d}-{s}.png").convert("RGB") for i, s in zip(table.index, table.seed)]
    t0 = time.time()
    second = so.SecondOpinion(sp).score(images, prompts)
    seconds = time.time() - t0
    table = table.assign(s_raw=[x.raw if x else None for x in second], s_reward=[x.reward if x else np.nan for x in second],
                         s_correct=[x.correct if x else None for x in second])
    return table, seconds


def summary_of(table: pd.DataFrame) -> dict:
    """gpo.evaluate.summarize of a judged table (the second opinion under second/<task>/<split>)."""
    t = table.drop(columns=[c for c in table.columns if c.startswith("second_")])  # the evaluation's own
    t = t.rename(columns={"s_raw": "second_raw", "s_reward": "second_reward", "s_correct": "second_correct"})
    return summarize(t.assign(second_error=None))


def guard(model: pd.DataFrame, base: pd.DataFrame, z: float) -> dict:
    """The promotion rule with its guard, for a trained model against the base on the same prompts and seeds."""
    keys = set(zip(model.prompt, model.seed))
    same = base[[k in keys for k in zip(base.prompt, base.seed)]]
    new, old = summary_of(model), summary_of(same)
    d = decide(new, old, z)
    parts = {f"{k} {m}": {"reward_gain": round(new[k][m]["value"] - old[k][m]["value"], 4),
                          "second_gain": round(new["second/" + k][m]["value"] - old["second/" + k][m]["value"], 4)}
             for k, m in PARTS}
    return {"base_rows": len(same), "z": z, "guard_z": GUARD_Z, "parts": parts, **d.to_dict()}


def null_flags(table: pd.DataFrame, z: float, splits: int, seed: int = 0) -> dict:
    """How often the guard flags a model that IS the champion: the base's evaluation split at random into
    two halves of each prompt's seeds, one half as 'new', the other as 'champion' (half the images each,
    so the intervals are wider than a full evaluation's), `splits` times."""
    rng = np.random.default_rng(seed)
    flagged = promoted = 0
    gaps = []
    for _ in range(splits):
        pick = np.zeros(len(table), dtype=bool)
        for _, idx in table.groupby("prompt").indices.items():
            pick[rng.permutation(idx)[: len(idx) // 2]] = True
        d = decide(summary_of(table[pick]), summary_of(table[~pick]), z)
        flagged += d.flagged
        promoted += d.promote
        checks = second_opinion_checks(summary_of(table[pick]), summary_of(table[~pick]), GUARD_Z)
        gaps.append(max((c.reward_gain - c.second_gain) / c.threshold for c in checks))
    full = {c.part: round(c.threshold, 4) for c in second_opinion_checks(summary_of(table), summary_of(table), GUARD_Z)}
    return {"splits": splits, "z": z, "flagged": flagged, "flag_rate": round(flagged / splits, 4),
            "gap_threshold_at_full_size": full,
            "promoted": promoted, "largest_gap_over_threshold_p95": round(float(np.percentile(gaps, 95)), 3)}


def shape_errors(folder: Path, name: str, prompts_file: Path, s: so.CountSettings) -> dict:
    """Circle and square objects labelled by the prompt's shape (images whose number of found objects is
    the number asked; no reward model), and how often each rule puts them in the other class: the corner
    boundary, and a fill boundary at 0.81 (the rule before 2026-12-06) and at 0.88."""
    found = {"circle": [], "square": []}
    for r, bl in counting_objects(folder, name, prompts_file, s):
        if r.split == "heldout" and r.cls in found and len(bl) == int(r.count):
            found[r.cls] += [b for b in bl if b.fill >= s.circle_fill]
    c, q = found["circle"], found["square"]
    rate = lambda xs, test: round(float(np.mean([test(b) for b in xs])), 4) if xs else None  # noqa: E731
    return {"circles": len(c), "squares": len(q),
            "corner_median": {"circle": round(float(np.median([b.corner for b in c])), 3),
                              "square": round(float(np.median([b.corner for b in q])), 3)},
            "corner": [rate(c, lambda b: b.corner >= s.square_corner), rate(q, lambda b: b.corner < s.square_corner)],
            "fill_0.81": [rate(c, lambda b: b.fill >= 0.81), rate(q, lambda b: b.fill < 0.81)],
            "fill_0.88": [rate(c, lambda b: b.fill >= 0.88), rate(q, lambda b: b.fill < 0.88)]}


def blurred_shapes(prompts, sp, s: so.CountSettings, sigmas=(0.5, 0.7, 1.0), n: int = 400, seed: int = 5) -> dict:
    """Rendered single circles and squares blurred by a Gaussian of σ px (softer than any rendered shape):
    the share of each put in the other class by the corner rule and by the old fill boundary (0.81)."""
    from scipy import ndimage

    ones = [p for p in prompts if p.task == "counting" and p.count == 1 and p.cls in ("circle", "square")]
    out = {}
    for sigma in sigmas:
        rng = random.Random(seed)
        wrong = {"corner": {"circle": [], "square": []}, "fill_0.81": {"circle": [], "square": []}}
        for _ in range(n):
            p = rng.choice(ones)
            arr = ndimage.gaussian_filter(np.asarray(render(p, rng.randrange(2**31), sp).image, float), (sigma, sigma, 0))
            bl = so.blobs(Image.fromarray(arr.round().astype(np.uint8)), s, so.COLORS.get(p.color or ""))
            if len(bl) != 1 or bl[0].fill < s.circle_fill:
                continue
            b, other = bl[0], "square" if p.cls == "circle" else "circle"
            wrong["corner"][p.cls].append(b.shape == other)
            wrong["fill_0.81"][p.cls].append(("square" if b.fill >= 0.81 else "circle") == other)
        out[str(sigma)] = {rule: {k: round(float(np.mean(v)), 3) if v else None for k, v in d.items()}
                           for rule, d in wrong.items()}
    return out


def agreement(table: pd.DataFrame, label: str, seconds: float) -> dict:
    """The second opinion on an evaluation's images beside the reward models' scores of them."""
    out = {"table": label, "images": len(table), "seconds": round(seconds, 1)}
    for (task, split), rows in table.groupby(["task", "split"]):
        rows = rows[rows["error"].isna() & rows["s_correct"].notna()]
        rm, sc = rows["correct"].astype(bool).to_numpy(), rows["s_correct"].astype(bool).to_numpy()
        entry = {"n": len(rows),
                 "reward_model_accuracy": est(rm), "second_accuracy": est(sc),
                 "reward_model_mean_reward": {k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in mean_interval(rows["reward"]).as_dict().items()},
                 "second_mean_reward": {k: round(v, 4) if isinstance(v, float) else v
                                        for k, v in mean_interval(rows["s_reward"]).as_dict().items()},
                 "agree_right_wrong": est(rm == sc),
                 "both_right": int((rm & sc).sum()), "reward_model_only": int((rm & ~sc).sum()),
                 "second_only": int((~rm & sc).sum()), "both_wrong": int((~rm & ~sc).sum())}
        if task == "counting":
            entry["same_count"] = est(rows["raw"].to_numpy() == rows["s_raw"].to_numpy())
            entry["by_count"] = {int(c): {"reward_model": round(float(r["correct"].mean()), 3),
                                          "second": round(float(r["s_correct"].astype(bool).mean()), 3),
                                          "agree": round(float((r["correct"].astype(bool) == r["s_correct"].astype(bool)).mean()), 3)}
                                 for c, r in rows.groupby("count")}
        else:
            entry["same_reading"] = est([a.lower().replace(" ", "") == b.lower() for a, b in zip(rows["raw"], rows["s_raw"])])
        out[f"{task}/{split}"] = entry
    return out


def ci(e: dict) -> str:
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def markdown(r: dict) -> str:
    L = ["## Second-opinion scorer: choice, calibration, agreement", "",
         f"Method: `gpo/rewards/second_opinion.py` (no YOLO, no EasyOCR). Render settings: params defaults "
         f"(`{r['render']}`). Command: `python benchmarks/second_opinion.py`.", "",
         f"### 1. Choice, on rendered training prompts (n = {r['choice']['n']} per task)", "",
         "| counting variant | exact-count accuracy [95% CI] | ms / image |", "|---|---|---|"]
    for name, v in r["choice"]["counting"].items():
        L.append(f"| {name} | {ci(v['accuracy'])} | {v['ms_per_image']} |")
    fv, gc = r["choice"]["fill_valleys"], r["choice"]["ground_truth_corners"]
    base = so.CountSettings(**r["settings"]["counting"])
    L += ["", f"Shape boundaries, from the {fv['objects']} objects found in `{r['choice']['fill_from']}` (no labels, "
          f"no reward model used): the soft box fill has its valley at {fv['valley_triangle_circle']} (triangle | "
          f"the rest); among the rest, the box corners' coverage has its valley at "
          f"{fv['valley_circle_square_corner']} (circle | square). Rendered ground truth is separated anywhere in "
          f"0.66–0.76 (fill); rendered circles reach a corner coverage of {gc['circle_max']} (the small ones' "
          f"anti-aliased corners) and rendered squares start at {gc['square_min']}, so the corner boundary "
          f"({base.square_corner}) sits above the valley, between the two.", "",
          "The same variants on those generated images (for information; not what chose them):", "",
          "| counting variant | accuracy on generated images | agrees with YOLO (right/wrong) |", "|---|---|---|"]
    for name, v in r["choice"]["on_generated"].items():
        L.append(f"| {name} | {ci(v['accuracy'])} | {ci(v['agree'])} |")
    L += ["", "| reading variant | letter accuracy | exact word | ms / image |", "|---|---|---|---|"]
    for name, v in r["choice"]["reading"].items():
        L.append(f"| {name} | {ci(v['letters'])} | {ci(v['exact'])} | {v['ms_per_image']} |")
    c, t = r["calibration"]["counting"], r["calibration"]["text"]
    L += ["", f"### 2. Calibration on rendered held-out ground truth (the `gpo calibrate` protocol, seeds from {r['seed']})", "",
          "| what | value [95% CI] | n | required |", "|---|---|---|---|",
          f"| counting, exact count | {ci(c['accuracy'])} | {c['accuracy']['n']} | ≥ 0.97 |",
          f"| text, letters | {ci(t['letters'])} | {t['letters']['n']} | ≥ 0.95 |",
          f"| text, exact word | {ci(t['exact'])} | {t['exact']['n']} | |", "",
          "Counting by requested count: " + ", ".join(f"{k}: {v['value']:.3f}" for k, v in c["by_count"].items()) +
          "; by shape: " + ", ".join(f"{k}: {v['value']:.3f}" for k, v in c["by_shape"].items()) + ".",
          f"Misses: counting {c['misses'] or 'none'}; reading {t['misses'] or 'none'}.", ""]
    for label, a in r["agreement"].items():
        L += [f"### 3. Agreement with the reward models on `{label}` ({a['images']} generated images, "
              f"second opinion {a['seconds']} s)", "",
              "| task / split | n | reward model: accuracy | second opinion: accuracy | reward model: mean reward | "
              "second opinion: mean reward | agree (right/wrong) | same count / reading | both right | RM only | SO only | both wrong |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, e in a.items():
            if "/" not in key:
                continue
            same = e.get("same_count") or e.get("same_reading")
            L.append(f"| {key} | {e['n']} | {ci(e['reward_model_accuracy'])} | {ci(e['second_accuracy'])} | "
                     f"{ci(e['reward_model_mean_reward'])} | {ci(e['second_mean_reward'])} | {ci(e['agree_right_wrong'])} | "
                     f"{ci(same)} | {e['both_right']} | {e['reward_model_only']} | {e['second_only']} | {e['both_wrong']} |")
        bc = a.get("counting/heldout", {}).get("by_count")
        if bc:
            L += ["", "| requested count | " + " | ".join(str(k) for k in bc) + " |", "|---|" + "---|" * len(bc),
                  "| YOLO accuracy | " + " | ".join(f"{v['reward_model']:.2f}" for v in bc.values()) + " |",
                  "| second opinion accuracy | " + " | ".join(f"{v['second']:.2f}" for v in bc.values()) + " |",
                  "| agree (right/wrong) | " + " | ".join(f"{v['agree']:.2f}" for v in bc.values()) + " |"]
        L.append("")
    if r.get("guard_on_identical_models"):
        n = r["guard_on_identical_models"]
        L += ["### The guard on identical models (its false-flag rate)", "",
              f"The first evaluation split {n['splits']} times at random into two halves of each prompt's seeds, one half "
              f"judged against the other with `decide(z = {n['z']})`: flagged **{n['flagged']} of {n['splits']}** "
              f"({n['flag_rate']:.3f}); promoted by the rule {n['promoted']} times (the two halves are the same model). "
              f"95th percentile of the largest part's gap over its threshold: {n['largest_gap_over_threshold_p95']}. "
              "The smallest gap the guard flags between two evaluations of this size: " +
              ", ".join(f"{k} {v:.3f}" for k, v in n["gap_threshold_at_full_size"].items()) + ".", ""]
    if r.get("shape_errors"):
        L += ["### Circles and squares: the corner rule against fill boundaries", "",
              "Objects labelled by the prompt's shape (images whose number of found objects is the number asked; "
              "no reward model). Share put in the other class: circles called squares / squares called circles.", "",
              "| evaluation | circles / squares | corner (median) circle / square | corner rule | fill 0.81 | fill 0.88 |",
              "|---|---|---|---|---|---|"]
        for label, e in r["shape_errors"].items():
            L.append(f"| `{label}` | {e['circles']} / {e['squares']} | {e['corner_median']['circle']} / "
                     f"{e['corner_median']['square']} | " + " | ".join(f"{e[k][0]:.3f} / {e[k][1]:.3f}" for k in
                                                                       ("corner", "fill_0.81", "fill_0.88")) + " |")
        L += ["", "Rendered single circles and squares blurred by a Gaussian of σ px (softer than the renderer "
              "draws): circles called squares / squares called circles.", "",
              "| σ | corner rule | fill 0.81 |", "|---|---|---|"]
        for sigma, e in r["blurred_shapes"].items():
            L.append(f"| {sigma} | {e['corner']['circle']} / {e['corner']['square']} | "
                     f"{e['fill_0.81']['circle']} / {e['fill_0.81']['square']} |")
        L.append("")
    if r.get("guard_against_base"):
        L += ["### 4. The promotion rule and its guard: trained models against the base on the same prompts and seeds", "",
              f"`decide(model, base, z = {next(iter(r['guard_against_base'].values()))['z']})`, guard at {GUARD_Z:.2f} SE "
              "(gpo/promotion.py). Gains: reward model / second opinion.", "",
              "| model | counting acc gain | OCR reward gain | headline gain (threshold) | flagged | promoted |",
              "|---|---|---|---|---|---|"]
        for label, g in r["guard_against_base"].items():
            c, t = g["parts"]["counting/heldout accuracy"], g["parts"]["text/heldout mean_reward"]
            L.append(f"| `{label}` | {c['reward_gain']:+.3f} / {c['second_gain']:+.3f} | {t['reward_gain']:+.3f} / "
                     f"{t['second_gain']:+.3f} | {g['gain']:+.4f} ({g['threshold']:.4f}) | {'yes' if g['flagged'] else 'no'} | "
                     f"{'yes' if g['promote'] else 'no'} |")
        L.append("")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", action="append", default=None,
                    help="FOLDER:NAME of an evaluation (NAME_scores.parquet, NAME_images/), the first one the base; "
                         "default data/calibration:base and every data/tuning/*/eval:final (trained models)")
    ap.add_argument("--prompts", type=Path, default=ROOT / "data" / "prompts.jsonl")
    ap.add_argument("--choice-n", type=int, default=300)
    ap.add_argument("--null-splits", type=int, default=200, help="random half-splits of the base for the false-flag rate")
    ap.add_argument("--z", type=float, default=1.0, help="promotion z (params/run.yaml promotion.z) for the guard rows")
    a = ap.parse_args()
    world, e = WorldParams(), EvalParams()
    sp = spec(world.render)
    prompts = build_prompts(world.prompts)
    t0 = time.time()
    so.templates(3, sp)
    template_s = round(time.time() - t0, 1)

    # 1. choice on training prompts (seed 123: images the calibration does not see)
    cc, ci_ = rendered(prompts, "counting", {"train"}, a.choice_n, 123, sp)
    tc, ti = rendered(prompts, "text", {"train"}, a.choice_n, 123, sp)
    base = so.CountSettings()
    counting_variants = {
        f"default (threshold {base.threshold}, watershed split, fill {base.circle_fill}, corners {base.square_corner})": base,
        "threshold 0.5": replace(base, threshold=0.5),
        "threshold 0.4": replace(base, threshold=0.4),
        "no watershed split": replace(base, split=False),
        "fill boundary at the ground truth's midpoint (0.71)": replace(base, circle_fill=0.71),
        "corner boundary 0.3": replace(base, square_corner=0.3),
        "corner boundary 0.5": replace(base, square_corner=0.5),
    }
    reading_variants = {"default: ±1 px in 0.25 px": (1.0, 0.25), "±1 px in 0.5 px": (1.0, 0.5),
                        "±2 px in whole pixels": (2.0, 1.0)}
    evals = a.eval or [f"{ROOT / 'data' / 'calibration'}:base"] + [
        f"{p.parent}:final" for p in sorted((ROOT / "data" / "tuning").glob("*/eval/final_scores.parquet"))
        if (p.parent / "final_images").is_dir()]
    located = []
    for spec_ in evals:
        folder, name = spec_.rsplit(":", 1)
        folder = Path(folder) if Path(folder).is_absolute() else ROOT / folder
        if not (folder / f"{name}_scores.parquet").exists():
            raise SystemExit(f"{folder / (name + '_scores.parquet')} not found: run `gpo calibrate` (or `make run`) first")
        located.append((spec_, folder, name))
    _, f0, n0 = located[0]
    choice = {"n": a.choice_n,
              "counting": {k: counting_on(cc, ci_, s) for k, s in counting_variants.items()},
              "reading": {k: reading_on(tc, ti, sp, *v) for k, v in reading_variants.items()},
              "fill_from": str(f0.relative_to(ROOT) if f0.is_relative_to(ROOT) else f0),
              "fill_valleys": fill_valleys(f0, n0, a.prompts, base),
              "ground_truth_corners": ground_truth_corners(cc, ci_, base),
              "on_generated": variant_agreement(f0, n0, a.prompts, counting_variants)}
    print("choice done", flush=True)

    # 2. calibration: held-out prompts, the calibrate protocol (gt_images per task, seeds from seed_offset)
    hc, hi = rendered(prompts, "counting", {"heldout", "heldout_words"}, e.gt_images, e.seed_offset, sp)
    htc, hti = rendered(prompts, "text", {"heldout", "heldout_words"}, e.gt_images, e.seed_offset, sp)
    calibration = {"counting": counting_on(hc, hi, base), "text": reading_on(htc, hti, sp, 1.0, 0.25)}
    print("calibration", calibration["counting"]["accuracy"], calibration["text"]["letters"], flush=True)

    # 3. agreement on generated images
    agree, guards, tables, shapes = {}, {}, {}, {}
    for spec_, folder, name in located:
        table, seconds = judged(folder, name, a.prompts, sp)
        label = str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder) + f"/{name}_scores.parquet"
        agree[label] = agreement(table, label, seconds)
        shapes[label] = shape_errors(folder, name, a.prompts, base)
        tables[label] = table
    first = next(iter(tables))
    null = null_flags(tables[first], a.z, a.null_splits)
    print("null", null, flush=True)
    for label, table in list(tables.items())[1:]:  # trained models against the first evaluation (the base)
        guards[label] = guard(table, tables[first], a.z)
        print(label, guards[label]["reason"], flush=True)

    report = {"render": {k: v for k, v in world.render.model_dump().items()}, "seed": e.seed_offset,
              "settings": {"counting": base.__dict__, "reading": {"radius": 1.0, "step": 0.25}},
              "template_seconds": template_s, "choice": choice, "calibration": calibration, "agreement": agree,
              "guard_against_base": guards, "guard_on_identical_models": null,
              "shape_errors": shapes, "blurred_shapes": blurred_shapes(prompts, sp, base)}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "second_opinion.json", report)
    md = markdown(report)
    atomic_write_text(RESULTS / "second_opinion.md", md)
    print(md)


if __name__ == "__main__":
    main()
