"""How GPO's knobs (β, lr, epochs, prompts per round) move the embedded model: the tuning behind params/gpo.yaml.

One configuration = N rounds chained without champion selection (each round starts from the previous
one, so the curve shows the knob, not the selection), then a held-out evaluation of the last model
(eval.yaml's seeds, or the first --counting-seeds / --text-seeds of them), compared with the base on
the same prompts and seeds (read from data/calibration/base_scores.parquet, or --base-scores).
The on-policy mean reward of every round's own group images, per task, is the free learning curve.

    python benchmarks/gpo_tuning.py NAME --rounds 3 train.lr=1e-4 train.epochs=8 groups.prompts_per_round=60
    python benchmarks/gpo_tuning.py NAME --pair-only   # add the paired counting delta to a finished row

Appends one row to benchmarks/results/gpo_tuning.json and rewrites gpo_tuning.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from gpo.calibrate import evaluate_model
from gpo.cli import _load, _ws
from gpo.io import atomic_write_json, atomic_write_text
from gpo.model.adapters import load_any
from gpo.params import GpoFile
from gpo.prompts import HELDOUT_SPLITS, read_prompts
from gpo.round import RoundDir, improve, train_reward_by_task

RESULTS = Path(__file__).parent / "results"


def override(cfg: GpoFile, items: list[str]) -> GpoFile:
    data = cfg.model_dump()
    for item in items:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        data[section][field] = json.loads(value) if value[:1] in "[{0123456789-." else value
    return GpoFile.model_validate(data)


def add_quick_args(ap: argparse.ArgumentParser) -> None:
    """The held-out evaluation's size: seeds per counting and per text prompt. The defaults are eval.yaml's
    full evaluation (24 / 6: n = 432 / 402). The former quick default, 8 / 2, drew the base's best block of
    seeds (base_5k counts 0.625 on seeds 0–7 and 0.552 on 8–23), so paired differences of fine-tunes on it
    read about 5 points low (benchmarks/results/heldout_counting_full.md)."""
    e = _load(Path("params"), "eval.yaml").eval
    ap.add_argument("--counting-seeds", type=int, default=e.counting_seeds)
    ap.add_argument("--text-seeds", type=int, default=e.text_seeds)
    ap.add_argument("--word-seeds", type=int, default=e.heldout_word_seeds,
                    help="seeds per prompt of an unseen word (split heldout_words); 1 = the former quick default")
    ap.add_argument("--base", type=Path, default=None,
                    help="the model to start from (default: params/models.yaml's base), e.g. a pretraining snapshot")
    ap.add_argument("--base-scores", type=Path, default=None,
                    help="that model's scores on the quick seeds (a final_scores.parquet; default: "
                         "data/calibration/base_scores.parquet, the shipped base's)")


def quick_eval(a: argparse.Namespace):
    """params/eval.yaml's evaluation on the quick seeds only."""
    return _load(Path("params"), "eval.yaml").eval.model_copy(
        update={"counting_seeds": a.counting_seeds, "text_seeds": a.text_seeds,
                "heldout_word_seeds": getattr(a, "word_seeds", 1)})


def quick_base(a: argparse.Namespace, seed_offset: int) -> pd.DataFrame:
    """The base's scores restricted to the quick seeds (the same images as a quick evaluation): the shipped
    base's calibration table unless --base-scores names another model's."""
    if getattr(a, "base", None) is not None and getattr(a, "base_scores", None) is None:
        raise SystemExit("--base needs --base-scores: that model's own quick evaluation (gt_ceiling.py --steps 0 writes one)")
    t = pd.read_parquet(getattr(a, "base_scores", None) or "data/calibration/base_scores.parquet")
    words = t.split == "heldout_words"
    keep = ((t.task == "counting") & (t.seed < seed_offset + a.counting_seeds)) | (
        (t.task == "text") & ~words & (t.seed < seed_offset + a.text_seeds)) | (
        words & (t.seed < seed_offset + getattr(a, "word_seeds", 1)))
    return t[keep]


