"""`gpo` command line. Each command calls the same library function that DVC stages and Prefect tasks call."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import warnings

import typer
from typer.core import TyperArgument, TyperCommand

from gpo import params as P
from gpo.env import workspace
from gpo.errors import GpoError

# EasyOCR builds its recognizer's DataLoader with pin_memory=True (easyocr/recognition.py, not ours);
# without an accelerator torch does not pin and warns once per DataLoader, i.e. every evaluation of
# every round. Known harmless: silenced once, for this one message, here (the flow runs stages through
# this module too).
warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator is found",
                        category=UserWarning)


class _Command(TyperCommand):
    """Usage lines the way click writes them (`gpo generate [OPTIONS] PROMPT...`), not `{prompt}...`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper().removesuffix("...")
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


# rich_markup_mode=None: click's plain help. Typer's rich panels print a `<bool>` type beside every flag
# (--help included) and keep the docstrings' line breaks in the command list. Each command's docstring
# opens with a one-sentence summary short enough for that list at 80 columns (tests/test_cli.py).
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Group Preference Optimization: self-improving text-to-image diffusion models.")
_command = app.command


def command(name: str):
    return _command(name, cls=_Command)


app.command = command  # every command below uses _Command
ParamsOpt = typer.Option(Path("params"), "--params", help="folder holding world/pretrain/rewards/eval/models.yaml")
PromptsOpt = typer.Option(Path("data/prompts.jsonl"), "--prompts", help="prompt table written by `gpo prompts`")


def _load(folder: Path, name: str):
    return P.load(_resolve(folder) / name, P.FILES[name])


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else workspace() / path


@app.command("params")
def params_cmd(params: Path = ParamsOpt,
               write: bool = typer.Option(False, "--write", help="write missing files with commented defaults"),
               overwrite: bool = typer.Option(False, "--overwrite", help="with --write: replace existing files"),
               sync: bool = typer.Option(False, "--sync", help="rewrite params/graph.yaml (the DVC stage graph) from "
                                         "run.yaml and gpo.yaml, e.g. after editing groups.iterations by hand")):
    """Validate params/*.yaml (or write the defaults).

    Checks every file against its schema, that models.yaml `base:` is a pipeline folder, and that the
    stage graph (params/graph.yaml) matches run.yaml and gpo.yaml."""
    from gpo.graph import check_graph, write_graph

    folder = _resolve(params)
    if write:
        for path in P.write_defaults(folder, overwrite=overwrite):
            typer.echo(f"wrote {path}")
    for name, obj in P.load_all(folder).items():
        if name == "models.yaml":  # a base folder that is not there would fail only at the first stage
            P.check_base(obj, folder / name, workspace())
        typer.echo(f"{name}: ok ({len(obj.model_dump_json())} bytes of settings)")
    if sync or write:
        typer.echo(f"wrote {write_graph(folder)}")
    check_graph(folder)
    typer.echo("graph.yaml: ok (matches run.yaml rounds and gpo.yaml groups.iterations)")


@app.command("prompts")
def prompts_cmd(params: Path = ParamsOpt,
                out: Path = typer.Option(Path("data/prompts.jsonl"), help="prompt table to write")):
    """Curate the prompt table (data/prompts.jsonl).

    Counting and text prompts in the splits train, heldout, heldout_words and practice."""
    from collections import Counter

    from gpo.prompts import write_prompts
    from gpo.world.dataset import build_prompts

    prompts = build_prompts(_load(params, "world.yaml").prompts)
    write_prompts(prompts, _resolve(out))
    for (task, split), n in sorted(Counter((p.task, p.split) for p in prompts).items()):
        typer.echo(f"{task:9s} {split:14s} {n:5d}")
    typer.echo(f"wrote {out}")


