"""The Prefect flow `gpo-self-improve`: rounds of GPO as tasks, each task one DVC stage.

Why tasks run DVC stages instead of calling the step functions on their own: DVC owns the artifact
graph, so a Prefect run, a plain `dvc repro` and `dvc exp run` are the same computation, write the same
dvc.lock and skip each other's finished work (a crashed run resumes at the first stage whose inputs
changed or whose outputs are missing). The stage itself is `gpo stage ...`, the one implementation the
CLI also exposes; no step is implemented twice. Each task brings its stage up to date the way
`dvc repro --single-item` does, but runs the `gpo` command inside the flow's process
(flows/dvc_stage.py): torch and the models' code are imported once, not once a stage.

    python -m flows.self_improve run --rounds 3          # in-process (temporary Prefect API)
    python -m flows.self_improve serve --name local      # deployment gpo-self-improve/local
    prefect deployment run gpo-self-improve/local -p rounds=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.dvc_stage import dvc_subprocess, repro_stage
from gpo.env import workspace
from gpo.graph import iteration_key, iterations_of, write_graph
from gpo.lock import workspace_lock
from gpo.round import read_record, rounds_markdown, rounds_table
from gpo.stages import Workspace, apply_overrides

# Retries where the failure can be transient (a killed worker, a full disk freed, an OCR/YOLO hiccup);
# every stage resumes from what it wrote, so a retry does not redo finished work.
RETRIES = {"prompts": 0, "calibrate": 1, "base": 1, "generate": 2, "score": 2, "train": 1, "evaluate": 1, "report": 0}
MLFLOW_UI = os.environ.get("GPO_MLFLOW_UI", "http://127.0.0.1:5000")


@task(task_run_name="{name}")
def stage(name: str, root: str) -> str:
    """Bring one DVC stage up to date (runs it only if its inputs changed or outputs are missing)."""
    out = repro_stage(Path(root), name)
    get_run_logger().info(out[-2000:])
    return out


def run_stage(name: str, root: Path) -> str:
    base = name.split("@")[0]
    # name=: Prefect names a task run `<task name>-<3 chars>` while it is pending and applies
    # task_run_name only once it starts, so a task named `stage` showed as `stage-086` in the UI
    return stage.with_options(name=name, task_run_name=name, retries=RETRIES[base],
                              retry_delay_seconds=5)(name, str(root))


def _round_artifact(ws: Workspace, index: int) -> dict:
    record = read_record(ws.rounds / f"round-{index}")
    rows = [r for r in rounds_table(ws.rounds) if r["round"] in (0, index)]
    link = ""
    if record.get("mlflow_run"):
        exp, run = record["mlflow_run"]
        link = f"\n\nMLflow run: [{run}]({MLFLOW_UI}/#/experiments/{exp}/runs/{run})"
    decision = record.get("decision") or {}
    create_markdown_artifact(key=f"round-{index}", description=f"GPO round {index}",
                             markdown=f"## Round {index}\n\n{rounds_markdown(rows)}\n"
                                      f"Decision: {decision.get('reason', 'base')}{link}\n")
    return record


@flow(name="gpo-self-improve", log_prints=True)
def self_improve(rounds: Optional[int] = None, stop_when_no_improvement: bool = False,
                 overrides: Optional[dict[str, Any]] = None, push: bool = False,
                 workspace_dir: Optional[str] = None) -> list[dict]:
    """Rounds of generate → score → train (× groups.iterations) → evaluate, each from the champion so far.

    rounds: how many (default: those listed in params/run.yaml; more are added to it).
    stop_when_no_improvement: end after the first round whose model does not become champion.
    overrides: params to set first, like `dvc exp run -S`: {"gpo.yaml:train.lr": 1e-4}.
    push: `dvc push` after every round (backs the round up to the DVC remote).
    """
    root = Path(workspace_dir) if workspace_dir else workspace()
    with workspace_lock(root / "data" / ".gpo.lock"):  # a second run on this workspace is refused
        return _rounds(Workspace.default(root), root, rounds, stop_when_no_improvement, overrides, push)


def _rounds(ws: Workspace, root: Path, rounds: Optional[int], stop_when_no_improvement: bool,
            overrides: Optional[dict[str, Any]], push: bool) -> list[dict]:
    if overrides:
        print(f"params set: {apply_overrides(ws, overrides)}")
    run = ws.load("run.yaml")
    n = rounds or len(run.rounds)
    if n > len(run.rounds):
        from gpo import params as P

        P.save(ws.params / "run.yaml", run.with_rounds(n))
        print(f"params/run.yaml now lists rounds 1..{n}")
    write_graph(ws.params)  # the DVC stage graph of these rounds and groups.iterations (gpo/graph.py)
    iterations = iterations_of(ws.params)
    for name in ("prompts", "calibrate", "base"):
        run_stage(name, root)
    for i in range(1, n + 1):
        for j in range(1, iterations + 1):  # semi-online: the stages of i.1 … i.N in order
            key = iteration_key(i, j, iterations)
            for step in ("generate", "score", "train"):
                run_stage(f"{step}@{key}", root)
        run_stage(f"evaluate@{i}", root)
        record = _round_artifact(ws, i)
        if push:
            dvc_subprocess(root, "push")
        promoted = (record.get("decision") or {}).get("promote", False)
        print(f"round {i}: headline {record['headline']:.4f}; {record['decision']['reason']}")
        if stop_when_no_improvement and not promoted:
            print(f"stopping after round {i}: no improvement")
            break
    run_stage("report", root)
    rows = rounds_table(ws.rounds)
    create_table_artifact(key="gpo-rounds", description="held-out metrics per round",
                          table=[{"round": r["round"], "champion": r["champion"], "version": r["version"],
                                  **{k: r["metrics"][k] for k in ("counting_heldout_accuracy",
                                                                   "text_heldout_mean_reward",
                                                                   "text_heldout_accuracy")},
                                  **{f"{k}_s": v for k, v in r["seconds"].items()}} for r in rows])
    print(rounds_markdown(rows))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.self_improve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the flow in this process")
    r.add_argument("--rounds", type=int, default=None)
    r.add_argument("--stop-when-no-improvement", action="store_true")
    r.add_argument("--push", action="store_true")
    r.add_argument("-S", "--set", action="append", default=[], metavar="FILE:KEY=VALUE",
                   help="param override, e.g. -S gpo.yaml:train.lr=1e-4")
    s = sub.add_parser("serve", help="serve the deployment gpo-self-improve/NAME (needs PREFECT_API_URL)")
    s.add_argument("--name", default="local")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        import yaml

        overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in a.set)}
        try:
            self_improve(rounds=a.rounds, stop_when_no_improvement=a.stop_when_no_improvement,
                         overrides=overrides or None, push=a.push)
        except httpx.ConnectError as err:  # the Prefect API went away (or was never there)
            from prefect.settings import PREFECT_API_URL

            sys.exit(f"error: cannot reach the Prefect API at {PREFECT_API_URL.value()} "
                     f"(httpx.ConnectError: {err}).\n  field: PREFECT_API_URL\n  fix: start the server "
                     "(`make serve`) or unset PREFECT_API_URL to run with a temporary local API; finished "
                     "stages are kept in data/ and dvc.lock, and a re-run resumes after them")
    else:
        self_improve.serve(name=a.name, description="GPO self-improvement rounds on this workspace")


if __name__ == "__main__":
    main()
