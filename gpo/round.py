"""One self-improvement round as four steps (generate → score → train → evaluate) and a chain of rounds.

Each step is one function, called alike by the CLI (`gpo stage ...`), the DVC stages (which run that
CLI) and the direct chain `run_rounds` (tuning, benchmarks). Everything a round writes is under its
folder, and each step writes only its own files (they are the DVC outputs of its stage):

    groups/images/..png, groups/groups.parquet, groups/generate.json     generate
    groups/rewards.parquet, groups/score.json                              score
    train/pipeline, train/train_log.json, train/train.json, checkpoints    train (checkpoints: resume)
    eval/model_scores.parquet, eval/*_grid.png, eval/summary.json,         evaluate
    eval/round.json, metrics.json, champion.json
`champion.json` names the model the next round starts from: this round's, when it beats the previous
champion by the rule of gpo/promotion.py, else the previous champion.

What differs between two runs with identical results — the seconds of each step, the registered
version and the MLflow run — is kept out of those outputs (so `dvc.lock` does not change when nothing
did): in `timings/<step>.json` of the round or iteration folder and in the round's `run.json`, neither of
them a DVC output. `read_record` gives the round's record with them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from gpo.calibrate import evaluate_model, flat_metrics
from gpo.errors import GpoError
from gpo.evaluate import Scorers
from gpo.groups import generate_groups, model_inputs, pick_prompts
from gpo.io import atomic_write_json, atomic_write_text
from gpo.model.adapters import load_any
from gpo.model.sampler import sampler_stamp
from gpo.model.device import process_state
from gpo.params import EvalParams, GpoFile
from gpo.paths import local, portable
from gpo.promotion import Decision, decide, headline
from gpo.prompts import Prompt
from gpo.resume import file_digest, resume_or_reset, weights_digest
from gpo.scoring import score_groups
from gpo.train import groups_from_table, train_gpo

STEPS = ("generate", "score", "train", "evaluate")
VARIABLE = ("seconds", "version", "mlflow_run")  # the record's run-to-run variable fields (run.json)


@dataclass(frozen=True)
class RoundDir:
    """The files of one round folder. A semi-online round (groups.iterations = N > 1) keeps each
    iteration's groups and training in `iter-J/` (a RoundDir of its own); its model is the last one's."""

    root: Path
    iterations: int = 1

    def iteration(self, j: int) -> "RoundDir":
        return RoundDir(self.root / f"iter-{j}")

    @property
    def parts(self) -> list["RoundDir"]:
        """Where the round's groups and training live: itself, or its iterations in order."""
        return [self] if self.iterations == 1 else [self.iteration(j) for j in range(1, self.iterations + 1)]

    @property
    def groups(self) -> Path:
        return self.root / "groups"

    @property
    def manifest(self) -> Path:
        return self.groups / "groups.parquet"

    @property
    def rewards(self) -> Path:
        return self.groups / "rewards.parquet"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def model(self) -> Path:
        if self.iterations > 1:
            return self.iteration(self.iterations).model
        return self.train / "pipeline"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def record(self) -> Path:
        return self.eval / "round.json"

    @property
    def metrics(self) -> Path:
        """Flat held-out metrics (DVC metrics; outside eval/, which is one DVC output)."""
        return self.root / "metrics.json"

    @property
    def champion(self) -> Path:
        return self.root / "champion.json"

    @property
    def run_info(self) -> Path:
        """The round's seconds, registered version and MLflow run: outside every DVC output."""
        return self.root / "run.json"

    def step_file(self, step: str) -> Path:
        """The step's marker (a DVC output: what it did, nothing that varies from run to run)."""
        return {"generate": self.groups / "generate.json", "score": self.groups / "score.json",
                "train": self.train / "train.json"}[step]

    def seconds_file(self, step: str) -> Path:
        """The step's seconds, written as it ends (its mtime is the end): not a DVC output."""
        return self.root / "timings" / f"{step}.json"

    def timing(self, step: str) -> Path | None:
        """The file holding the step's seconds: timings/, or in a round written before timings/ existed
        the step's marker (eval/evaluate.json for the evaluation); None when the step has not run."""
        for f in (self.seconds_file(step),
                  self.eval / "evaluate.json" if step == "evaluate" else self.step_file(step)):
            if f.exists() and "seconds" in json.loads(f.read_text()):
                return f
        return None

    def seconds(self) -> dict[str, float]:
        """Seconds per step; generate, score and train summed over a semi-online round's iterations."""
        out: dict[str, float] = {}
        for step in STEPS:
            for part in (self.parts if step != "evaluate" else [self]):
                f = part.timing(step)
                if f is not None:
                    out[step] = round(out.get(step, 0.0) + json.loads(f.read_text())["seconds"], 2)
        return out

    def train_log(self) -> list[dict]:
        """The round's optimizer steps in order (every iteration's, `step` counted across them; `iteration` set)."""
        rows, offset = [], 0
        for j, part in enumerate(self.parts, start=1):
            log = part.train / "train_log.json"
            steps = json.loads(log.read_text()) if log.exists() else []
            rows += [{**r, "step": offset + r["step"], "iteration": j} for r in steps]
            offset += len(steps)
        return rows

    def all_rewards(self) -> pd.DataFrame | None:
        """The reward tables of the round's groups (every iteration's, in order), or None before scoring."""
        tables = [pd.read_parquet(part.rewards) for part in self.parts if part.rewards.exists()]
        return pd.concat(tables, ignore_index=True) if tables else None


