"""Real MLflow (sqlite + file artifact store in a temp dir): runs per round, registered versions, the
champion alias (rule, promote, rollback), and loading `models:/<name>@champion` to generate."""

import json
import logging
import warnings

import mlflow
import numpy as np
import pytest
from PIL import Image

from gpo.errors import GpoError
from gpo.evaluate import Scorers
from gpo.model.build import build_pipeline
from gpo.params import EvalParams, EvalFile, GpoFile, GroupParams, MlflowParams, ModelParams, PromptParams, TrainParams
from gpo.rewards.arith import Score
from gpo.round import RoundDir, read_champion, read_record, run_rounds, step_evaluate
from gpo.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker, flat_params, step_times
from gpo.world.dataset import build_prompts

TINY = ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8)


class Brightness:
    def score(self, images, prompts):
        vals = [float(np.asarray(im, dtype=np.float32).mean() / 255) for im in images]
        return [Score(v, v > 0.5, f"{v:.3f}") for v in vals]


SAID: list[str] = []  # what MLflow warned about while the fixture logged its rounds


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    base = root / "base"
    build_pipeline(TINY, seed=0).save_pretrained(base, safe_serialization=True)
    cfg = GpoFile(groups=GroupParams(group_size=4, prompts_per_round=4, iterations=1, steps=2, batch_size=16),
                  train=TrainParams(epochs=1, groups_per_step=2, draws=1, lr=1e-3, beta=10.0, threads=1))
    e = EvalParams(counting_seeds=1, text_seeds=1, heldout_word_seeds=1, steps=2, batch_size=64, gt_images=10)
    tracker = Tracker(MlflowParams(experiment="test-exp", model_name="test-model"), root,
                      flat_params(cfg, EvalFile(eval=e)))
    prompts = build_prompts(PromptParams())
    scorers = Scorers(Brightness(), Brightness())
    with capture_warnings() as said:  # everything MLflow warns about while three rounds are logged
        rows = run_rounds(base, 2, root / "rounds", prompts, cfg, e, scorers, z=0.0, progress=False, tracker=tracker)
    SAID[:] = said
    return root, tracker, rows, (prompts, scorers, e)


class capture_warnings:
    """Python warnings and mlflow's logged warnings (its logger does not propagate to the root) as strings."""

    def __enter__(self):
        self.said: list[str] = []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda record: self.said.append(record.getMessage())
        logging.getLogger("mlflow").addHandler(self.handler)
        self.caught = warnings.catch_warnings(record=True)
        self.records = self.caught.__enter__()
        warnings.simplefilter("always")
        return self.said

    def __exit__(self, *exc):
        self.caught.__exit__(*exc)
        logging.getLogger("mlflow").removeHandler(self.handler)
        self.said += [str(w.message) for w in self.records]


