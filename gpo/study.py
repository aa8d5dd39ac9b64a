"""The loss-arm study (issue #14): GPO against Diffusion-DPO and its group variants at equal budget, run
the way DVC runs ablations — every (arm, seed) a `dvc exp run --queue` experiment of the main pipeline,
every run an MLflow run tagged with its arm and seed — and reported as a table and a plot in docs/.

    gpo study run      # queue the missing experiments, run the queue, write the report
    gpo study report   # the report again from `dvc exp show --json` and the experiments' cached outputs

The budget, equal for every arm: one round of one iteration of the default params (the same train
prompts and G images per prompt, drawn by the base with `groups.seed` = the study seed, so the arms of a
seed train on the very same groups; the same optimizer steps; the same sampler) and the full held-out
evaluation (the same prompts and seeds for every run, so differences between arms are paired per image).
`train.seed` = the study seed too. The study's experiments log to their own MLflow experiment and
registered model (`gpo-study`), in the workspace's MLflow store, never to the main registry.

Pure parts (near-tie shares, the per-arm aggregation, paired differences) are tested against
hand-computed values (tests/test_study.py); the DVC and MLflow edges are the real tools.
"""

from __future__ import annotations

import functools
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from gpo.errors import GpoError
from gpo.loss import ARMS, _pairs, group_advantages
from gpo.metrics import mean_interval

SEEDS = (0, 1, 2)
PREFIX = "study"
NEAR_TIE = 0.05  # |r_w − r_l| below this: a pair the reward model can barely tell apart
ROUND = 1
EVAL = f"data/rounds/round-{ROUND}/eval"
GROUPS = f"data/rounds/round-{ROUND}/groups/rewards.parquet"
HEADLINES = ("counting_heldout_accuracy", "text_heldout_accuracy", "text_heldout_mean_reward")


def exp_name(arm: str, seed: int) -> str:
    return f"{PREFIX}-{arm}-s{seed}"


def study_overrides(arm: str, seed: int) -> dict[str, object]:
    """The -S params of one experiment (on top of the study's workspace budget, `budget_overrides`)."""
    return {"gpo.yaml:train.arm": arm, "gpo.yaml:train.seed": seed, "gpo.yaml:groups.seed": seed}


def budget_overrides(root: Path) -> dict[str, object]:
    """The study's budget and tracking, written into the workspace params while the experiments are queued
    (each queued experiment snapshots them), then restored: one round of one iteration, MLflow in the
    workspace's store (absolute: the experiments run in .dvc/tmp) under its own experiment and model name."""
    root = Path(root).resolve()
    return {"gpo.yaml:groups.iterations": 1, "run.yaml:rounds": {str(ROUND): {"prev": ROUND - 1, "start": "auto"}},
            "run.yaml:mlflow.tracking_uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
            "run.yaml:mlflow.artifact_root": str(root / "mlflow" / "artifacts"),
            "run.yaml:mlflow.experiment": "gpo-study", "run.yaml:mlflow.model_name": "gpo-study"}


# --- pure core ------------------------------------------------------------------------------------

def near_tie_share(rewards: torch.Tensor, arm: str, tau: float = NEAR_TIE) -> float | None:
    """The share of an arm's pair weight on near ties (|r_w − r_l| < tau), over groups (B, G) with spread.
    dpo-random: the expectation over its uniform draw of one ordered pair per group (every candidate pair
    r_i > r_j equally likely). dgpo has no pairs (one sigmoid of Σ A_i Δ_i): None."""
    if arm == "dgpo":
        return None
    r = rewards.to(torch.float64)
    if r.numel() == 0:
        return None
    r = r[r.std(dim=-1, unbiased=False) > 0]
    if not len(r):
        return None
    gap = (r[:, :, None] - r[:, None, :]).abs()
    near = gap < tau
    if arm == "dpo-random":
        better = r[:, :, None] > r[:, None, :]
        per_group = (better & near).sum(dim=(1, 2)).double() / better.sum(dim=(1, 2)).double()
        return float(per_group.mean())
    w = _pairs(arm, r, group_advantages(r), None).double()
    return float((w * near).sum() / w.sum())


