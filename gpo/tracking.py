"""MLflow: one run per round (params, per-step training metrics, held-out metrics with interval bounds,
grids and reward histograms, tags to git/DVC), every round's model a registered version, and the alias
`champion` that moves only by the promotion rule or by hand (`gpo promote` / `gpo rollback`).

A registered version is a pyfunc model logged "from code" (gpo/mlflow_model.py, MLflow 3's recommended
form: nothing in the model is a pickle) whose artifact is the diffusers pipeline folder (safetensors):
    mlflow.pyfunc.load_model("models:/gpo-embedded@champion").predict(["three red circles"])
returns one PIL image per prompt. Every version carries the promotion decision (tags `promoted`,
`decision_reason`, headline vs champion; the same in words as its description).

A round's run spans the round's steps: it starts when the round's first step started and ends when
its logging is done (the steps' times come from their timing files, `step_times`), so the run's
duration and the experiment's timeline show the round, not the seconds of logging.

The experiment is tagged as a machine-learning experiment (`mlflow.experimentKind`), so MLflow 3's UI
opens it on its training runs instead of the GenAI overview (traces).

Logging a round is idempotent: every run carries a `log_key` tag (round, model folder, evaluation summary,
decision). A process killed while logging leaves either a run without a version (it is marked KILLED and
a new run logs the round) or a registered version (it is reused: tags and alias are completed), so a
re-run never registers a second version for the same evaluation and moves the alias at most once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import pandas as pd

from gpo.errors import GpoError
from gpo.params import MlflowParams
from gpo.paths import local, portable

ALIAS = "champion"
# MLflow 3's experiment type, read by its UI (mlflow/server/js: an experiment whose `mlflow.experimentKind` is
# not genai_development opens on the Runs tab; "custom_model_development" is the UI's "Machine learning"
# choice). Without it the UI guesses, and an experiment with logged models opens on the GenAI overview.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description MLflow shows for an experiment or a run
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the registered model's code (models from code)
MODEL_ARTIFACT = "pipeline"  # the model's artifact key of the diffusers folder
HISTORY_TAG = "champion_history"  # registered-model tag: JSON list of alias moves (version, reason, time)
KEY_TAG = "log_key"  # run tag: what this run logs (see `log_key`); a re-run finds its earlier attempt by it
FAULT_ENV = "GPO_FAULT_AT"


def fault_point(name: str) -> None:
    """Test seam of the fault-injection suite (tests/test_faults_registry.py): when the environment variable
    GPO_FAULT_AT equals `name`, this process sends itself SIGKILL here, exactly what a `kill -9` from outside
    does at that instant. Points: `tracking:run-started` (a run exists, nothing registered),
    `tracking:registered` (a version exists, not yet tagged, alias not moved), `tracking:logged` (all of
    MLflow done, round.json and champion.json not yet written). Unset (always, outside those tests): no-op."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def log_key(index: int, model: Path, summary: dict, decision: Optional[dict]) -> str:
    """What one logging of a round is: the round, its model folder, the evaluation summary (it holds the
    evaluation's own timings, so a new evaluation is a new key) and the promotion decision."""
    blob = json.dumps({"round": index, "model": portable(model), "summary": summary, "decision": decision},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def predict_defaults(workspace: Optional[Path] = None) -> dict:
    """What the registered model's predict uses where `params` says nothing: seed 0 and the evaluation's
    sampler settings — the workspace's params/eval.yaml when logging (they go into the model's signature),
    else gpo.params.EvalParams' defaults — so a loaded champion samples as it was evaluated."""
    from gpo.params import EvalFile, EvalParams, load

    path = None if workspace is None else Path(workspace) / "params" / "eval.yaml"
    e = load(path, EvalFile).eval if path is not None and path.exists() else EvalParams()
    return {"seed": 0, "steps": int(e.steps), "guidance_scale": float(e.guidance_scale), "solver": e.solver,
            "precision": e.precision}


def model_signature(workspace: Optional[Path] = None):
    """Input: the prompts (strings); params: seed, steps, guidance_scale, solver, precision with predict's
    defaults (`predict_defaults` of the workspace)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    d = predict_defaults(workspace)
    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec("seed", "long", d["seed"]), ParamSpec("steps", "long", d["steps"]),
                                              ParamSpec("guidance_scale", "double", d["guidance_scale"]),
                                              ParamSpec("solver", "string", d["solver"]),
                                              ParamSpec("precision", "string", d["precision"])]))


def step_times(rd) -> list[dict]:
    """When each of the round's steps ran: step, iteration (semi-online rounds), start, end (Unix seconds),
    seconds. A step's timing file (round.RoundDir.timing) is written as the step ends and holds its
    seconds, so its modification time is the end and end − seconds the start. Steps without a file
    (round 0, the base) are absent."""
    out = []
    for step in ("generate", "score", "train", "evaluate"):
        parts = rd.parts if step != "evaluate" else [rd]
        for j, part in enumerate(parts, start=1):
            f = part.timing(step)
            if f is None:
                continue
            end, seconds = f.stat().st_mtime, float(json.loads(f.read_text())["seconds"])
            out.append({"step": step, "iteration": j if len(parts) > 1 else None, "start": end - seconds,
                        "end": end, "seconds": seconds})
    return sorted(out, key=lambda t: t["start"])


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def decision_tags(index: int, record: dict, promoted: bool) -> dict[str, str]:
    """The promotion decision as model-version tags: promoted or not, why, and the headline numbers
    against the champion the round was compared with (round 0, the base: the first champion)."""
    m = record.get("metrics", {})
    tags = {"promoted": str(promoted), "headline": f"{record['headline']:.4f}"}
    for k in ("counting_heldout_accuracy", "text_heldout_mean_reward", "text_heldout_accuracy"):
        if k in m:
            tags[k] = f"{m[k]:.4f} [{m[k + '_low']:.4f}, {m[k + '_high']:.4f}]"
    d = record.get("decision")
    if not d:
        tags["decision_reason"] = "base model: the first champion (nothing to compare with)"
        return tags
    tags.update({"decision_reason": d["reason"], "champion_headline": f"{record['headline'] - d['gain']:.4f}",
                 "headline_gain": f"{d['gain']:+.4f}", "promotion_threshold": f"{d['threshold']:.4f}",
                 "flagged": str(bool(d.get("flagged", False)))})
    if record.get("previous_champion_round") is not None:
        tags["compared_with_round"] = str(record["previous_champion_round"])
    return tags


def decision_text(index: int, record: dict, promoted: bool) -> str:
    """The decision in words: the registered version's description and the run's note."""
    m, d = record.get("metrics", {}), record.get("decision")

    def ci(k, label):
        return f"{label} {m[k]:.3f} [{m[k + '_low']:.3f}, {m[k + '_high']:.3f}]" if k in m else None

    numbers = "; ".join(x for x in (ci("counting_heldout_accuracy", "counting accuracy"),
                                    ci("text_heldout_mean_reward", "OCR mean reward"),
                                    ci("text_heldout_accuracy", "OCR exact")) if x)
    if not d:
        head = f"Round {index} (the base model): the first champion."
    else:
        champ = record["headline"] - d["gain"]
        verdict = "PROMOTED: the new champion" if promoted else \
            f"NOT PROMOTED: the champion of round {record.get('previous_champion_round')} stays"
        sign = ">" if d["gain"] > d["threshold"] else "<="
        head = (f"Round {index}: {verdict}. Headline {record['headline']:.4f} vs champion {champ:.4f}: gain "
                f"{d['gain']:+.4f} {sign} threshold {d['threshold']:.4f}"
                f"{'; flagged by the second opinion' if d.get('flagged') else ''}. Reason: {d['reason']}.")
    return f"{head}\n\nHeld-out: {numbers}." if numbers else head


def flat_params(*files) -> dict[str, str]:
    """`section.key` → value of params file objects (gpo.yaml, eval.yaml), as MLflow params."""
    out = {}
    for f in files:
        for section, values in f.model_dump().items():
            for k, v in (values.items() if isinstance(values, dict) else [("value", values)]):
                out[f"{section}.{k}"] = str(v)[:250]
    return out


_SECRET_KEYS = ("token", "key", "secret", "password", "passwd", "sig", "signature", "credential", "auth")


def redact_uri(uri: str) -> str:
    """The URI with any password in it and any secret-looking query value replaced by ***: what
    messages and logs may show of a tracking URI such as https://user:TOKEN@host/?token=..."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    secret_query = any(any(w in k.lower() for w in _SECRET_KEYS) for k, _ in parse_qsl(parts.query))
    if "@" not in parts.netloc and not secret_query:
        return uri  # nothing to hide (and sqlite:///relative paths stay as written)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = urlencode([(k, "***" if any(w in k.lower() for w in _SECRET_KEYS) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _scrub(text: str, uri: str) -> str:
    """`text` (e.g. an exception message) with the URI's secrets removed wherever they appear."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return text
    secrets = [parts.password] if parts.password else []
    secrets += [v for k, v in parse_qsl(parts.query) if v and any(w in k.lower() for w in _SECRET_KEYS)]
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest() if path.exists() else "none"


class Tracker:
    def __init__(self, p: MlflowParams, workspace: Path, run_params: Optional[dict] = None):
        """`run_params`: the settings logged as params of every run (see `flat_params`)."""
        import mlflow

        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.p, self.root, self.run_params = p, Path(workspace), run_params or {}
        self.last_run: Optional[tuple[str, str]] = None  # (experiment id, run id) of the last log_round
        uri = p.tracking_uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            db = self.root / uri.removeprefix("sqlite:///")
            db.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{db}"
        self.uri = uri
        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(uri, uri)
        try:  # reach the store before touching mlflow's process-wide URIs
            exp = self.client.get_experiment_by_name(p.experiment)
        except Exception as err:  # noqa: BLE001 - unreachable server, bad URI
            raise GpoError(f"cannot reach MLflow: {type(err).__name__}: {_scrub(str(err), uri)[:300]}",
                           field="mlflow.tracking_uri (params/run.yaml)", value=redact_uri(uri),
                           fix="start the server (`make mlflow-ui` serves the local store) or fix the URI; "
                               "nothing has been run or lost") from None
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        if exp is None:
            art = Path(p.artifact_root)
            art = art if art.is_absolute() else self.root / art
            art.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(p.experiment, artifact_location=art.as_uri(), tags={
                EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
                NOTE_TAG: "gpo: one run per self-improvement round (held-out metrics, training curves, grids of "
                          "asked vs found); every round's model is a version of the registered model "
                          f"`{p.model_name}`, the alias `{ALIAS}` on the best so far."})
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment from before the tag (a user's own choice stays)
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    # --- one round ---------------------------------------------------------------------------------
    def log_round(self, index: int, rd, record: dict, summary: dict, promoted: bool,
                  model: Optional[Path] = None) -> int:
        """Log round `index` (its folder `rd`, a round.RoundDir); register its model; move the alias if promoted.
        Returns the registered version number. A tracking failure is one GpoError; the round's files stay."""
        try:
            return self._log_round(index, rd, record, summary, promoted, model)
        except GpoError:
            raise
        except Exception as err:  # noqa: BLE001 - server down, db locked, disk full: say so, keep data/
            raise GpoError(f"MLflow tracking failed while logging round {index}: {type(err).__name__}: "
                           f"{_scrub(str(err), self.uri)[:300]}", field="mlflow.tracking_uri (params/run.yaml)",
                           value=redact_uri(self.uri),
                           fix=f"bring the tracking server back (or fix the URI) and re-run the evaluate step: "
                               f"the evaluation already written in {rd.eval} is reused, not recomputed") from None

    def _log_round(self, index: int, rd, record: dict, summary: dict, promoted: bool,
                   model: Optional[Path] = None) -> int:
        model = Path(model or rd.model)
        key = log_key(index, model, summary, record.get("decision"))
        run_id, version = self._earlier_attempt(key)
        if version is None:
            run_id, version = self._new_run(index, rd, record, model, promoted, key)
        self.last_run = (self.experiment_id, run_id)
        name = self.p.model_name
        tags = {"round": str(index), "pipeline_path": portable(model), "run_id": run_id,
                "summary_path": portable(rd.eval / "summary.json"), **decision_tags(index, record, promoted)}
        for tag, value in tags.items():
            self.client.set_model_version_tag(name, str(version), tag, value)
        text = decision_text(index, record, promoted)
        self.client.update_model_version(name, str(version), description=text)
        self.client.set_tag(run_id, NOTE_TAG, text)
        if promoted:
            self._move_alias(version, record["decision"]["reason"] if record.get("decision") else "base model",
                             by="rule", once=True)
        fault_point("tracking:logged")
        return version

    def _earlier_attempt(self, key: str) -> tuple[Optional[str], Optional[int]]:
        """(run id, version) of an earlier logging of this very key that registered its model, else
        (None, None). Earlier attempts that died before registering are marked KILLED (kept, for the record)."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.{KEY_TAG} = '{key}'")
        found: tuple[Optional[str], Optional[int]] = (None, None)
        for run in sorted(runs, key=lambda r: r.info.start_time):
            versions = self.client.search_model_versions(f"name = '{self.p.model_name}' and run_id = '{run.info.run_id}'")
            if versions and found[1] is None:
                found = (run.info.run_id, min(int(v.version) for v in versions))
                if run.info.status != "FINISHED":  # killed after registering: its logging is complete
                    self.client.set_terminated(run.info.run_id, "FINISHED")
            elif not versions and run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "interrupted", "the process died before registering the model")
                self.client.set_terminated(run.info.run_id, "KILLED")
        return found

    def _new_run(self, index: int, rd, record: dict, model: Path, promoted: bool, key: str) -> tuple[str, int]:
        """A run from the round's first step to the end of its logging (round 0: the logging alone)."""
        from mlflow.models import set_signature
        from mlflow.tracking.context.registry import resolve_tags

        mlflow = self.mlflow
        steps = step_times(rd)
        start = min([t["start"] for t in steps] + [time.time()])
        tags = resolve_tags({"round": str(index), "git_commit": _git_commit(self.root),
                             "dvc_lock_md5": _file_md5(self.root / "dvc.lock"), "promoted": str(promoted),
                             "model_path": portable(model), KEY_TAG: key,
                             # the loss arm and seeds: what a comparison of runs (gpo study) is browsed by
                             **{tag: self.run_params[k] for tag, k in (("arm", "train.arm"), ("seed", "train.seed"),
                                                                       ("groups_seed", "groups.seed"))
                                if k in self.run_params}})
        created = self.client.create_run(self.experiment_id, start_time=int(start * 1000), tags=tags,
                                         run_name=f"round-{index}")
        with mlflow.start_run(run_id=created.info.run_id) as run:
            fault_point("tracking:run-started")
            mlflow.log_params(self._params(index, record))
            for row in rd.train_log():  # every iteration's steps of a semi-online round, counted on
                mlflow.log_metrics({f"train/{k}": float(row[k]) for k in
                                    ("loss", "implicit_accuracy", "reward_margin", "dropped_group_share")},
                                   step=int(row["step"]))
            mlflow.log_metrics({f"eval/{k}": float(v) for k, v in record["metrics"].items()})
            mlflow.log_metrics({f"seconds/{k}": float(v) for k, v in record["seconds"].items()})
            mlflow.log_dict([{**t, "start": _utc(t["start"]), "end": _utc(t["end"])} for t in steps], "timeline.json")
            for png in sorted(rd.eval.glob("*_grid.png")):
                mlflow.log_artifact(str(png), artifact_path="grids")
            scores = rd.eval / "model_scores.parquet"
            if scores.exists():
                mlflow.log_figure(reward_histogram(pd.read_parquet(scores), f"round {index}"),
                                  "plots/reward_histogram.png")
            mlflow.log_text(json.dumps(record, indent=1, default=str), "round.json")
            # models from code: the model is gpo/mlflow_model.py (copied into the model) + the diffusers
            # folder; no cloudpickle. The signature adds the params schema the type hints cannot give.
            info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                           artifacts={MODEL_ARTIFACT: str(model)}, pip_requirements=["gpo"])
            set_signature(info.model_uri, model_signature(self.root))
            version = mlflow.register_model(info.model_uri, self.p.model_name).version
            fault_point("tracking:registered")
            return run.info.run_id, int(version)

    def _params(self, index: int, record: dict) -> dict:
        return {"round": index, "model_in": record.get("model_in") or "", "model_out": record["model_out"],
                **self.run_params}

    # --- the champion alias ----------------------------------------------------------------------
    def history(self) -> list[dict]:
        """Every move of the alias: version, reason, by (rule | hand), time."""
        tags = self.client.get_registered_model(self.p.model_name).tags
        return json.loads(tags.get(HISTORY_TAG, "[]"))

    def _move_alias(self, version: int, reason: str, by: str, once: bool = False) -> None:
        """Record the move in the history, then move the alias. `once`: a repeat of the newest recorded move
        (a re-run after a kill) only completes it: no second history entry."""
        history = self.history()
        last = history[-1] if history else {}
        if not (once and last.get("version") == int(version) and last.get("reason") == reason and last.get("by") == by):
            history.append({"version": int(version), "reason": reason, "by": by,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            self.client.set_registered_model_tag(self.p.model_name, HISTORY_TAG, json.dumps(history))
        if self.champion() != int(version):
            self.client.set_registered_model_alias(self.p.model_name, ALIAS, str(version))
        self.client.set_model_version_tag(self.p.model_name, str(version), "champion_reason", reason)

    def champion(self) -> Optional[int]:
        try:
            return int(self.client.get_model_version_by_alias(self.p.model_name, ALIAS).version)
        except self.mlflow.exceptions.MlflowException:
            return None

    def promote(self, version: int, reason: str) -> None:
        """Make `version` the champion by hand; the reason is recorded on the version and in the history."""
        self._check_version(version)
        if not reason.strip():
            raise GpoError("a promotion needs a reason", field="--reason", fix="say why, e.g. --reason 'grids look better'")
        self._move_alias(version, reason, by="hand")

    def rollback(self, reason: str) -> int:
        """Move the champion back to the one before it in the history; returns that version."""
        history = self.history()
        current = self.champion()
        earlier = [h["version"] for h in history if h["version"] != current]
        if not earlier:
            raise GpoError("no earlier champion to roll back to", field=f"registered model {self.p.model_name}",
                           fix="promote a version by hand with `gpo promote VERSION --reason ...`")
        target = earlier[-1]
        self._move_alias(target, f"rollback from {current}: {reason}", by="hand")
        return target

    def _check_version(self, version: int) -> None:
        try:
            self.client.get_model_version(self.p.model_name, str(version))
        except self.mlflow.exceptions.MlflowException:
            raise GpoError(f"registered model {self.p.model_name!r} has no version {version}", field="VERSION",
                           value=version, fix="list versions in the MLflow UI or with `gpo champion`") from None

    def version_path(self, version: int) -> Path:
        """The local pipeline folder of a registered version (its DVC output path, else the MLflow copy)."""
        self._check_version(version)
        mv = self.client.get_model_version(self.p.model_name, str(version))
        path = local(mv.tags["pipeline_path"]) if mv.tags.get("pipeline_path") else None
        if path is not None and (path / "model_index.json").exists():
            return path
        return self.downloaded_pipeline(version)

    def downloaded_pipeline(self, version: int) -> Path:
        """The pipeline folder of a registered version, downloaded from the registry (its artifact)."""
        import yaml
        from mlflow.artifacts import download_artifacts

        root = Path(download_artifacts(f"models:/{self.p.model_name}/{version}"))
        conf = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
        return root / conf["artifacts"][MODEL_ARTIFACT]["path"]


def reward_histogram(table: pd.DataFrame, title: str):
    """Held-out reward histograms, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, task in zip(axes, ("counting", "text")):
        r = table.loc[(table.task == task) & (table.split == "heldout"), "reward"]
        ax.hist(r, bins=11, range=(0, 1))
        ax.set_title(f"{title}: {task} (n={len(r)}, mean {r.mean():.3f})")
        ax.set_xlabel("reward")
    fig.tight_layout()
    return fig
