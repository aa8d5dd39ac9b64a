"""kill -9 of the real `gpo stage base` process at three points of its MLflow registration, one after the
other, then a clean re-run: the registry ends with exactly one version for the round, the alias
`champion` on it, one history entry, and champion.json / round.json naming that version and run.

The kill points are the documented test seam `GPO_FAULT_AT` (gpo/tracking.py `fault_point`): the process
sends itself SIGKILL there, which is what a `kill -9` from outside does at that instant; polling files
cannot hit a window of a few milliseconds inside MLflow's own calls.
"""

import json

import pytest
from mlflow import MlflowClient

from gpo import params as P
from gpo.round import read_record
from gpo.calibrate import evaluate_model
from gpo.evaluate import Scorers
from gpo.model.adapters import load_any
from gpo.stages import Workspace
from tests.faults_workspace import make_workspace, ok, run
from tests.test_round import Brightness

NAME = "gpo-embedded"


def registry(ws):
    uri = f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def state(ws):
    """(registered versions, alias target or None, history entries, runs as (status, has a version))."""
    c = registry(ws)
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name = '{NAME}'"))
    try:
        alias = int(c.get_model_version_by_alias(NAME, "champion").version)
    except Exception:  # noqa: BLE001 - no alias (or no registered model) yet
        alias = None
    history = json.loads(c.get_registered_model(NAME).tags.get("champion_history", "[]")) if versions else []
    exp = c.get_experiment_by_name("gpo-embedded")
    runs = c.search_runs([exp.experiment_id]) if exp else []
    return versions, alias, history, runs


@pytest.fixture
def ws(tmp_path):
    cfg = P.GpoFile(groups=P.GroupParams(group_size=2, prompts_per_round=2, iterations=1, steps=2, batch_size=8))
    root = make_workspace(tmp_path / "ws", cfg)
    w = Workspace.default(root)
    summary = evaluate_model(load_any(root / "base"), w.prompt_table(), Scorers(Brightness(), Brightness()),
                             w.load("eval.yaml").eval, tmp_path / "base_eval", "base", progress=False)
    (root / "data" / "calibration").mkdir(parents=True)
    (root / "data" / "calibration" / "calibration.json").write_text(json.dumps({"base_model": summary}))
    return root


def test_kills_at_every_registration_point_then_one_version_and_a_consistent_champion(ws):
    champion_json = ws / "data" / "rounds" / "round-0" / "champion.json"
    base = ["gpo", "stage", "base"]

    # 1. killed just after the MLflow run started: a RUNNING run, nothing registered
    assert run(ws, *base, GPO_FAULT_AT="tracking:run-started").returncode == -9
    versions, alias, _, runs = state(ws)
    assert versions == [] and alias is None and not champion_json.exists()
    assert [r.info.status for r in runs] == ["RUNNING"]

    # 2. killed just after the version was registered (not tagged, alias not moved)
    assert run(ws, *base, GPO_FAULT_AT="tracking:registered").returncode == -9
    versions, alias, _, runs = state(ws)
    assert versions == [1] and alias is None and not champion_json.exists()
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["KILLED", "RUNNING"]  # the first attempt is recorded as killed, not resumed twice

    # 3. killed after MLflow was complete (alias moved), before round.json / champion.json
    assert run(ws, *base, GPO_FAULT_AT="tracking:logged").returncode == -9
    versions, alias, history, runs = state(ws)
    assert versions == [1] and alias == 1 and len(history) == 1 and not champion_json.exists()

    # 4. the same command, no fault: completes the record with the one version
    ok(run(ws, *base))
    versions, alias, history, runs = state(ws)
    champion = json.loads(champion_json.read_text())
    record = read_record(ws / "data" / "rounds" / "round-0")
    assert versions == [1] and alias == 1 == champion["version"] == record["version"]
    assert [h["version"] for h in history] == [1]  # the alias moved once
    mv = registry(ws).get_model_version(NAME, "1")
    assert mv.tags["round"] == "0" and mv.tags["run_id"] == mv.run_id == record["mlflow_run"][1]
    by_status = {r.info.status: r.info.run_id for r in runs}
    assert sorted(by_status) == ["FINISHED", "KILLED"] and by_status["FINISHED"] == mv.run_id

    # 5. and again (nothing changed): still one version, one alias move
    ok(run(ws, *base))
    versions, alias, history, _ = state(ws)
    assert versions == [1] and alias == 1 and len(history) == 1