def groups_tensor(rewards: pd.DataFrame, task: str | None = None) -> torch.Tensor:
    """(B, G) rewards of the kept groups of a rewards.parquet table (optionally one task's)."""
    t = rewards if task is None else rewards[rewards.task == task]
    if "dropped" in t:
        t = t[~t.dropped.astype(bool)]
    rows = [g.reward.to_numpy() for _, g in t.groupby("group")]
    size = max((len(x) for x in rows), default=0)
    rows = [x for x in rows if len(x) == size]
    return torch.from_numpy(np.stack(rows).astype("float64")) if rows else torch.zeros(0, 0, dtype=torch.float64)


def heldout_values(t: pd.DataFrame, task: str, column: str, split: str = "heldout") -> pd.Series:
    """One task's `column` per image of a held-out split, indexed by (prompt, seed): what paired comparisons align on."""
    return t[(t.task == task) & (t.split == split)].set_index(["prompt", "seed"])[column].astype(float)


def image_diffs(a: pd.DataFrame, b: pd.DataFrame, task: str, column: str, split: str = "heldout") -> list[float]:
    """Per-image differences a − b of `column` on the (prompt, seed) images both hold, one task's held-out split."""
    x, y = heldout_values(a, task, column, split), heldout_values(b, task, column, split)
    both = x.index.intersection(y.index)
    return (x.loc[both] - y.loc[both]).tolist()


def paired_delta(a: pd.DataFrame, b: pd.DataFrame, task: str, column: str, split: str = "heldout") -> dict:
    """Mean per-image difference a − b on the same (prompt, seed) images of one task's held-out split, with
    its 95% interval: tighter than two separate intervals when the models are close."""
    diffs = image_diffs(a, b, task, column, split)
    if not diffs:
        raise ValueError(f"no {task} {split} images in common")
    return mean_interval(diffs).as_dict()


@dataclass
class Run:
    """One finished experiment of the study."""
    name: str
    arm: str
    seed: int
    metrics: dict  # the round's flat metrics (round.json)
    seconds: dict  # generate / score / train / evaluate seconds of the round
    table: pd.DataFrame | None = None  # per-image held-out scores
    groups: pd.DataFrame | None = None  # the round's group rewards

    @property
    def gpo_minutes(self) -> float:
        return sum(self.seconds.get(k, 0.0) for k in ("generate", "score", "train")) / 60


def arm_rows(runs: Iterable[Run], base_metrics: dict) -> list[dict]:
    """Per arm: mean and sample sd over seeds of each headline metric, and its change from the base."""
    by_arm: dict[str, list[Run]] = {}
    for r in runs:
        by_arm.setdefault(r.arm, []).append(r)
    out = []
    for arm in [a for a in ARMS if a in by_arm]:
        rs = sorted(by_arm[arm], key=lambda r: r.seed)
        row = {"arm": arm, "seeds": [r.seed for r in rs], "gpo_minutes": sum(r.gpo_minutes for r in rs) / len(rs)}
        for k in HEADLINES:
            xs = [float(r.metrics[k]) for r in rs]
            m = sum(xs) / len(xs)
            sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
            row[k] = {"mean": m, "sd": sd, "values": xs, "delta": m - float(base_metrics[k])}
        out.append(row)
    return out


# --- DVC / report edges ---------------------------------------------------------------------------

def experiments_from_refs(root: Path) -> dict[str, dict]:
    """name → {'rev', 'arm', 'seed'} of the finished study experiments: DVC keeps each experiment as a git
    ref (refs/exps/.../NAME), its params in the commit. The same as `dvc exp show -A` lists, in a second."""
    import yaml

    refs = _git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").split("\n")
    found = {}
    for line in filter(None, refs):
        rev, ref = line.split()
        name = ref.rsplit("/", 1)[1]
        if not name.startswith(PREFIX + "-"):
            continue
        gpo = yaml.safe_load(_git(root, "show", f"{rev}:params/gpo.yaml"))
        found[name] = {"rev": rev, "arm": gpo["train"]["arm"], "seed": gpo["train"]["seed"], "error": None}
    return found