def test_every_round_is_a_run_and_a_registered_version(tracked):
    root, tracker, rows, _ = tracked
    assert (root / "mlflow" / "mlflow.db").exists()
    runs = mlflow.search_runs(experiment_ids=[tracker.experiment_id], order_by=["attributes.start_time ASC"])
    assert list(runs["tags.round"]) == ["0", "1", "2"]
    r1 = runs[runs["tags.round"] == "1"].iloc[0]
    assert r1["metrics.eval/counting_heldout_accuracy_low"] <= r1["metrics.eval/counting_heldout_accuracy"]
    assert r1["tags.git_commit"] and r1["params.train.beta"] == "10.0"
    # the loss arm and seeds as tags: a comparison of runs (gpo study) is filtered by them in the UI
    assert (r1["tags.arm"], r1["tags.seed"]) == (r1["params.train.arm"], r1["params.train.seed"]) == ("gpo", "0")
    assert r1["tags.groups_seed"] == r1["params.groups.seed"]
    history = tracker.client.get_metric_history(r1["run_id"], "train/loss")
    assert len(history) == 2 and [m.step for m in history] == [1, 2]  # 4 groups / 2 per step, 1 epoch
    arts = {a.path for a in tracker.client.list_artifacts(r1["run_id"], "grids")}
    assert {"grids/model_counting_grid.png", "grids/model_text_grid.png"} <= arts
    assert [a.path for a in tracker.client.list_artifacts(r1["run_id"], "plots")] == ["plots/reward_histogram.png"]
    versions = [r["version"] for r in rows]
    assert versions == [1, 2, 3]
    # MLflow 3's UI opens a machine-learning experiment on its runs (not the GenAI overview)
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_rounds_run_spans_its_steps(tracked):
    """The run starts when the round's first step started and ends after its evaluation: its duration is
    the round's, not the second of logging."""
    root, tracker, _, _ = tracked
    rd = RoundDir(root / "rounds" / "round-1")
    steps = step_times(rd)
    assert [t["step"] for t in steps] == ["generate", "score", "train", "evaluate"]
    assert all(a["end"] <= b["start"] + 0.05 for a, b in zip(steps, steps[1:]))  # one after the other
    run = tracker.client.get_run(read_record(rd.root)["mlflow_run"][1]).info
    assert run.status == "FINISHED"
    assert abs(run.start_time / 1000 - steps[0]["start"]) < 0.01
    assert run.end_time / 1000 >= steps[-1]["end"]
    seconds = read_record(rd.root)["seconds"]
    assert (run.end_time - run.start_time) / 1000 >= sum(seconds.values()) - 0.05
    timeline = mlflow.artifacts.load_dict(f"runs:/{run.run_id}/timeline.json")
    assert [t["step"] for t in timeline] == ["generate", "score", "train", "evaluate"]
    assert [t["seconds"] for t in timeline] == [seconds[k] for k in ("generate", "score", "train", "evaluate")]


def test_every_version_carries_its_promotion_decision(tracked):
    root, tracker, rows, _ = tracked
    for r in rows:
        mv = tracker.client.get_model_version("test-model", str(r["version"]))
        record = read_record(root / "rounds" / f"round-{r['round']}")
        promoted = r["round"] == 0 or record["decision"]["promote"]
        assert mv.tags["promoted"] == str(promoted) and mv.tags["round"] == str(r["round"])
        assert mv.tags["headline"] == f"{record['headline']:.4f}"
        if r["round"] == 0:
            assert "first champion" in mv.tags["decision_reason"] and "first champion" in mv.description
            continue
        d = record["decision"]
        assert mv.tags["decision_reason"] == d["reason"]
        assert mv.tags["champion_headline"] == f"{record['headline'] - d['gain']:.4f}"
        assert mv.tags["headline_gain"] == f"{d['gain']:+.4f}" and mv.tags["promotion_threshold"] == f"{d['threshold']:.4f}"
        assert mv.description.startswith(f"Round {r['round']}: {'PROMOTED' if promoted else 'NOT PROMOTED'}")
        assert d["reason"] in mv.description
        run = tracker.client.get_run(mv.run_id)
        assert run.data.tags["mlflow.note.content"] == mv.description


def test_the_champion_loads_without_unpickling_anything(tracked, tmp_path, monkeypatch):
    """Models from code: the registered model is gpo/mlflow_model.py + the diffusers folder (safetensors),
    so it loads with pickle deserialization switched off and has no pickle file at all."""
    import pandas as pd

    from mlflow.artifacts import download_artifacts

    _, tracker, _, _ = tracked
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    folder = tmp_path / "champion"
    download_artifacts("models:/test-model@champion", dst_path=str(folder))
    files = [f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()]
    assert "mlflow_model.py" in files and "MLmodel" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".bin", ".ckpt"))], files
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights and all(f.startswith("artifacts/") for f in weights)
    for f in folder.rglob("*"):  # no pickle stream anywhere (protocol 2+ starts with 0x80, a protocol byte)
        if f.is_file() and not f.name.endswith(".safetensors"):
            head = f.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f
    conf = (folder / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in conf and "python_model.pkl" not in conf
    with capture_warnings() as said:
        model = mlflow.pyfunc.load_model("models:/test-model@champion")
        images = model.predict(["three red circles", "\"CAT\" on a sign"], params={"steps": 2, "seed": 3})
    assert len(images) == 2 and all(isinstance(im, Image.Image) for im in images)
    assert not [m for m in said if "pickle" in m.lower() or "type hint" in m.lower()], said
    again = model.predict(pd.DataFrame({"prompt": ["three red circles"]}), params={"steps": 2, "seed": 3})
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))  # same prompt and seed, same image
    params = {p.name: p.default for p in model.metadata.signature.params}
    e = EvalParams()  # the test's workspace has no params/eval.yaml: the defaults
    assert params == {"seed": 0, "steps": e.steps, "guidance_scale": e.guidance_scale, "solver": e.solver,
                      "precision": e.precision}
    assert (tracker.downloaded_pipeline(tracker.champion()) / "model_index.json").exists()