def round_dir(root: Path) -> RoundDir:
    """A finished round's folder with the iterations its record says it ran (iter-J folders of another
    setting may outlive a change of groups.iterations)."""
    rec = Path(root) / "eval" / "round.json"
    n = json.loads(rec.read_text()).get("iterations", 1) if rec.exists() else 1
    return RoundDir(Path(root), n)


def _timed(rd: RoundDir, step: str, t0: float, **extra) -> None:
    """The step's seconds (timings/, not tracked), then its marker (a DVC output, `extra` only)."""
    if process_state().is_main_process:  # under `accelerate launch` the main process writes
        atomic_write_json(rd.seconds_file(step), {"seconds": round(time.time() - t0, 2)})
        if step != "evaluate":
            atomic_write_json(rd.step_file(step), extra)


def write_record(rd: RoundDir, record: dict) -> None:
    """eval/round.json (a DVC output) without the run-to-run variable fields; those go to run.json."""
    atomic_write_json(rd.run_info, {k: record.get(k) for k in VARIABLE})
    atomic_write_json(rd.record, {k: v for k, v in record.items() if k not in VARIABLE})


def read_record(root: Path) -> dict:
    """A round folder's record with its seconds, version and MLflow run (None where run.json is gone,
    e.g. after `dvc checkout` in another clone: DVC restores results, not timings)."""
    root = Path(root)
    rec = json.loads((root / "eval" / "round.json").read_text())
    info = root / "run.json"
    extra = json.loads(info.read_text()) if info.exists() else {}
    return {**rec, **{k: extra.get(k, rec.get(k)) for k in VARIABLE}, "seconds": extra.get("seconds") or rec.get("seconds") or {}}