def _git(root: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@functools.lru_cache(maxsize=None)
def _lock(root: Path, rev: str) -> dict:
    """dvc.lock as of a commit, parsed once per commit (a run reads several outputs of the same one)."""
    import yaml

    return yaml.safe_load(_git(root, "show", f"{rev}:dvc.lock"))


def _read(root: Path, path: str, rev: str) -> bytes:
    """A DVC-cached file as of an experiment's commit: its hash from that commit's dvc.lock (a file
    output, or a file inside a directory output), read from the local cache. The same bytes as
    `dvc.api.open(path, rev=rev)`, without building a repository per file (minutes for a study)."""
    cache = Path(root) / ".dvc" / "cache" / "files" / "md5"
    blob = lambda md5: (cache / md5[:2] / md5[2:]).read_bytes()  # noqa: E731
    for stage in _lock(Path(root), rev)["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return blob(out["md5"])
            if path.startswith(out["path"] + "/") and out["md5"].endswith(".dir"):
                rel = path[len(out["path"]) + 1:]
                for entry in json.loads(blob(out["md5"])):
                    if entry["relpath"] == rel:
                        return blob(entry["md5"])
    raise GpoError(f"{path} is not a cached output of {rev}", file="dvc.lock", fix="run `gpo study run` again")


def load_run(root: Path, name: str, info: dict) -> Run:
    """A finished experiment's record, per-image table and group rewards, read from DVC's cache at its rev."""
    rec = json.loads(_read(root, f"{EVAL}/round.json", info["rev"]))
    table = pd.read_parquet(io.BytesIO(_read(root, f"{EVAL}/model_scores.parquet", info["rev"])))
    groups = pd.read_parquet(io.BytesIO(_read(root, GROUPS, info["rev"])))
    # the seconds are not part of the experiment's outputs (gpo/round.py keeps them out of DVC): MLflow has them
    seconds = rec.get("seconds") or mlflow_seconds(root, info["arm"], int(info["seed"]))
    return Run(name, info["arm"], int(info["seed"]), rec["metrics"], seconds, table, groups)


def mlflow_seconds(root: Path, arm: str, seed: int) -> dict[str, float]:
    """generate/score/train/evaluate seconds of the newest study run of (arm, seed) in the study's MLflow store."""
    import mlflow

    o = budget_overrides(root)
    client = mlflow.MlflowClient(o["run.yaml:mlflow.tracking_uri"])
    exp = client.get_experiment_by_name(o["run.yaml:mlflow.experiment"])
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], f"tags.arm = '{arm}' and tags.seed = '{seed}' and tags.round = '{ROUND}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise GpoError(f"no MLflow run of the study's {arm} seed {seed}", file=o["run.yaml:mlflow.tracking_uri"],
                       fix="run `gpo study run`: the experiment's round logs its seconds to MLflow")
    return {k.split("/", 1)[1]: v for k, v in runs[0].data.metrics.items() if k.startswith("seconds/")}


def queue(root: Path, arms: Iterable[str], seeds: Iterable[int], run_dvc) -> list[str]:
    """Queue the study's experiments that do not exist yet (a rerun resumes); returns the names queued.
    The workspace params get the study budget while queueing and are restored byte for byte after."""
    from gpo.stages import Workspace, apply_overrides

    root = Path(root)
    waiting = [ln.split()[1] for ln in run_dvc(root, "queue", "status").splitlines()
               if len(ln.split()) > 3 and ln.split()[-1] in ("Queued", "Running")]
    have = {**experiments_from_refs(root), **{n: {} for n in waiting}}  # finished, or on the queue already
    todo = [(a, s) for s in seeds for a in arms if exp_name(a, s) not in have]
    if not todo:
        return []
    keep = {p: p.read_bytes() for p in (root / "params").glob("*.yaml")}
    try:
        apply_overrides(Workspace.default(root), budget_overrides(root))
        for arm, seed in todo:
            sets = [x for k, v in study_overrides(arm, seed).items() for x in ("-S", f"params/{k}={v}")]
            run_dvc(root, "exp", "run", "--queue", "-n", exp_name(arm, seed), *sets)
    finally:
        for p, data in keep.items():
            p.write_bytes(data)
    return [exp_name(a, s) for a, s in todo]