def test_logging_rounds_says_nothing_about_pickles_or_type_hints(tracked):
    assert not [m for m in SAID if "pickle" in m.lower() or "type hint" in m.lower()], SAID


def test_alias_follows_champion_json_and_loads_for_generation(tracked):
    root, tracker, rows, _ = tracked
    last = read_champion(root / "rounds" / "round-2" / "champion.json")
    assert tracker.champion() == last["version"]
    model = mlflow.pyfunc.load_model("models:/test-model@champion")
    images = model.predict(["three red circles", "\"CAT\" on a sign"], params={"steps": 2})
    assert len(images) == 2 and all(isinstance(im, Image.Image) for im in images)


def test_a_worse_model_is_never_promoted(tracked, tmp_path):
    root, tracker, _, (prompts, scorers, e) = tracked
    before = tracker.champion()
    rd1 = RoundDir(root / "rounds" / "round-1")
    champ = read_champion(root / "rounds" / "round-2" / "champion.json")
    # a champion whose held-out numbers are perfect: round 1's model is worse and must not move the alias
    perfect = json.loads(json.dumps(champ["summary"]))
    for key, metric in (("counting/heldout", "accuracy"), ("text/heldout", "mean_reward")):
        perfect[key][metric] = {"value": 1.0, "low": 0.99, "high": 1.0, "n": 400}
    champ = {**champ, "summary": perfect}
    copy = RoundDir(tmp_path / "round-9")
    import shutil
    shutil.copytree(rd1.root, copy.root)
    (copy.champion).unlink()
    new_champion, decision = step_evaluate(9, copy, champ, prompts, scorers, e, 0.0, False, tracker)
    assert not decision.promote and new_champion == champ
    assert tracker.champion() == before
    assert json.loads(copy.champion.read_text())["version"] == champ["version"]


def test_promote_and_rollback_by_hand_are_recorded(tracked):
    _, tracker, _, _ = tracked
    before = tracker.champion()
    tracker.promote(1, "the base looks better on the grids")
    assert tracker.champion() == 1
    mv = tracker.client.get_model_version("test-model", "1")
    assert mv.tags["champion_reason"] == "the base looks better on the grids"
    back = tracker.rollback("promotion was a mistake")
    assert back == before == tracker.champion()
    h = tracker.history()
    assert h[-2]["by"] == "hand" and h[-1]["reason"].startswith("rollback from 1")
    with pytest.raises(GpoError, match="no version 99"):
        tracker.promote(99, "x")
    with pytest.raises(GpoError, match="needs a reason"):
        tracker.promote(1, " ")


def test_a_pinned_version_is_where_the_next_round_starts(tracked, tmp_path):
    from gpo import params as P
    from gpo.stages import Workspace, pin_next_round, start_champion

    root, tracker, _, _ = tracked
    P.write_defaults(tmp_path / "params")
    ws = Workspace.default(root, tmp_path / "params")
    ws.rounds = root / "rounds"
    assert pin_next_round(ws, 1) == "3"  # rounds 1 and 2 are done
    run = ws.load("run.yaml")
    assert run.rounds["3"].start == "1" and run.rounds["2"].start == "auto"
    start = start_champion(ws, 3, tracker)
    assert start["version"] == 1 and start["round"] == 0
    assert start["model"] == str(root / "base")
    assert start["summary"] == json.loads((root / "rounds" / "round-0" / "eval" / "summary.json").read_text())
    auto = start_champion(ws, 2, tracker)
    assert auto == read_champion(root / "rounds" / "round-1" / "champion.json")