def quick_metrics(table: pd.DataFrame) -> dict[str, float]:
    c = table[(table.task == "counting") & (table.split == "heldout")]
    t = table[(table.task == "text") & (table.split == "heldout")]
    w = table[(table.task == "text") & (table.split == "heldout_words")]
    by_count = c.groupby("count")["correct"].mean().round(2).to_dict()
    return {"counting_acc": float(c.correct.mean()), "ocr_reward": float(t.reward.mean()),
            "ocr_exact": float(t.correct.mean()), "n_counting": len(c), "n_text": len(t),
            "unseen_exact": float(w.correct.mean()), "unseen_reward": float(w.reward.mean()), "n_unseen": len(w),
            "counting_by_count": {int(k): v for k, v in by_count.items()}}


def upsert_results(stem: str, row: dict, header: list[str], render) -> None:
    """Print `row`, replace the row of the same name in results/<stem>.json (or add it), rewrite <stem>.md."""
    print(json.dumps(row, indent=1))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stem}.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["name"] != row["name"]] + [row]
    atomic_write_json(path, rows)
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(header + [render(r) for r in rows]) + "\n")


def write_results(stem: str, data, lines: list[str]) -> None:
    """Write a whole result: results/<stem>.json (`data`) and <stem>.md (`lines`), and print the table."""
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / f"{stem}.json", data)
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def points(d: dict) -> str:
    """A mean_interval of differences as points with its 95% interval: '+1.4 [-6.6, +9.4]'."""
    return f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def paired_accuracy(folder: Path, base: pd.DataFrame, task: str = "counting", split: str = "heldout") -> dict:
    """Held-out accuracy (counting by default; text exact, or unseen words with split heldout_words) of the
    evaluation in `folder`/eval, final − base on the same (prompt, seed) images, with its 95% interval."""
    from gpo.study import paired_delta

    final = pd.read_parquet(folder / "eval" / "final_scores.parquet")
    return {k: round(v, 4) if isinstance(v, float) else v
            for k, v in paired_delta(final, base, task, "correct", split).items()}


def paired_all(folder: Path, base: pd.DataFrame) -> dict:
    """The paired deltas a row carries: counting, text exact on held-out captions, unseen words exact."""
    out = {"paired_counting": paired_accuracy(folder, base)}
    for key, split in (("paired_text", "heldout"), ("paired_unseen", "heldout_words")):
        try:
            out[key] = paired_accuracy(folder, base, "text", split)
        except ValueError:  # an evaluation without that split
            pass
    return out


def evaluate_row(row: dict, model: Path, folder: Path, prompts, scorers, e, a: argparse.Namespace) -> None:
    """The held-out evaluation of `model` into `folder`/eval, then the row's base and final metrics, its
    paired deltas and its evaluation seconds; the row is written to results/gpo_tuning.{json,md}."""
    t = time.time()
    evaluate_model(load_any(model), prompts, scorers, e, folder / "eval", "final", progress=False)
    base = quick_base(a, e.seed_offset)
    row.update({"eval_seconds": round(time.time() - t), "base": quick_metrics(base),
                "final": quick_metrics(pd.read_parquet(folder / "eval" / "final_scores.parquet"))})
    row.update(paired_all(folder, base))
    upsert_results("gpo_tuning", row, HEADER, render)