def wait_for_queue(root: Path, run_dvc, jobs: int = 1, poll_s: float = 20.0, echo=print) -> list[str]:
    """`dvc queue start -j JOBS`, then wait until nothing is queued or running; returns the failed names."""
    run_dvc(root, "queue", "start", "-j", str(jobs))
    last = None
    while True:
        lines = run_dvc(root, "queue", "status").splitlines()
        state = {k: sum(f" {k}" in ln for ln in lines) for k in ("Queued", "Running", "Success", "Failed")}
        if state != last:
            echo(f"study queue: {state}")
            last = state
        if not state["Queued"] and not state["Running"]:
            return [ln.split()[1] for ln in lines if " Failed" in ln and len(ln.split()) > 1]
        time.sleep(poll_s)


def require_complete(found: dict, arms: Iterable[str], seeds: Iterable[int]) -> None:
    missing = [exp_name(a, s) for s in seeds for a in arms if exp_name(a, s) not in found]
    if missing:
        raise GpoError(f"{len(missing)} study experiment(s) missing: {', '.join(missing)}", file="dvc exp show",
                       fix="run `gpo study run` (it queues only what is missing); `dvc queue logs NAME` shows a failure")


# --- the report -----------------------------------------------------------------------------------

def _fmt(x: dict | None) -> str:
    if x is None:
        return "–"
    return f"{x['value']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def _pooled(runs: list[Run], other: dict[int, Run] | pd.DataFrame, task: str, column: str) -> dict | None:
    """Paired per-image differences pooled over seeds: each run against `other` (the same seed's run of
    another arm, or one table shared by every seed, e.g. the base)."""
    diffs = [d for r in runs for d in image_diffs(
        r.table, other if isinstance(other, pd.DataFrame) else other[r.seed].table, task, column)]
    return mean_interval(diffs).as_dict() if diffs else None


def agreement(table: pd.DataFrame, task: str) -> float | None:
    """Share of a task's held-out images where the reward model and the second opinion agree on right/wrong."""
    t = table[(table.task == task) & (table.split == "heldout")]
    if "second_correct" not in t or t.second_correct.isna().all():
        return None
    t = t[t.second_correct.notna()]
    return float((t.correct.astype(bool) == t.second_correct.astype(bool)).mean())