def read_champion(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise GpoError("the previous round's champion record is missing", file=str(path),
                       fix="run the previous round first (`dvc repro` runs the chain in order)")
    return json.loads(path.read_text())


# --- the four steps ----------------------------------------------------------------------------------
def step_generate(index: int, start_model: Path, rd: RoundDir, prompts: list[Prompt], cfg: GpoFile,
                  progress: bool = True, family: str = "auto") -> pd.DataFrame:
    """G images per chosen train prompt from the start model; resumable (images on disk are kept)."""
    t0 = time.time()
    pipe = load_any(start_model, family)
    chosen = pick_prompts(prompts, cfg.groups.prompts_per_round, index, cfg.groups.seed, cfg.groups.text_share,
                          cfg.groups.text_pool)
    table = generate_groups(pipe, chosen, cfg.groups, index, rd.groups, progress)
    _timed(rd, "generate", t0, start_model=portable(start_model), images=len(table))
    return table


def step_score(rd: RoundDir, scorers: Scorers) -> pd.DataFrame:
    t0 = time.time()
    if not rd.manifest.exists():
        raise GpoError("no generated groups to score", file=str(rd.manifest), fix="run the generate step first")
    rewards = score_groups(pd.read_parquet(rd.manifest), rd.groups, scorers)
    _timed(rd, "score", t0, images=len(rewards))
    return rewards


def step_train(start_model: Path, rd: RoundDir, cfg: GpoFile, progress: bool = True,
               log_fn: Optional[Callable[[dict], None]] = None, family: str = "auto", chain_batch: int = 0,
               round_start: Optional[Path] = None) -> Path:
    """GPO fine-tuning of the start model on the scored groups; `chain_batch` is the chain's batch index of
    these groups (batch_index), which seeds the training draws. The frozen reference is the start model, or
    with train.reference: round the round's start model `round_start` (required then)."""
    t0 = time.time()
    if not rd.rewards.exists():
        raise GpoError("no reward table to train on", file=str(rd.rewards), fix="run the score step first")
    rewards = pd.read_parquet(rd.rewards)
    pipe = load_any(start_model, family)
    reference = None
    if cfg.train.reference == "round":
        if round_start is None:
            raise GpoError("train.reference: round needs the round's start model, and this caller gave none",
                           field="train.reference (params/gpo.yaml)", value="round",
                           fix="pass round_start to step_train, or set train.reference: iteration")
        if Path(round_start).resolve() != Path(start_model).resolve():  # iteration 1: the start model itself
            # the denoiser only (the trainer moves it to the accelerator); the rest of the pipeline is dropped
            reference = load_any(round_start, family, device=None).denoiser
    # checkpoints of this start model, reference, reward table and train params resume; any others are cleared
    state = process_state()
    if state.is_main_process:
        resume_or_reset(rd.train / "checkpoints", {"weights": weights_digest(pipe.denoiser),
                                                   "reference": weights_digest(reference) if reference is not None else "start",
                                                   "rewards": file_digest(rd.rewards), "train": cfg.train.model_dump()})
    state.wait_for_everyone()
    # x0: the sampler's kept latents where groups.keep_latents saved them, else the encoded PNGs
    groups = groups_from_table(rewards, x0=model_inputs(rewards, rd.groups, pipe.encode_images),
                               exact_weight=cfg.train.exact_weight)
    n_dropped = int(rewards["group"].nunique()) - len(groups)  # no spread (in the reward trained on)
    model = train_gpo(pipe, groups, cfg.train, rd.train, n_dropped=n_dropped, progress=progress, log_fn=log_fn,
                      chain_batch=chain_batch, reference=reference)
    _timed(rd, "train", t0, n_groups=len(groups), n_dropped=n_dropped)
    return model


def evaluate_once(model: Path, prompts: list[Prompt], scorers: Scorers, e: EvalParams, out: Path,
                  progress: bool = True, family: str = "auto") -> dict:
    """Evaluate a model unless `out/summary.json` already holds the evaluation of these very weights with
    these eval params (resume after a crash or an MLflow failure); a partial evaluation resumes per image."""
    out = Path(out)
    done, stamp = out / "summary.json", out / "summary.inputs.json"
    pipe = load_any(model, family)
    fingerprint = {"weights": weights_digest(pipe.denoiser), "eval": e.model_dump(), "sampler": sampler_stamp(pipe.scheduler, e.solver, e.precision),
                   # an evaluation made without the second opinion is never reused by one with it (the guard needs it)
                   "second_opinion": None if scorers.second is None else type(scorers.second).__name__}
    if done.exists() and stamp.exists() and json.loads(stamp.read_text()) == fingerprint:
        return json.loads(done.read_text())
    summary = evaluate_model(pipe, prompts, scorers, e, out, "model", progress, weights=fingerprint["weights"])
    atomic_write_json(stamp, fingerprint)
    atomic_write_json(done, summary)
    return summary


def champion_entry(index: int, model: Path | str, summary: dict, version: Optional[int] = None) -> dict:
    return {"round": index, "model": portable(model), "headline": headline(summary), "summary": summary,
            "version": version}


def step_evaluate(index: int, rd: RoundDir, prev_champion: dict, prompts: list[Prompt], scorers: Scorers,
                  e: EvalParams, z: float, progress: bool = True, tracker=None,
                  family: str = "auto") -> tuple[dict, Decision]:
    """Held-out evaluation of the round's model, the champion decision, the round record and
    (with a tracker, gpo/tracking.py) the MLflow run and registered version. Writes champion.json last."""
    t0 = time.time()
    summary = evaluate_once(rd.model, prompts, scorers, e, rd.eval, progress, family)
    decision = decide(summary, prev_champion["summary"], z)
    metrics = flat_metrics(summary)
    metrics["headline"] = round(headline(summary), 4)
    atomic_write_json(rd.metrics, metrics)
    _timed(rd, "evaluate", t0)
    rewards = rd.all_rewards()
    first = rd.parts[0].step_file("generate")
    record = {"round": index, "iterations": rd.iterations,
              "model_in": json.loads(first.read_text())["start_model"] if first.exists() else None,
              "model_out": portable(rd.model), "seconds": rd.seconds(), "metrics": metrics, "headline": headline(summary),
              "decision": decision.to_dict(), "previous_champion_round": prev_champion["round"]}
    if rewards is not None:
        record["train_reward_mean"] = float(rewards["reward"].mean())
        record.update(train_reward_by_task(rewards))
    version = tracker.log_round(index, rd, record, summary, decision.promote) if tracker else None
    record["version"], record["mlflow_run"] = version, tracker.last_run if tracker else None
    write_record(rd, record)
    champion = champion_entry(index, rd.model, summary, version) if decision.promote else prev_champion
    atomic_write_json(rd.champion, champion)
    return champion, decision


def step_base(base: Path, rd: RoundDir, summary: dict, tracker=None) -> dict:
    """Round 0: the base model and its evaluation (the calibration's) become the first champion."""
    atomic_write_json(rd.eval / "summary.json", summary)
    metrics = {**flat_metrics(summary), "headline": round(headline(summary), 4)}
    atomic_write_json(rd.metrics, metrics)
    record = {"round": 0, "model_in": None, "model_out": portable(base), "seconds": {}, "metrics": metrics,
              "headline": headline(summary), "decision": None}
    version = tracker.log_round(0, rd, record, summary, True, model=Path(base)) if tracker else None
    record["version"], record["mlflow_run"] = version, tracker.last_run if tracker else None
    write_record(rd, record)
    champion = champion_entry(0, base, summary, version)
    atomic_write_json(rd.champion, champion)
    return champion


def train_reward_by_task(rewards: pd.DataFrame) -> dict[str, float]:
    """Mean reward of the round's own (on-policy) group images, per task: a free learning curve."""
    return {f"train_reward_{k}": float(v) for k, v in rewards.groupby("task")["reward"].mean().items()}


# --- chains ------------------------------------------------------------------------------------------
@dataclass
class Improvement:
    """What one round's generate → score → train produced (before evaluation)."""
    model: Path
    rewards: pd.DataFrame
    seconds: dict[str, float]


def batch_index(index: int, iteration: int, iterations: int) -> int:
    """The chain's batch of groups that iteration `iteration` (1-based) of round `index` is: it picks the
    prompts and seeds, so R rounds of N iterations draw what R·N one-iteration rounds would."""
    return (index - 1) * iterations + iteration


def improve(index: int, model_in: Path, folder: Path, prompts: list[Prompt], cfg: GpoFile, scorers: Scorers,
            progress: bool = True) -> Improvement:
    """Generate, score, train: a round without its evaluation; semi-online (groups.iterations = N > 1)
    N times, each iteration from the previous one's model, which is also its reference (train.reference:
    round: `model_in` is every iteration's reference). Steps whose files
    are complete are kept (a trained model with its train.json; a reward table), so a re-run resumes
    where it stopped, inside an iteration too."""
    rd = RoundDir(Path(folder), cfg.groups.iterations)
    model = model_in
    for j, part in enumerate(rd.parts, start=1):
        if not (part.model / "model_index.json").exists() or not part.step_file("train").exists():
            b = batch_index(index, j, rd.iterations)  # picks the prompts and seeds, and seeds the training draws
            if not part.rewards.exists():
                step_generate(b, model, part, prompts, cfg, progress)
                step_score(part, scorers)
            step_train(model, part, cfg, progress, chain_batch=b, round_start=model_in)
        model = part.model
    return Improvement(rd.model, rd.all_rewards(), rd.seconds())


def run_round(index: int, prev_champion: dict, folder: Path, prompts: list[Prompt], cfg: GpoFile, e: EvalParams,
              scorers: Scorers, z: float, progress: bool = True, tracker=None) -> dict:
    """All four steps from the previous champion; a finished round (champion.json) is read back."""
    rd = RoundDir(Path(folder), cfg.groups.iterations)
    if rd.champion.exists() and rd.record.exists():
        return read_champion(rd.champion)
    improve(index, local(prev_champion["model"]), rd.root, prompts, cfg, scorers, progress)
    champion, _ = step_evaluate(index, rd, prev_champion, prompts, scorers, e, z, progress, tracker)
    return champion


def run_rounds(base: Path, n: int, folder: Path, prompts: list[Prompt], cfg: GpoFile, e: EvalParams,
               scorers: Scorers, z: float = 0.0, progress: bool = True, base_summary: Optional[dict] = None,
               tracker=None) -> list[dict]:
    """Round 0 is the base model's evaluation; each round starts from the champion after the one before."""
    folder = Path(folder)
    rd0 = RoundDir(folder / "round-0")
    if rd0.champion.exists():
        champion = read_champion(rd0.champion)
    else:
        summary = base_summary or evaluate_once(base, prompts, scorers, e, rd0.eval, progress)
        champion = step_base(base, rd0, summary, tracker)
    for i in range(1, n + 1):
        champion = run_round(i, champion, folder / f"round-{i}", prompts, cfg, e, scorers, z, progress, tracker)
    rows = rounds_table(folder, n)
    atomic_write_json(folder / "rounds.json", {"champion": champion["model"], "rounds": rows})
    return rows


def rounds_table(folder: Path, n: Optional[int] = None) -> list[dict]:
    """One row per finished round (round.json records), round 0 first."""
    rows, i = [], 0
    while (n is None or i <= n) and (rec := Path(folder) / f"round-{i}" / "eval" / "round.json").exists():
        r = read_record(rec.parent.parent)
        champ = read_champion(Path(folder) / f"round-{i}" / "champion.json")
        summary = Path(folder) / f"round-{i}" / "eval" / "summary.json"
        by_count = (json.loads(summary.read_text()).get("counting/heldout", {}).get("accuracy_by_count", {})
                    if summary.exists() else {})
        rows.append({"round": i, "model": r["model_out"], "headline": r["headline"], "metrics": r["metrics"],
                     "seconds": r["seconds"], "champion": champ["round"] == i, "started_from": r["model_in"],
                     "version": r.get("version"), "by_count": by_count, "decision": r.get("decision")})
        i += 1
    return rows


def rounds_markdown(rows: list[dict]) -> str:
    """The per-round table. The second opinion (gpo/rewards/second_opinion.py) stands beside the reward
    models; `flag` names a round whose reward-model gain the second opinion does not match (never promoted)."""
    lines = ["| round | counting acc (held-out) | OCR mean reward (held-out) | OCR exact | unseen words: OCR reward | "
             "unseen words: OCR exact | "
             "second opinion: counting acc | second opinion: OCR reward | "
             "generate s | score s | train s | evaluate s | champion | flag |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, s = r["metrics"], r["seconds"]

        def ci(k):  # blank where the metric is absent (the second opinion of an older evaluation)
            return f"{m[k]:.3f} [{m[k + '_low']:.3f}, {m[k + '_high']:.3f}]" if k in m else ""

        def sec(k):  # blank where a step did not run (round 0: the base)
            return f"{s[k]:.0f}" if k in s else ""

        d = r.get("decision") or {}
        flag = ("reward-model gain not matched by the second opinion: " + ", ".join(d.get("unmatched") or [])
                if d.get("flagged") else "")
        lines.append(f"| {r['round']} | {ci('counting_heldout_accuracy')} | {ci('text_heldout_mean_reward')} | "
                     f"{ci('text_heldout_accuracy')} | {ci('text_heldout_words_mean_reward')} | {ci('text_heldout_words_accuracy')} | "
                     f"{ci('second_counting_heldout_accuracy')} | {ci('second_text_heldout_mean_reward')} | "
                     f"{sec('generate')} | {sec('score')} | {sec('train')} | {sec('evaluate')} | "
                     f"{'yes' if r['champion'] else ''} | {flag} |")
    total = {k: sum(r["seconds"].get(k, 0.0) for r in rows) for k in ("generate", "score", "train", "evaluate")}
    gpo_s = total["generate"] + total["score"] + total["train"]
    lines += ["", f"GPO compute, all rounds: {gpo_s:.0f} s = {gpo_s / 60:.1f} min (generate {total['generate']:.0f}, "
              f"score {total['score']:.0f}, train {total['train']:.0f}); held-out evaluation {total['evaluate']:.0f} s"]
    counts = sorted({int(c) for r in rows for c in r.get("by_count", {})})
    if counts:  # a "draw fewer" shift shows here: large counts falling while small ones rise
        lines += ["", "| round | " + " | ".join(f"counting acc, {c} asked" for c in counts) + " |",
                  "|---|" + "---|" * len(counts)]
        for r in rows:
            by = {int(c): e for c, e in r.get("by_count", {}).items()}
            lines.append(f"| {r['round']} | " + " | ".join(
                f"{by[c]['value']:.2f} [{by[c]['low']:.2f}, {by[c]['high']:.2f}]" if c in by else "" for c in counts) + " |")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, out: Path) -> str:
    """data/metrics: rounds.md (the table), rounds.json (champion and last round, flat: `dvc metrics`),
    rounds_curve.json and train_curve.json (`dvc plots`)."""
    rows = rounds_table(folder)
    if not rows:
        raise GpoError("no finished round to report", file=str(Path(folder) / "round-0" / "eval" / "round.json"),
                       fix="run the base stage and at least one round (`dvc repro`)")
    md = rounds_markdown(rows)
    out = Path(out)
    atomic_write_text(out / "rounds.md", md)
    champ = max((r for r in rows if r["champion"]), key=lambda r: r["round"])
    pick = ("counting_heldout_accuracy", "text_heldout_mean_reward", "text_heldout_accuracy",
            "text_heldout_words_mean_reward", "text_heldout_words_accuracy")
    atomic_write_json(out / "rounds.json", {
        "rounds": len(rows) - 1, "champion_round": champ["round"],
        "champion": {k: champ["metrics"].get(k) for k in pick + ("headline",)},
        "base": {k: rows[0]["metrics"].get(k) for k in pick + ("headline",)},
        "last": {k: rows[-1]["metrics"].get(k) for k in pick + ("headline",)}})
    atomic_write_json(out / "rounds_curve.json", [
        {"round": r["round"], "counting_accuracy": r["metrics"]["counting_heldout_accuracy"],
         "ocr_mean_reward": r["metrics"]["text_heldout_mean_reward"],
         "ocr_exact": r["metrics"]["text_heldout_accuracy"],
         "unseen_words_ocr_exact": r["metrics"].get("text_heldout_words_accuracy")} for r in rows])
    curve, offset = [], 0
    for r in rows[1:]:
        steps = round_dir(Path(folder) / f"round-{r['round']}").train_log()
        curve += [{"step": offset + s["step"], "round": r["round"], "loss": s["loss"],
                   "implicit_accuracy": s["implicit_accuracy"]} for s in steps]
        offset += len(steps)
    atomic_write_json(out / "train_curve.json", curve)
    return md