@app.command("pretrain")
def pretrain_cmd(params: Path = ParamsOpt, out: Path = typer.Option(Path("data/pretrain"), help="output folder"),
                 steps: Optional[int] = typer.Option(None, help="override pretrain.steps")):
    """Pretrain the embedded base model on rendered images.

    Resumes from the newest snapshot in --out."""
    from gpo.pretrain import pretrain

    cfg = _load(params, "pretrain.yaml")
    if steps is not None:
        cfg.pretrain.steps = steps
    path = pretrain(_load(params, "world.yaml"), cfg, _resolve(out))
    typer.echo(f"wrote {path}")


@app.command("detector")
def detector_cmd(params: Path = ParamsOpt, out: Path = typer.Option(Path("data/detector"), help="output folder")):
    """Train the YOLO counting reward on rendered shapes.

    YOLO from its architecture yaml (rewards.yaml detector), trained from scratch."""
    from gpo.rewards.detector import train_detector

    r = _load(params, "rewards.yaml")
    path = train_detector(_load(params, "world.yaml"), r.detector, _resolve(out))
    typer.echo(f"wrote {path}")


@app.command("calibrate")
def calibrate_cmd(params: Path = ParamsOpt, model: Optional[Path] = typer.Option(None, help="pipeline folder "
                  "(default: models.yaml base)"), prompts: Path = PromptsOpt,
                  out: Path = typer.Option(Path("data/calibration"), help="report folder"),
                  metrics: Path = typer.Option(Path("data/metrics/calibration.json"), help="flat metrics (DVC)")):
    """Check the reward models, measure the base model.

    The reward models on rendered ground truth, the base model (models.yaml `base:` unless --model) on
    the held-out prompts."""
    from gpo.calibrate import calibrate
    from gpo.model.build import load_pipeline
    from gpo.prompts import read_prompts

    e = _load(params, "eval.yaml").eval
    if model is not None:
        model_path = _resolve(model)
        pipe = load_pipeline(model_path)
    else:  # the base of params/models.yaml: an error names that setting, not only the folder
        models = _load(params, "models.yaml")
        try:
            model_path = P.check_base(models, _resolve(params) / "models.yaml", workspace())
            pipe = load_pipeline(model_path)
        except GpoError as err:
            raise GpoError(str(err).split("\n  ")[0], file=err.file, field=f"{params}/models.yaml: base",
                           value=models.base, fix=err.fix) from None
    result = calibrate(_load(params, "world.yaml"), e, read_prompts(_resolve(prompts)), pipe,
                       _ws(params).scorers(), _resolve(out), model_name=str(model_path))
    from gpo.io import atomic_write_json

    atomic_write_json(_resolve(metrics), result.metrics)
    typer.echo(result.markdown)
    typer.echo(f"wrote {out}/calibration.json, calibration.md and sample grids")