def render(runs: list[Run], base: dict, base_table: pd.DataFrame, command: str) -> tuple[str, dict]:
    """The study's markdown and its JSON (every number of the table)."""
    rows = arm_rows(runs, base)
    gpo_runs = {r.seed: r for r in runs if r.arm == "gpo"}
    by_arm = {a: [r for r in runs if r.arm == a] for a in ARMS}
    lines = [
        "| arm | seeds | counting acc, mean ± sd over seeds | OCR exact | OCR mean reward | "
        "Δ counting vs base, paired [95%] | Δ counting vs gpo, paired [95%] | Δ OCR reward vs gpo | "
        f"near ties (|Δr| < {NEAR_TIE}) counting / text | GPO min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| base | – | {base['counting_heldout_accuracy']:.3f} | {base['text_heldout_accuracy']:.3f} | "
        f"{base['text_heldout_mean_reward']:.3f} | | | | | |"]
    out = {"command": command, "base": {k: base[k] for k in HEADLINES}, "arms": []}
    for row in rows:
        rs = by_arm[row["arm"]]
        vs_base = _pooled(rs, base_table, "counting", "correct")
        vs_gpo = (None if row["arm"] == "gpo" or not gpo_runs else
                  {"counting": _pooled(rs, gpo_runs, "counting", "correct"),
                   "ocr_reward": _pooled(rs, gpo_runs, "text", "reward")})
        ties = {}
        for task in ("counting", "text"):
            shares = [near_tie_share(groups_tensor(r.groups, task), row["arm"]) for r in rs]
            shares = [s for s in shares if s is not None]
            ties[task] = sum(shares) / len(shares) if shares else None
        c, e, w = (row[k] for k in HEADLINES)
        tie_txt = " / ".join("–" if ties[t] is None else f"{ties[t]:.2f}" for t in ("counting", "text"))
        lines.append(
            f"| {row['arm']} | {len(rs)} | {c['mean']:.3f} ± {c['sd']:.3f} | {e['mean']:.3f} ± {e['sd']:.3f} | "
            f"{w['mean']:.3f} ± {w['sd']:.3f} | {_fmt(vs_base)} | {'' if vs_gpo is None else _fmt(vs_gpo['counting'])} | "
            f"{'' if vs_gpo is None else _fmt(vs_gpo['ocr_reward'])} | {tie_txt} | {row['gpo_minutes']:.1f} |")
        out["arms"].append({**row, "paired_vs_base_counting": vs_base, "paired_vs_gpo": vs_gpo, "near_tie_share": ties})
    out["runs"] = [{"name": r.name, "arm": r.arm, "seed": r.seed, "gpo_minutes": r.gpo_minutes,
                    **{k: r.metrics[k] for k in HEADLINES},
                    **{f"second_{k}": r.metrics.get(f"second_{k}") for k in HEADLINES}} for r in runs]
    # the second opinion against the reward models, on the base's images and on every final model's
    agree = {"base": {t: agreement(base_table, t) for t in ("counting", "text")}}
    for arm in [a for a in ARMS if by_arm[a]]:
        vals = {t: [x for x in (agreement(r.table, t) for r in by_arm[arm]) if x is not None] for t in ("counting", "text")}
        agree[arm] = {t: sum(v) / len(v) if v else None for t, v in vals.items()}
    out["second_opinion_agreement"] = agree
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    gaps = {}
    for task in ("counting", "text"):  # the smallest reward difference any pair has: how near a tie can get
        found = []
        for r in runs:
            g = groups_tensor(r.groups, task)
            if g.numel():
                d = (g[:, :, None] - g[:, None, :]).flatten()
                found += d[d > 0].tolist()
        gaps[task] = min(found) if found else None
    out["smallest_reward_gap"] = gaps
    lines += ["", f"The smallest reward difference of any pair in the groups: counting {f(gaps['counting'])}, "
              f"text {f(gaps['text'])} (the graded rewards take few values), so no pair is a near tie."
              if all(v is not None and v >= NEAR_TIE for v in gaps.values()) else
              f"The smallest reward difference of any pair: counting {f(gaps['counting'])}, text {f(gaps['text'])}."]
    lines += ["", "Agreement of the second opinion (classical counting, template reading) with YOLO / EasyOCR on "
              "right-or-wrong, held-out images:", "", "| images of | counting | text |", "|---|---|---|"]
    lines += [f"| {k} | {f(v['counting'])} | {f(v['text'])} |" for k, v in agree.items()]
    return "\n".join(lines) + "\n", out


def plot_spec(data: dict) -> dict:
    """Vega-Lite: each run as a line from the base (0 GPO minutes) to its result, one panel per metric."""
    values = []
    for r in data["runs"]:
        for k, label in zip(HEADLINES, ("held-out counting accuracy", "held-out OCR exact", "held-out OCR mean reward")):
            values += [{"run": r["name"], "arm": r["arm"], "metric": label, "minutes": 0.0, "value": data["base"][k]},
                       {"run": r["name"], "arm": r["arm"], "metric": label, "minutes": r["gpo_minutes"], "value": r[k]}]
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "facet": {"column": {"field": "metric", "type": "nominal", "title": None,
                                 "sort": ["held-out counting accuracy", "held-out OCR exact", "held-out OCR mean reward"]}},
            "resolve": {"scale": {"y": "independent"}},
            "spec": {"width": 220, "height": 220, "layer": [
                {"mark": {"type": "line", "opacity": 0.5},
                 "encoding": {"x": {"field": "minutes", "type": "quantitative", "title": "GPO minutes (generate + score + train)"},
                              "y": {"field": "value", "type": "quantitative", "scale": {"zero": False}, "title": None},
                              "color": {"field": "arm", "type": "nominal"}, "detail": {"field": "run"}}},
                {"mark": {"type": "point", "filled": True},
                 "encoding": {"x": {"field": "minutes", "type": "quantitative"},
                              "y": {"field": "value", "type": "quantitative"},
                              "color": {"field": "arm", "type": "nominal"}}}]}}


