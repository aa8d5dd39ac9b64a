"""Orchestration overhead: one GPO round through Prefect + DVC + MLflow vs the same round's step
functions called directly, on the same params, prompts, base and seeds.

Both start from a copy of this workspace's curated prompts and calibration (recorded into DVC with
`dvc commit`, so neither side pays for calibration). Timed:
  orchestrated: the flow `gpo-self-improve` for 1 round (stage checks, base stage + MLflow, the four
                round stages as `dvc repro --single-item` subprocesses, MLflow run + registered version,
                the report stage and Prefect artifacts);
  direct:       gpo.round.step_base + run_round in one process, no tracker.
overhead share = (orchestrated − direct) / orchestrated. Writes JSON + a markdown table.

    python benchmarks/orchestration_overhead.py [--rounds-params gpo.yaml overrides as -S FILE:KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GPO_WORKSPACE": str(cwd), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def make_workspace(dest: Path, overrides: dict) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in ("gpo", "flows", "release", "params"):
        shutil.copytree(ROOT / item, dest / item,
                        ignore=shutil.ignore_patterns("__pycache__", "dvc.yaml", "dvc.lock"))
    for item in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / item, dest / item)
    (dest / "data").mkdir()
    shutil.copy(ROOT / "data" / "prompts.jsonl", dest / "data" / "prompts.jsonl")
    shutil.copytree(ROOT / "data" / "calibration", dest / "data" / "calibration")
    (dest / "data" / "metrics").mkdir()
    shutil.copy(ROOT / "data" / "metrics" / "calibration.json", dest / "data" / "metrics" / "calibration.json")
    from gpo import params as P
    from gpo.stages import Workspace, apply_overrides

    ws = Workspace.default(dest)
    P.save(dest / "params" / "run.yaml", ws.load("run.yaml").with_rounds(1))
    if overrides:
        apply_overrides(ws, overrides)
    sh(dest, "git", "init", "-q")
    sh(dest, "dvc", "init", "-q")
    sh(dest, "dvc", "config", "core.analytics", "false")
    sh(dest, "dvc", "commit", "-f", "prompts", "calibrate")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", "--set", action="append", default=[], metavar="FILE:KEY=VALUE")
    ap.add_argument("--scratch", type=Path, default=ROOT / ".cache" / "bench-overhead")
    a = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}

    orch = make_workspace(a.scratch / "orchestrated", overrides)
    t0 = time.time()
    sh(orch, sys.executable, "-m", "flows.self_improve", "run", "--rounds", "1")
    t_orch = time.time() - t0
    stage_seconds = json.loads((orch / "data/rounds/round-1/eval/round.json").read_text())["seconds"]

    direct = make_workspace(a.scratch / "direct", overrides)
    code = ("import json,time,sys;from pathlib import Path;from gpo.stages import Workspace;"
            "from gpo.round import RoundDir,step_base,run_round;"
            f"ws=Workspace.default(Path({str(direct)!r}));t=time.time();"
            "c=step_base(ws.resolve(ws.load('models.yaml').base),RoundDir(ws.rounds/'round-0'),"
            "json.loads((ws.calibration/'calibration.json').read_text())['base_model']);"
            "run_round(1,c,ws.rounds/'round-1',ws.prompt_table(),ws.load('gpo.yaml'),ws.load('eval.yaml').eval,"
            "ws.scorers(),ws.load('run.yaml').promotion.z,progress=False);print(time.time()-t)")
    t0 = time.time()
    inner = float(sh(direct, sys.executable, "-c", code).strip().splitlines()[-1])
    t_direct = time.time() - t0
    same = (json.loads((orch / "data/rounds/round-1/metrics.json").read_text())
            == json.loads((direct / "data/rounds/round-1/metrics.json").read_text()))
    row = {"orchestrated_s": round(t_orch, 1), "direct_s": round(t_direct, 1), "direct_inner_s": round(inner, 1),
           "overhead_s": round(t_orch - t_direct, 1), "overhead_share": round((t_orch - t_direct) / t_orch, 4),
           "round_stage_seconds": stage_seconds, "same_metrics": same, "overrides": a.set,
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "orchestration_overhead.json").write_text(json.dumps(row, indent=1) + "\n")
    md = ["| orchestrated (Prefect+DVC+MLflow) s | direct s | overhead s | overhead share | same metrics |",
          "|---|---|---|---|---|",
          f"| {row['orchestrated_s']} | {row['direct_s']} | {row['overhead_s']} | {100 * row['overhead_share']:.1f}% | "
          f"{same} |", "", f"round stage seconds (orchestrated): {stage_seconds}; overrides: {a.set or 'none'}"]
    (RESULTS / "orchestration_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