@app.command("generate")
def generate_cmd(prompt: list[str] = typer.Argument(..., metavar="PROMPT", help="one or more prompts, each in "
                                                    "quotes (e.g. 'three red circles')"),
                 model: Path = typer.Option(Path("release/base"), help="pipeline folder"),
                 seed: int = typer.Option(0, help="seed of the first image"),
                 n: int = typer.Option(4, help="images per prompt (>= 1)"),
                 out: Path = typer.Option(Path("data/samples"), help="folder for PNGs"),
                 steps: Optional[int] = typer.Option(None, help="sampler steps  [default: eval.steps of "
                                                     "params/eval.yaml]"),
                 guidance: Optional[float] = typer.Option(None, help="classifier-free guidance scale  [default: "
                                                          "eval.guidance_scale of params/eval.yaml]"),
                 solver: Optional[str] = typer.Option(None, help="ODE solver: auto, default, ddim, dpm++ or unipc  "
                                                      "[default: eval.solver of params/eval.yaml]"),
                 precision: Optional[str] = typer.Option(None, help="denoiser precision: fp32 or bf16  [default: "
                                                         "eval.precision of params/eval.yaml]"),
                 params: Path = ParamsOpt):
    """Generate images from prompts with a saved pipeline.

    What a user of the model does: `gpo generate 'three red circles' '"CAT" on a sign' --n 4`. The sampler
    settings default to params/eval.yaml, the ones every evaluation uses."""
    from gpo.generate import generate
    from gpo.model.build import load_pipeline
    from gpo.paths import safe_name

    blank = [p for p in prompt if not p.strip()]
    if blank:
        raise GpoError("a prompt is empty: there is nothing to draw", field="PROMPT", value=blank[0],
                       fix="give the text to draw, in quotes: gpo generate 'three red circles'")
    if n < 1:
        raise GpoError("--n is the number of images per prompt and must be at least 1", field="--n", value=n,
                       fix="e.g. --n 4 (the default)")
    sampling = _load(params, "eval.yaml").eval  # one source of truth: the sampler every evaluation uses
    steps = sampling.steps if steps is None else steps
    guidance = sampling.guidance_scale if guidance is None else guidance
    solver = sampling.solver if solver is None else solver
    precision = sampling.precision if precision is None else precision
    from gpo.model.sampler import PRECISIONS, SOLVERS
    if solver not in SOLVERS or precision not in PRECISIONS:
        bad, allowed = ("--solver", SOLVERS) if solver not in SOLVERS else ("--precision", PRECISIONS)
        raise GpoError(f"{bad} must be one of {', '.join(allowed)}", field=bad,
                       value=solver if bad == "--solver" else precision, fix=f"e.g. {bad} {allowed[-1]}")
    if steps < 1:
        raise GpoError("--steps must be at least 1", field="--steps", value=steps,
                       fix=f"leave it out for eval.steps of params/eval.yaml ({sampling.steps})")
    pipe = load_pipeline(_resolve(model))
    texts = [p for p in prompt for _ in range(n)]
    seeds = [seed + i for _ in prompt for i in range(n)]
    folder = _resolve(out)
    folder.mkdir(parents=True, exist_ok=True)
    for text, s, image in zip(texts, seeds, generate(pipe, texts, seeds, steps=steps, guidance_scale=guidance,
                                                     batch_size=sampling.batch_size, solver=solver,
                                                     precision=precision)):
        path = folder / f"{safe_name(text)}-seed{s}.png"
        image.save(path)
        typer.echo(str(path))


@app.command("detector-threshold")
def detector_threshold_cmd(
        weights: Path = typer.Option(..., "--weights", help="YOLO detection weights (.pt), e.g. a local COCO yolov8n.pt"),
        labels: Path = typer.Option(..., "--labels", help="folder of images with YOLO label .txt files "
                                    "(beside them or in a sibling labels/ folder), or with a counts.csv (image,class,count)"),
        out: Path = typer.Option(Path("data/detector_threshold.json"), help="JSON report to write"),
        imgsz: int = typer.Option(128, help="detector input side (rewards.yaml detector.imgsz)"),
        current: float = typer.Option(0.4, help="the τ in use now (rewards.yaml detector.conf), reported for comparison"),
        thresholds: Optional[str] = typer.Option(None, help="comma-separated τ values (default 0.05..0.95 by 0.05)"),
        device: str = typer.Option("cpu", help="torch device of the detector (cpu, cuda:0)")):
    """Calibrate the counting detector's confidence τ.

    Sweeps τ on a labelled folder, picks the one with the best exact-count accuracy and writes a JSON
    report (set the result as rewards.yaml detector.conf)."""
    from gpo.rewards.threshold import calibrate_threshold, markdown

    taus = None
    if thresholds:
        try:
            taus = [float(x) for x in thresholds.split(",") if x.strip()]
        except ValueError:
            raise GpoError("thresholds must be numbers", field="--thresholds", value=thresholds,
                           fix="e.g. --thresholds 0.1,0.2,0.3") from None
    report = calibrate_threshold(_resolve(weights), _resolve(labels), _resolve(out), imgsz=imgsz,
                                 thresholds=taus, current=current, device=device)
    typer.echo(markdown(report))
    typer.echo(f"wrote {out}")


