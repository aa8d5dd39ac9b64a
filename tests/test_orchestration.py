"""The whole orchestration for real, at tiny scale, in a temporary git + DVC workspace: the Prefect flow
(test harness = a real temporary Prefect API) runs the DVC stages (`gpo stage ...` subprocesses, real
YOLO + EasyOCR + the shipped base), which log to MLflow on sqlite. Then DVC's contract: nothing changed
→ nothing runs; one GPO param changed → only the stages that depend on it; `dvc exp run -S` works."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from gpo import params as P
from gpo.round import read_record
from tests.faults_workspace import tiny_world

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cwd, *args, check=True):
    env = {**os.environ, "GPO_WORKSPACE": str(cwd), "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def tiny_params(folder: Path) -> None:
    P.save(folder / "world.yaml", tiny_world())
    P.save(folder / "pretrain.yaml", P.PretrainFile())
    P.save(folder / "rewards.yaml", P.RewardsFile())
    P.save(folder / "models.yaml", P.ModelsFile())
    P.save(folder / "eval.yaml", P.EvalFile(eval=P.EvalParams(counting_seeds=2, text_seeds=2, heldout_word_seeds=1,
                                                              gt_images=10, batch_size=32)))
    P.save(folder / "gpo.yaml", P.GpoFile(groups=P.GroupParams(group_size=6, prompts_per_round=2, iterations=1, batch_size=16),
                                          train=P.TrainParams(epochs=1, groups_per_step=2, draws=1)))
    run = P.RunFile().with_rounds(1)
    run.promotion.z = 0.0
    P.save(folder / "run.yaml", run)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("orchestrated")
    for item in ("gpo", "flows", "release"):
        # release/dvc.yaml (rebuilding the shipped weights from scratch) is not part of a round
        shutil.copytree(ROOT / item, ws / item, ignore=shutil.ignore_patterns("__pycache__", "dvc.yaml", "dvc.lock"))
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", ws / ".gitignore")
    tiny_params(ws / "params")
    sh(ws, "git", "init", "-q")
    sh(ws, "dvc", "init", "-q")
    sh(ws, "dvc", "config", "core.analytics", "false")
    sh(ws, "dvc", "remote", "add", "-d", "local", str(ws / "dvc-remote"))
    sh(ws, "git", "add", "-A")
    sh(ws, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny workspace")
    return ws


@pytest.fixture(scope="module")
def flow_rows(workspace):
    from prefect.testing.utilities import prefect_test_harness

    from flows.self_improve import self_improve

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    # stop log/event workers an earlier test may have left bound to a server that is gone (bounded wait):
    # the harness drains them on exit and would otherwise wait on them for ever
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    old = os.environ.get("GPO_WORKSPACE")
    os.environ["GPO_WORKSPACE"] = str(workspace)
    try:
        with prefect_test_harness():
            rows = self_improve(rounds=1, push=True, workspace_dir=str(workspace))
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            import anyio

            async def read():
                async with get_client() as client:
                    flows = await client.read_flow_runs()
                    tasks = await client.read_task_runs()
                    arts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                        key=ArtifactFilterKey(any_=["round-1", "gpo-rounds"])))
                    return flows, tasks, arts

            api = anyio.run(read)
    finally:
        if old is None:
            os.environ.pop("GPO_WORKSPACE", None)
        else:
            os.environ["GPO_WORKSPACE"] = old
    return rows, api


def test_flow_runs_every_stage_through_dvc_and_reports(workspace, flow_rows):
    rows, (flows, tasks, arts) = flow_rows
    assert [r["round"] for r in rows] == [0, 1]
    assert flows[0].name and flows[0].state.is_completed()
    names = {t.name for t in tasks}
    assert {"prompts", "calibrate", "base", "generate@1", "score@1", "train@1", "evaluate@1", "report"} <= names
    assert all(t.state.is_completed() for t in tasks)
    assert {a.key for a in arts} == {"round-1", "gpo-rounds"}
    md = next(a for a in arts if a.key == "round-1").data
    assert "| 1 |" in md and "MLflow run" in md
    lock = (workspace / "dvc.lock").read_text()
    assert "evaluate@1" in lock and "generate@1" in lock
    metrics = json.loads((workspace / "data" / "metrics" / "rounds.json").read_text())
    assert metrics["rounds"] == 1 and 0 <= metrics["last"]["counting_heldout_accuracy"] <= 1
    # pushed to the local remote
    assert any((workspace / "dvc-remote").rglob("*"))


def test_mlflow_holds_a_run_per_round_and_the_champion(workspace, flow_rows):
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gpo-embedded"])
    assert sorted(runs["tags.round"]) == ["0", "1"]
    client = mlflow.MlflowClient()
    champ = client.get_model_version_by_alias("gpo-embedded", "champion")
    expected = json.loads((workspace / "data" / "rounds" / "round-1" / "champion.json").read_text())["version"]
    assert int(champ.version) == expected


def test_dvc_reruns_nothing_then_only_what_a_param_touches(workspace, flow_rows):
    out = sh(workspace, "dvc", "status")
    assert "up to date" in out, out
    out = sh(workspace, "dvc", "repro")
    assert "Running stage" not in out, out
    cfg = P.load(workspace / "params" / "gpo.yaml", P.GpoFile)
    cfg.train.lr = 3e-5
    P.save(workspace / "params" / "gpo.yaml", cfg)
    dry = sh(workspace, "dvc", "repro", "--dry")
    ran = {line.split("'")[1] for line in dry.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@1"}, dry  # a dry run lists the stages whose own inputs changed
    # dvc exp run -S: sets the param and re-runs the same stages
    out = sh(workspace, "dvc", "exp", "run", "-S", "params/gpo.yaml:train.lr=4e-5")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@1", "evaluate@1", "report"}, out
    shown = sh(workspace, "dvc", "exp", "show", "--no-pager", "--md")
    assert "4e-05" in shown and "counting_heldout_accuracy" in shown


def test_a_semi_online_round_runs_its_iterations_as_dvc_stages(workspace, flow_rows):
    """groups.iterations = 2: saving gpo.yaml rewrites the stage graph; `dvc repro` runs generate → score →
    train of iteration 1.1, then 1.2 from 1.1's model, then evaluates 1.2's model; then nothing is left to run."""
    cfg = P.load(workspace / "params" / "gpo.yaml", P.GpoFile)
    cfg.groups.iterations = 2
    P.save(workspace / "params" / "gpo.yaml", cfg)
    out = sh(workspace, "dvc", "repro")
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    want = ["generate@1.1", "score@1.1", "train@1.1", "generate@1.2", "score@1.2", "train@1.2", "evaluate@1"]
    assert [s for s in ran if s in want] == want, out
    r1 = workspace / "data" / "rounds" / "round-1"
    start = json.loads((r1 / "iter-2" / "groups" / "generate.json").read_text())["start_model"]
    assert start.endswith("round-1/iter-1/train/pipeline")
    record = read_record(r1)
    assert record["model_out"].endswith("round-1/iter-2/train/pipeline") and record["seconds"]["train"] > 0
    assert "up to date" in sh(workspace, "dvc", "status")
