"""The per-round stages of dvc.yaml as one function each: params and paths in, gpo/round.py steps out.

`gpo stage STEP --round I` calls `run_stage`; dvc.yaml runs that command; the Prefect flow runs the
DVC stages. Where round I starts is decided here, once: params/run.yaml `rounds.'I'.start` is 'auto'
(the champion after round I−1, from its champion.json) or a registered version pinned by
`gpo promote` / `gpo rollback`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from gpo import params as P
from gpo.errors import GpoError
from gpo.paths import local
from gpo.graph import check_graph
from gpo.round import (RoundDir, batch_index, champion_entry, read_champion, step_base, step_evaluate,
                       step_generate, step_score, step_train)

STAGES = ("base", "generate", "score", "train", "evaluate")
_SCORERS: dict = {}  # Workspace.scorers: the loaded reward models, by settings


@dataclass
class Workspace:
    root: Path
    params: Path  # params folder
    prompts: Path  # data/prompts.jsonl
    rounds: Path  # data/rounds
    calibration: Path  # data/calibration (round 0 = the calibration's evaluation of the base)

    @classmethod
    def default(cls, root: Path, params: Path | None = None) -> "Workspace":
        root = Path(root)
        return cls(root, Path(params) if params else root / "params", root / "data" / "prompts.jsonl",
                   root / "data" / "rounds", root / "data" / "calibration")

    def load(self, name: str):
        return P.load(self.params / name, P.FILES[name])

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    def tracker(self):
        from gpo.tracking import Tracker, flat_params

        return Tracker(self.load("run.yaml").mlflow, self.root,
                       flat_params(self.load("gpo.yaml"), self.load("eval.yaml")))

    def scorers(self):
        """The reward models of params/rewards.yaml. Loaded once per process for the same settings and
        weights file (the flow runs score and evaluate stages in one process: YOLO and EasyOCR load once)."""
        from gpo.evaluate import Scorers
        from gpo.rewards.detector import Detector
        from gpo.rewards.ocr import OcrReader

        r = self.load("rewards.yaml")
        weights = self.resolve(r.detector.weights)
        key = (r.model_dump_json(), str(weights), weights.stat().st_mtime_ns if weights.exists() else None,
               str(self.prompts), self.prompts.stat().st_mtime_ns if self.prompts.exists() else None)
        if key not in _SCORERS:
            # the prompt table is checked up front: every counted object must be a class of the detector
            det = Detector(weights, imgsz=r.detector.imgsz, conf=r.detector.conf,
                           prompts_file=self.prompts if self.prompts.exists() else None)
            _SCORERS.clear()  # keep one set of reward models in memory
            _SCORERS[key] = Scorers(counting=det, text=OcrReader(r.ocr.languages, r.ocr.upscale),
                                    max_failed_share=r.max_failed_share)
        return _SCORERS[key]

    def prompt_table(self):
        from gpo.prompts import read_prompts

        return read_prompts(self.prompts)


def start_champion(ws: Workspace, index: int, tracker=None) -> dict:
    """The champion record round `index` starts from (model path + its held-out summary)."""
    run = ws.load("run.yaml")
    entry = run.rounds.get(str(index))
    if entry is None:
        raise GpoError(f"round {index} is not listed", file=str(ws.params / "run.yaml"), field="rounds",
                       fix=f"add  '{index}': {{prev: {index - 1}, start: auto}}  (or `gpo rounds --set {index}`)")
    if entry.start == "auto":
        return read_champion(ws.rounds / f"round-{entry.prev}" / "champion.json")
    tracker = tracker or ws.tracker()
    version = int(entry.start)
    model = tracker.version_path(version)
    mv = tracker.client.get_model_version(tracker.p.model_name, str(version))
    summary_file = local(mv.tags.get("summary_path", "")) if mv.tags.get("summary_path") else Path("")
    if not summary_file.exists():
        raise GpoError(f"the evaluation of registered version {version} is not on disk", file=str(summary_file),
                       field=f"rounds.'{index}'.start", fix="pull the round's outputs (`dvc pull`) or pin another version")
    return champion_entry(int(mv.tags.get("round", -1)), model, json.loads(summary_file.read_text()), version)


def run_stage(step: str, index: int, ws: Workspace, progress: bool = True, track: bool = True,
              iteration: int | None = None) -> dict:
    """Run one stage (generate, score, train: of one iteration, default 1); returns a small JSON-able report."""
    if step not in STAGES:
        raise GpoError(f"unknown stage {step!r}", field="STEP", fix=f"one of {', '.join(STAGES)}")
    tracker = ws.tracker() if track and step in ("base", "evaluate") else None
    if step == "base":
        cal = ws.calibration / "calibration.json"
        if not cal.exists():
            raise GpoError("the base model's calibration is missing", file=str(cal), fix="run `dvc repro calibrate`")
        base = ws.resolve(ws.load("models.yaml").base)
        rd0 = RoundDir(ws.rounds / "round-0")
        for grid in ws.calibration.glob("base_*_grid.png"):  # the base's sample grids, named like a round's
            rd0.eval.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, rd0.eval / grid.name.replace("base_", "model_"))
        champion = step_base(base, rd0, json.loads(cal.read_text())["base_model"], tracker)
        return {"round": 0, "headline": champion["headline"], "version": champion["version"]}
    if index < 1:
        raise GpoError("round numbers start at 1 (round 0 is the base stage)", field="--round", value=index,
                       fix="pass 1 or more")
    cfg = ws.load("gpo.yaml")
    n = cfg.groups.iterations
    rd = RoundDir(ws.rounds / f"round-{index}", n)
    check_graph(ws.params)  # the DVC graph was templated from these very params
    family = ws.load("models.yaml").family  # checked against every pipeline folder the round loads
    if step in ("generate", "score", "train"):
        j = iteration or 1
        if not 1 <= j <= n:
            raise GpoError(f"round {index} has {n} iteration(s)", field="--iteration", value=j,
                           fix=f"pass 1..{n} (params/gpo.yaml groups.iterations)")
        part = rd.parts[j - 1]
        # iteration 1 starts from the champion; iteration J from iteration J−1's model (also its reference,
        # unless train.reference: round makes the champion every iteration's reference)
        needs_champion = j == 1 or (step == "train" and cfg.train.reference == "round")
        round_start = local(start_champion(ws, index)["model"]) if needs_champion else None
        start = round_start if j == 1 else rd.parts[j - 2].model
        report = {"round": index, "iteration": j}
        if step == "generate":
            table = step_generate(batch_index(index, j, n), start, part, ws.prompt_table(), cfg, progress,
                                  family=family)
            return {**report, "images": len(table), "start_model": str(start)}
        if step == "score":
            rewards = step_score(part, ws.scorers())
            return {**report, "mean_reward": float(rewards["reward"].mean()),
                    "dropped_groups": int(rewards.groupby("group")["dropped"].first().sum())}
        return {**report, "model": str(step_train(start, part, cfg, progress, family=family,
                                                  chain_batch=batch_index(index, j, n), round_start=round_start))}
    prev = start_champion(ws, index, tracker)
    champion, decision = step_evaluate(index, rd, prev, ws.prompt_table(), ws.scorers(), ws.load("eval.yaml").eval,
                                       ws.load("run.yaml").promotion.z, progress, tracker, family=family)
    return {"round": index, "champion_round": champion["round"], "promoted": decision.promote,
            "reason": decision.reason}


def pin_next_round(ws: Workspace, version: int) -> str:
    """After a manual promotion: the first round without a champion.json starts from `version`."""
    run = ws.load("run.yaml")
    i = 1
    while (ws.rounds / f"round-{i}" / "champion.json").exists():
        i += 1
    if str(i) not in run.rounds:
        run = run.with_rounds(i)
    rounds = dict(run.rounds)
    rounds[str(i)] = rounds[str(i)].model_copy(update={"start": str(version)})
    P.save(ws.params / "run.yaml", run.model_copy(update={"rounds": rounds}))  # rewrites graph.yaml too
    return str(i)


def apply_overrides(ws: Workspace, overrides: dict[str, object]) -> list[str]:
    """Set params like `dvc exp run -S`: {"gpo.yaml:train.lr": 1e-4}. Each file is validated, then written
    atomically with its comments; returns the changed keys. DVC then re-runs exactly what depends on them."""
    by_file: dict[str, dict[str, object]] = {}
    for key, value in overrides.items():
        name, sep, dotted = key.partition(":")
        name = name.removeprefix("params/")  # `dvc exp run -S params/gpo.yaml:train.lr=...` spelling too
        if not sep or name not in P.FILES or not dotted:
            raise GpoError("override keys are 'FILE:section.key'", field=key, value=value,
                           fix=f"e.g. 'gpo.yaml:train.lr'; FILE is one of {', '.join(P.FILES)}")
        by_file.setdefault(name, {})[dotted] = value
    changed = []
    for name, items in by_file.items():
        data = ws.load(name).model_dump()
        for dotted, value in items.items():
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise GpoError("no such section", file=str(ws.params / name), field=dotted,
                                   fix=f"sections here: {sorted(k for k, v in data.items() if isinstance(v, dict))}")
                node = node[part]
            if leaf not in node:
                raise GpoError("no such key", file=str(ws.params / name), field=dotted, fix=f"keys here: {sorted(node)}")
            node[leaf] = value
            changed.append(f"{name}:{dotted}")
        import yaml

        tmp = yaml.safe_dump(data)
        obj = P.load_text(tmp, P.FILES[name], ws.params / name)
        P.save(ws.params / name, obj)
    return changed