@app.command("real-prompts")
def real_prompts_cmd(
        out: Path = typer.Option(Path("data/prompts_real.jsonl"), help="prompt table to write"),
        classes: str = typer.Option("coco", help="'coco' (the 80 COCO classes) or comma-separated class names"),
        counts: str = typer.Option("1,2,3,4,5,6", help="comma-separated requested counts (each >= 1)"),
        words: Optional[Path] = typer.Option(None, help="text file, one word a line (default: 90 built-in words)"),
        templates: Optional[Path] = typer.Option(None, help="text file, one sentence with {word} a line "
                                                 "(default: 4 built-in sentences)"),
        heldout_per_count: int = typer.Option(10, help="(class) prompts held out per count"),
        heldout_words: int = typer.Option(16, help="words never trained on (split heldout_words)"),
        seed: int = typer.Option(0, help="seed of the held-out draws"),
        detector: Optional[Path] = typer.Option(None, help="YOLO weights: check every class is one it can count"),
        world: Optional[Path] = typer.Option(None, help="also write a world.yaml whose `gpo prompts` makes this table")):
    """Prompts for a real model (COCO classes, words).

    Counting prompts (COCO classes × counts) and text prompts (quoted words), with the grammar and the
    splits of the embedded world."""
    from collections import Counter

    from gpo.prompts import COCO_CLASSES, REAL_TEMPLATES, REAL_WORDS, real_model_prompts, write_prompts

    def lines(path: Optional[Path], default: tuple[str, ...]) -> list[str]:
        if path is None:
            return list(default)
        p = _resolve(path)
        if not p.exists():
            raise GpoError("file not found", file=str(p), fix="give a text file with one entry a line")
        return [x.strip() for x in p.read_text().splitlines() if x.strip()]

    cls = list(COCO_CLASSES) if classes.strip().lower() == "coco" else [c.strip() for c in classes.split(",") if c.strip()]
    try:
        nums = [int(c) for c in counts.split(",") if c.strip()]
    except ValueError:
        raise GpoError("counts must be integers", field="--counts", value=counts, fix="e.g. --counts 1,2,3,4") from None
    from pydantic import ValidationError

    try:
        vocab = P.PromptParams(seed=seed, counting=P.CountingVocab(classes=cls, colors=[], counts=nums,
                                                                   heldout_per_count=heldout_per_count),
                               text=P.TextVocab(words=lines(words, REAL_WORDS),
                                                templates=lines(templates, REAL_TEMPLATES), heldout_words=heldout_words,
                                                practice_words=[]))  # the embedded world's practice words are not a real model's
    except ValidationError as err:
        e = err.errors()[0]
        raise GpoError(f"bad prompt vocabulary: {e['msg']}", field=".".join(str(x) for x in e["loc"]),
                       value=e.get("input"), fix="see `gpo real-prompts --help`") from None
    if detector is not None:
        from gpo.rewards.detector import Detector

        det = Detector(_resolve(detector))
        for c in cls:
            det.class_id(c)
    prompts = real_model_prompts(vocab.counting.classes, vocab.counting.counts, vocab.text.words, vocab.text.templates,
                                 heldout_per_count=heldout_per_count, heldout_words=heldout_words,
                                 heldout_share=vocab.text.heldout_share, seed=seed)
    write_prompts(prompts, _resolve(out))
    if world is not None:
        P.save(_resolve(world), P.WorldParams(prompts=vocab))
        typer.echo(f"wrote {world}")
    for (task, split), n in sorted(Counter((p.task, p.split) for p in prompts).items()):
        typer.echo(f"{task:9s} {split:14s} {n:5d}")
    typer.echo(f"wrote {out}")


def _ws(params: Path):
    from gpo.stages import Workspace

    return Workspace.default(workspace(), _resolve(params))


RoundsDirOpt = typer.Option(Path("data/rounds"), "--rounds-dir", help="folder of round folders")