COMMAND = "gpo study run"  # `make study`


def write_report(root: Path, run_dvc, arms: Iterable[str] = ARMS, seeds: Iterable[int] = SEEDS,
                 docs: Path | None = None, results: Path | None = None) -> Path:
    """docs/study.md (generated), docs/study.png and benchmarks/results/study.json from the experiments."""
    import vl_convert as vlc

    from gpo.io import atomic_write, atomic_write_json, atomic_write_text

    root = Path(root)
    arms, seeds = list(arms), list(seeds)
    found = experiments_from_refs(root)
    require_complete(found, arms, seeds)
    runs = [load_run(root, exp_name(a, s), found[exp_name(a, s)]) for s in seeds for a in arms]
    rev = found[exp_name(arms[0], seeds[0])]["rev"]
    base = json.loads(_read(root, "data/rounds/round-0/eval/round.json", rev))["metrics"]
    base_table = pd.read_parquet(io.BytesIO(_read(root, "data/calibration/base_scores.parquet", rev)))
    table, data = render(runs, base, base_table, COMMAND)
    docs = Path(docs or root / "docs")
    results = Path(results or root / "benchmarks" / "results")
    atomic_write_json(results / "study.json", data)
    png = vlc.vegalite_to_png(plot_spec(data), scale=2)
    atomic_write(docs / "study.png", lambda tmp: tmp.write_bytes(png))
    md = (f"# The loss-arm study (generated by `{COMMAND}`; do not edit)\n\n"
          f"{len(arms)} arms × {len(seeds)} seeds (seeds {', '.join(map(str, seeds))}), each a DVC experiment "
          f"(`dvc exp show` lists them as `{PREFIX}-ARM-sSEED`) and an MLflow run of the experiment `gpo-study` "
          "tagged `arm` and `seed`. Budget per run: one round of one iteration of the default params (the arms of "
          "a seed train on the same groups), the full held-out evaluation on the same prompts and seeds. "
          "Paired differences are per image, pooled over the seeds. What it means: [docs/gpo.md, the loss arms](gpo.md#the-loss-arms-issue-14-gpo-against-diffusion-dpo-and-its-group-variants-at-equal-budget).\n\n"
          + table + "\n![held-out metrics against GPO minutes, every run a line from the base](study.png)\n")
    atomic_write_text(docs / "study.md", md)
    return docs / "study.md"


def run_study(root: Path, run_dvc, arms: Iterable[str] = ARMS, seeds: Iterable[int] = SEEDS, jobs: int = 1,
              echo=print) -> Path:
    """Bring the calibration up to date in the workspace (each experiment then checks it out of DVC's cache
    instead of recomputing it), queue what is missing, run the queue, write the report."""
    done = experiments_from_refs(root)
    if any(exp_name(a, s) not in done for s in seeds for a in arms):
        echo("dvc repro base (the calibration every experiment starts from) ...")
        run_dvc(root, "repro", "base")
    queued = queue(root, arms, seeds, run_dvc)
    echo(f"queued {len(queued)} experiment(s): {' '.join(queued) or '(all done before)'}")
    if queued:
        failed = wait_for_queue(root, run_dvc, jobs, echo=echo)
        if failed:
            raise GpoError(f"{len(failed)} study experiment(s) failed: {' '.join(failed)}", file="dvc queue status",
                           fix="`dvc queue logs NAME` shows why; `gpo study run` again reruns only what is missing")
    return write_report(root, run_dvc, arms, seeds)