HEADER = ["| name | overrides | rounds | GPO s | counting acc base → final | paired Δ counting | OCR reward base → final | "
          "OCR exact base → final | paired Δ OCR exact | unseen words exact base → final | paired Δ unseen | "
          "counting acc by n (final) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def render(r: dict) -> str:
    b, f = r["base"], r["final"]
    pc, pt, pu = r.get("paired_counting"), r.get("paired_text"), r.get("paired_unseen")
    unseen = (f"{b['unseen_exact']:.3f} → {f['unseen_exact']:.3f} (n {f['n_unseen']})"
              if f.get("n_unseen", 0) > 48 else "")  # rows before 2026-12-06 read one seed a word: too few
    return (f"| {r['name']} | {' '.join(r['overrides'])} | {r['rounds']} | {r['gpo_seconds']} | "
            f"{b['counting_acc']:.3f} → {f['counting_acc']:.3f} (n {f['n_counting']}) | "
            f"{points(pc) if pc else ''} | {b['ocr_reward']:.3f} → {f['ocr_reward']:.3f} | "
            f"{b['ocr_exact']:.3f} → {f['ocr_exact']:.3f} | {points(pt) if pt else ''} | {unseen} | "
            f"{points(pu) if pu and f.get('n_unseen', 0) > 48 else ''} | {f['counting_by_count']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="*", help="section.field=value on params/gpo.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    add_quick_args(ap)
    ap.add_argument("--out", type=Path, default=Path("data/tuning"))
    ap.add_argument("--task", choices=["counting", "text"], default=None,
                    help="train on one task's prompts only (diagnostic: do the tasks interfere?)")
    ap.add_argument("--pair-only", action="store_true",
                    help="only add the paired deltas to the finished row NAME (from OUT/NAME/eval)")
    ap.add_argument("--eval-only", action="store_true",
                    help="evaluate the last round's model of NAME again (e.g. with more --word-seeds) and rewrite its row")
    a = ap.parse_intermixed_args()
    if a.pair_only:
        rows = json.loads((RESULTS / "gpo_tuning.json").read_text())
        row = next(r for r in rows if r["name"] == a.name)
        row.update(paired_all(a.out / a.name, quick_base(a, quick_eval(a).seed_offset)))
        upsert_results("gpo_tuning", row, HEADER, render)
        return
    cfg = override(_load(Path("params"), "gpo.yaml"), a.overrides)
    e = quick_eval(a)
    prompts = read_prompts(Path("data/prompts.jsonl"))
    if a.eval_only:
        rows = json.loads((RESULTS / "gpo_tuning.json").read_text())
        row = next(r for r in rows if r["name"] == a.name)
        folder = a.out / a.name
        if any(o.startswith("--") for o in row["overrides"]):
            raise SystemExit(f"{a.name} was run with {row['overrides']}: --eval-only re-evaluates plain rows only")
        iterations = override(_load(Path("params"), "gpo.yaml"), row["overrides"]).groups.iterations  # the row's own
        model = RoundDir(folder / f"round-{row['rounds']}", iterations=iterations).model
        if not (model / "model_index.json").exists():
            raise SystemExit(f"no model at {model}")
        evaluate_row(row, model, folder, prompts, _ws(Path("params")).scorers(), e, a)
        return
    train_prompts = [p for p in prompts if a.task is None or p.task == a.task or p.split in HELDOUT_SPLITS]
    scorers = _ws(Path("params")).scorers()
    base = a.base or Path(_load(Path("params"), "models.yaml").base)
    quick_base(a, e.seed_offset)  # fail before the rounds when the base's scores are missing
    folder = a.out / a.name
    model, curve, seconds = base, [], {"generate": 0.0, "score": 0.0, "train": 0.0}
    for i in range(1, a.rounds + 1):
        imp = improve(i, model, folder / f"round-{i}", train_prompts, cfg, scorers, progress=False)
        model = imp.model
        curve.append(train_reward_by_task(imp.rewards))
        for k in seconds:
            seconds[k] += imp.seconds[k]
        print(f"round {i}: {curve[-1]} {imp.seconds}", flush=True)
    row = {"name": a.name, "overrides": a.overrides + ([f"--task {a.task}"] if a.task else [])
           + ([f"--base {a.base}"] if a.base else []), "rounds": a.rounds, "gpo_seconds": round(sum(seconds.values())),
           "seconds": {k: round(v) for k, v in seconds.items()}, "train_reward_curve": curve}
    evaluate_row(row, model, folder, prompts, scorers, e, a)


if __name__ == "__main__":
    main()