@app.command("stage")
def stage_cmd(step: str = typer.Argument(..., metavar="STEP", help="base | generate | score | train | evaluate"),
              index: int = typer.Option(0, "--round", help="round number (>= 1; base is round 0)"),
              iteration: int = typer.Option(1, "--iteration", help="generate, score, train: which of the round's "
                                            "groups.iterations (1..N)"),
              params: Path = ParamsOpt, rounds_dir: Path = RoundsDirOpt,
              track: bool = typer.Option(True, help="log the round to MLflow and register its model (evaluate, base)")):
    """Run one step of one round (what a DVC stage runs).

    Each stage of dvc.yaml is this command."""
    from gpo.stages import run_stage

    ws = _ws(params)
    ws.rounds = _resolve(rounds_dir)
    typer.echo(json.dumps(run_stage(step, index, ws, track=track, iteration=iteration)))


@app.command("run")
def run_cmd(rounds: int = typer.Option(2, "--rounds", min=1, help="number of rounds"),
            params: Path = ParamsOpt,
            out: Path = typer.Option(Path("data/direct"), help="folder of round folders"),
            track: bool = typer.Option(False, help="log rounds to MLflow and register models")):
    """Chain rounds in one process (no DVC, no Prefect).

    Calls the step functions directly: for tuning and benchmarks. Round 0 is the calibration's
    evaluation of the base; each round starts from the champion so far."""
    from gpo.round import rounds_markdown, run_rounds

    ws = _ws(params)
    cal = ws.calibration / "calibration.json"
    base_summary = json.loads(cal.read_text())["base_model"] if cal.exists() else None
    base = ws.resolve(ws.load("models.yaml").base)
    from gpo.lock import workspace_lock

    with workspace_lock(ws.root / "data" / ".gpo.lock"):
        rows = run_rounds(base, rounds, _resolve(out), ws.prompt_table(), ws.load("gpo.yaml"),
                          ws.load("eval.yaml").eval, ws.scorers(), z=ws.load("run.yaml").promotion.z,
                          base_summary=base_summary, tracker=ws.tracker() if track else None)
    typer.echo(rounds_markdown(rows))


@app.command("table")
def table_cmd(rounds_dir: Path = RoundsDirOpt,
              out: Optional[Path] = typer.Option(None, help="also write rounds.md/json and the curves here "
                                                 "(the DVC report stage: data/metrics)")):
    """Print the per-round table.

    Held-out accuracies with intervals, the time split per step and the champion."""
    from gpo.round import rounds_markdown, rounds_table, write_report

    if out is not None:
        typer.echo(write_report(_resolve(rounds_dir), _resolve(out)))
    else:
        typer.echo(rounds_markdown(rounds_table(_resolve(rounds_dir))))


@app.command("champion")
def champion_cmd(params: Path = ParamsOpt):
    """Show the champion version, its pipeline, the history.

    The registered version holding the alias `champion`, the local pipeline folder to load it from, and
    every move of the alias."""
    t = _ws(params).tracker()
    version = t.champion()
    pipeline = str(t.version_path(version)) if version is not None else None
    typer.echo(json.dumps({"model": t.p.model_name, "champion": version, "pipeline": pipeline,
                           "uri": f"models:/{t.p.model_name}@champion" if version is not None else None,
                           "history": t.history()}, indent=1))


@app.command("promote")
def promote_cmd(version: int = typer.Argument(..., help="registered model version"),
                reason: str = typer.Option(..., "--reason", help="why (recorded on the version and in the history)"),
                params: Path = ParamsOpt):
    """Make a registered version the champion by hand.

    The next round starts from it (pinned in params/run.yaml)."""
    from gpo.stages import pin_next_round

    ws = _ws(params)
    ws.tracker().promote(version, reason)
    typer.echo(f"champion = version {version}; round {pin_next_round(ws, version)} will start from it")


@app.command("rollback")
def rollback_cmd(reason: str = typer.Option(..., "--reason", help="why (recorded)"), params: Path = ParamsOpt):
    """Move the champion back to the previous one.

    The previous one in the alias history; the next round starts from it."""
    from gpo.stages import pin_next_round

    ws = _ws(params)
    version = ws.tracker().rollback(reason)
    typer.echo(f"champion = version {version}; round {pin_next_round(ws, version)} will start from it")