def test_promote_and_rollback_commands(tracked, monkeypatch):
    from typer.testing import CliRunner

    from gpo import params as P
    from gpo.cli import app

    root, tracker, _, _ = tracked
    P.write_defaults(root / "params")
    run = P.load(root / "params" / "run.yaml", P.RunFile)
    run.mlflow.experiment, run.mlflow.model_name = "test-exp", "test-model"
    P.save(root / "params" / "run.yaml", run)
    monkeypatch.setenv("GPO_WORKSPACE", str(root))
    before = tracker.champion()
    cli = CliRunner()
    out = cli.invoke(app, ["promote", "2", "--reason", "sharper letters"])
    assert out.exit_code == 0, out.output
    assert "champion = version 2" in out.output and tracker.champion() == 2
    out = cli.invoke(app, ["rollback", "--reason", "grids were worse"])
    assert out.exit_code == 0 and tracker.champion() == before
    shown = json.loads(cli.invoke(app, ["champion"]).output)
    assert shown["champion"] == before and shown["history"][-1]["reason"].startswith("rollback from 2")
    bad = cli.invoke(app, ["promote", "42", "--reason", "x"])
    assert bad.exit_code != 0 and "no version 42" in str(bad.exception)


def test_mlflow_down_is_one_clear_error_and_a_rerun_completes_without_recomputing(tracked, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    root, tracker, _, (prompts, scorers, e) = tracked
    with pytest.raises(GpoError, match="cannot reach MLflow") as err:
        Tracker(MlflowParams(tracking_uri="http://127.0.0.1:9"), tmp_path)
    assert "nothing has been run or lost" in str(err.value)
    # the server goes away after the round was evaluated: the evaluation stays, champion.json is not written
    rd = RoundDir(tmp_path / "round-7")
    shutil.copytree(root / "rounds" / "round-1", rd.root)
    for f in (rd.champion, rd.record):
        f.unlink()
    scores = rd.eval / "model_scores.parquet"
    stamp = scores.stat().st_mtime_ns
    prev = read_champion(root / "rounds" / "round-0" / "champion.json")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    try:
        with pytest.raises(GpoError, match="MLflow tracking failed while logging round 7"):
            step_evaluate(7, rd, prev, prompts, scorers, e, 0.0, False, tracker)
    finally:
        mlflow.set_tracking_uri(tracker.uri)
    assert (rd.eval / "summary.json").exists() and not rd.champion.exists()
    step_evaluate(7, rd, prev, prompts, scorers, e, 0.0, False, tracker)  # server back: completes
    assert rd.champion.exists() and scores.stat().st_mtime_ns == stamp  # evaluation reused, not redone


def test_credentials_in_the_tracking_uri_never_reach_messages(tmp_path, monkeypatch):
    """A token in the tracking URI (user:TOKEN@host, ?token=...) is redacted from the error a user sees."""
    from gpo.tracking import redact_uri

    assert redact_uri("https://alice:s3cr3t@mlflow.example/api?token=abc&x=1") == \
        "https://alice:***@mlflow.example/api?token=***&x=1"
    assert redact_uri("sqlite:///mlflow/mlflow.db") == "sqlite:///mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(GpoError, match="cannot reach MLflow") as err:
        Tracker(MlflowParams(tracking_uri="http://alice:s3cr3t@127.0.0.1:9/?token=t0k3n"), tmp_path)
    msg = str(err.value)
    assert "s3cr3t" not in msg and "t0k3n" not in msg and "alice:***@127.0.0.1:9" in msg


def test_an_older_experiment_gets_the_kind_and_a_users_choice_stays(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())
    client.create_experiment("chosen", artifact_location=(tmp_path / "b").as_uri(),
                             tags={EXPERIMENT_KIND_TAG: "finetuning"})
    old = Tracker(MlflowParams(tracking_uri=uri, experiment="old"), tmp_path)
    chosen = Tracker(MlflowParams(tracking_uri=uri, experiment="chosen"), tmp_path)
    assert client.get_experiment(old.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen.experiment_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_predict_defaults_come_from_the_workspace_eval_params(tmp_path):
    from gpo.tracking import predict_defaults

    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "eval.yaml").write_text("eval:\n  steps: 9\n  solver: dpm++\n  precision: fp32\n")
    d = predict_defaults(tmp_path)
    assert (d["steps"], d["solver"], d["precision"]) == (9, "dpm++", "fp32")
    assert predict_defaults(tmp_path / "elsewhere")["steps"] == EvalParams().steps
