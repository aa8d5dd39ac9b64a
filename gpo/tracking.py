"""MLflow: one run per round (params, per-step training metrics, held-out metrics with interval bounds,
grids and reward histograms, tags to git/DVC), every round's model a registered version, and the alias
`champion` that moves only by the promotion rule or by hand (`gpo promote` / `gpo rollback`).

A registered version is a pyfunc model whose artifact is the diffusers pipeline folder:
    mlflow.pyfunc.load_model("models:/gpo-embedded@champion").predict(["three red circles"])
returns one PIL image per prompt.

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


def _pyfunc_class():
    """The pyfunc wrapper, defined lazily (importing mlflow.pyfunc is slow)."""
    import mlflow.pyfunc

    class GpoPipeline(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from gpo.model.adapters import load_any

            self.pipe = load_any(Path(context.artifacts["pipeline"]))

        def predict(self, context, model_input, params: Optional[dict] = None):
            from gpo.generate import generate

            prompts = list(model_input["prompt"]) if isinstance(model_input, pd.DataFrame) else list(model_input)
            p = params or {}
            seeds = [int(p.get("seed", 0)) + i for i in range(len(prompts))]
            return generate(self.pipe, prompts, seeds, steps=int(p.get("steps", 10)),
                            guidance_scale=float(p.get("guidance_scale", 3.0)), batch_size=32, progress=False)

    return GpoPipeline


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
            self.experiment_id = self.client.create_experiment(p.experiment, artifact_location=art.as_uri())
        else:
            self.experiment_id = exp.experiment_id

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
        for tag, value in (("round", str(index)), ("pipeline_path", portable(model)), ("run_id", run_id),
                           ("summary_path", portable(rd.eval / "summary.json"))):
            self.client.set_model_version_tag(name, str(version), tag, value)
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
        mlflow = self.mlflow
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=f"round-{index}") as run:
            mlflow.set_tags({"round": str(index), "git_commit": _git_commit(self.root),
                             "dvc_lock_md5": _file_md5(self.root / "dvc.lock"), "promoted": str(promoted),
                             "model_path": portable(model), KEY_TAG: key})
            fault_point("tracking:run-started")
            mlflow.log_params(self._params(index, record))
            for row in rd.train_log():  # every iteration's steps of a semi-online round, counted on
                mlflow.log_metrics({f"train/{k}": float(row[k]) for k in
                                    ("loss", "implicit_accuracy", "reward_margin", "dropped_group_share")},
                                   step=int(row["step"]))
            mlflow.log_metrics({f"eval/{k}": float(v) for k, v in record["metrics"].items()})
            mlflow.log_metrics({f"seconds/{k}": float(v) for k, v in record["seconds"].items()})
            for png in sorted(rd.eval.glob("*_grid.png")):
                mlflow.log_artifact(str(png), artifact_path="grids")
            scores = rd.eval / "model_scores.parquet"
            if scores.exists():
                mlflow.log_figure(reward_histogram(pd.read_parquet(scores), f"round {index}"),
                                  "plots/reward_histogram.png")
            mlflow.log_text(json.dumps(record, indent=1, default=str), "round.json")
            info = mlflow.pyfunc.log_model(name="model", python_model=_pyfunc_class()(),
                                           artifacts={"pipeline": str(model)}, pip_requirements=["gpo"],
                                           registered_model_name=self.p.model_name)
            fault_point("tracking:registered")
            return run.info.run_id, int(info.registered_model_version)

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
        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(f"models:/{self.p.model_name}/{version}")) / "artifacts" / "pipeline"


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