@app.command("release")
def release_cmd(pretrained: Path = typer.Option(Path("data/pretrain"), help="output of `gpo pretrain`"),
                detector: Path = typer.Option(Path("data/detector"), help="output of `gpo detector`"),
                calibration: Path = typer.Option(Path("data/calibration"), help="output of `gpo calibrate`"),
                to: Path = typer.Option(Path("release"), help="release folder (tracked by git)")):
    """Copy rebuilt weights into release/ (shipped in git).

    The weights of `gpo pretrain` and `gpo detector`, their params and their calibration."""
    from gpo.release import release

    typer.echo(f"released into {release(_resolve(pretrained), _resolve(detector), _resolve(calibration), _resolve(to))}")


@app.command("exp")
def exp_cmd(all_columns: bool = typer.Option(False, "--all", help="every column (≈ 230: params, metrics, "
                                             "dependency hashes)")):
    """Compare DVC experiments (headline metrics).

    `dvc exp show` prints every param, metric and dependency hash (≈ 230 columns, "…" without a
    terminal). This is `dvc exp show --md --only-changed` without dependency hashes, keeping the
    champion's headline metrics (data/metrics/rounds.json) and the params that differ."""
    from gpo.dvc_views import exp_show_args, run_dvc

    typer.echo(run_dvc(workspace(), *exp_show_args(all_columns)).rstrip())


@app.command("study")
def study_cmd(action: str = typer.Argument("run", help="run (queue what is missing, run it, report) or report"),
              arms: list[str] = typer.Option(None, "--arm", help="loss arm (repeat; default: all five)"),
              seeds: list[int] = typer.Option(None, "--seed", help="study seed (repeat; default: 0 1 2)"),
              jobs: int = typer.Option(1, help="experiments run in parallel by the DVC queue")):
    """Compare the loss arms at equal budget.

    Every (arm, seed) is a `dvc exp run --queue` experiment of the main pipeline (one round of one
    iteration); the report is docs/study.md, docs/study.png and benchmarks/results/study.json."""
    from gpo.dvc_views import run_dvc
    from gpo.loss import ARMS
    from gpo.study import SEEDS, run_study, write_report

    if action not in ("run", "report"):
        raise GpoError("unknown study action", field="ACTION", value=action, fix="pass run or report")
    arms, seeds = list(arms or ARMS), list(seeds or SEEDS)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise GpoError("unknown loss arm", field="--arm", value=bad[0], fix=f"one of {', '.join(ARMS)}")
    root = workspace()
    path = (run_study(root, run_dvc, arms, seeds, jobs, echo=typer.echo) if action == "run"
            else write_report(root, run_dvc, arms, seeds))
    typer.echo(f"wrote {path.relative_to(root) if path.is_relative_to(root) else path}")


@app.command("plots")
def plots_cmd(revs: list[str] = typer.Argument(None, help="commits or experiment names to overlay (`dvc plots diff`; "
                                                        "default: the workspace)"),
              out: Path = typer.Option(Path("dvc_plots"), help="folder to write (git-ignored)")):
    """Render the DVC plots for offline viewing.

    `dvc plots show` writes a page that loads vega from a CDN, blank offline. This renders the same
    Vega-Lite specs (dvc.yaml `plots:`) with vl-convert: OUT/index.html shows them as inline SVG (no
    scripts), OUT/<plot>.svg, and OUT/<plot>.html is one interactive page with vega bundled."""
    from gpo.dvc_views import render_plots

    for stem in render_plots(workspace(), _resolve(out), list(revs or [])):
        typer.echo(f"wrote {out}/{stem}.svg and {stem}.html")
    typer.echo(f"wrote {out}/index.html (open it in a browser; nothing is loaded from the network)")


def main() -> None:
    """Console entry point: a GpoError is a user error, printed without a traceback, exit code 2."""
    try:
        app()
    except GpoError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(2)
