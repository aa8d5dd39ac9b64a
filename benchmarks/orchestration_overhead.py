"""Orchestration overhead: one GPO round through Prefect + DVC + MLflow vs the same round's step
functions called directly, on the same params, prompts, base and seeds.

Both start from a copy of this workspace's curated prompts and calibration (recorded into DVC with
`dvc commit`, so neither side pays for calibration). Timed:
  orchestrated: the flow `gpo-self-improve` for 1 round (stage checks, base stage + MLflow, the four
                round stages brought up to date through DVC with their `gpo` command in the flow's
                process (flows/dvc_stage.py), MLflow run + registered version, the report stage and
                Prefect artifacts, the temporary Prefect API);
  direct:       gpo.round.step_base + run_round in one process, no tracker.
Each side is a fresh Python process. `--repeats N` alternates direct and orchestrated N times (fresh
workspaces each time) and reports medians of wall time and of CPU time (user+sys of the process
tree: less sensitive than wall time to other work on a shared machine).
overhead share = (orchestrated − direct) / orchestrated. Writes JSON + a markdown table.

    python benchmarks/orchestration_overhead.py [--rounds-params gpo.yaml overrides as -S FILE:KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gpo.round import read_record

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


def markdown(row: dict) -> str:
    """The table of a result (medians, then every pair in the order run)."""
    md = [f"Medians of {row['repeats']} alternating pairs (1 round, default params unless overridden).", "",
          "| measure | orchestrated (Prefect+DVC+MLflow) | direct | overhead | overhead share | same metrics |",
          "|---|---|---|---|---|---|",
          f"| wall s | {row['orchestrated_s']} | {row['direct_s']} | {row['overhead_s']} | "
          f"{100 * row['overhead_share']:.1f}% | {row['same_metrics']} |",
          f"| CPU s (user+sys) | {row['orchestrated_cpu_s']} | {row['direct_cpu_s']} | {row['overhead_cpu_s']} | "
          f"{100 * row['overhead_cpu_share']:.1f}% | |", "",
          "| pair | direct wall s | orchestrated wall s | wall overhead | direct CPU s | orchestrated CPU s | CPU overhead |",
          "|---|---|---|---|---|---|---|"]
    for i, (d, o) in enumerate(zip(row["runs"]["direct"], row["runs"]["orchestrated"]), start=1):
        md.append(f"| {i} | {d['wall_s']} | {o['wall_s']} | {100 * (o['wall_s'] - d['wall_s']) / o['wall_s']:.1f}% | "
                  f"{d['cpu_s']} | {o['cpu_s']} | {100 * (o['cpu_s'] - d['cpu_s']) / o['cpu_s']:.1f}% |")
    md += ["", f"round stage seconds (orchestrated, last run): {row['round_stage_seconds']}; "
               f"overrides: {row['overrides'] or 'none'}"]
    if row.get("note"):
        md += ["", row["note"]]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", "--set", action="append", default=[], metavar="FILE:KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=1, help="alternating direct/orchestrated pairs (medians)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the markdown from results/orchestration_overhead.json (e.g. after adding a note)")
    ap.add_argument("--scratch", type=Path, default=ROOT / ".cache" / "bench-overhead")
    a = ap.parse_args()
    if a.report_only:
        row = json.loads((RESULTS / "orchestration_overhead.json").read_text())
        (RESULTS / "orchestration_overhead.md").write_text(markdown(row))
        return
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}

    code = ("import json,time,sys;from pathlib import Path;from gpo.stages import Workspace;"
            "from gpo.round import RoundDir,step_base,run_round;"
            "ws=Workspace.default(Path(sys.argv[1]));"
            "c=step_base(ws.resolve(ws.load('models.yaml').base),RoundDir(ws.rounds/'round-0'),"
            "json.loads((ws.calibration/'calibration.json').read_text())['base_model']);"
            "run_round(1,c,ws.rounds/'round-1',ws.prompt_table(),ws.load('gpo.yaml'),ws.load('eval.yaml').eval,"
            "ws.scorers(),ws.load('run.yaml').promotion.z,progress=False)")
    runs = {"direct": [], "orchestrated": []}
    for _ in range(a.repeats):
        for side in ("direct", "orchestrated"):
            ws = make_workspace(a.scratch / side, overrides)
            cmd = ([sys.executable, "-m", "flows.self_improve", "run", "--rounds", "1"] if side == "orchestrated"
                   else [sys.executable, "-c", code, str(ws)])
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
            sh(ws, *cmd)
            r1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time() - t0
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            metrics = json.loads((ws / "data/rounds/round-1/metrics.json").read_text())
            seconds = read_record(ws / "data/rounds/round-1")["seconds"]
            runs[side].append({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "metrics": metrics,
                               "stage_seconds": seconds})
            print(side, runs[side][-1]["wall_s"], "s wall", runs[side][-1]["cpu_s"], "s cpu", flush=True)
    med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s")} for side, rs in runs.items()}
    same = all(r["metrics"] == runs["direct"][0]["metrics"] for rs in runs.values() for r in rs)
    t_orch, t_direct = med["orchestrated"]["wall_s"], med["direct"]["wall_s"]
    c_orch, c_direct = med["orchestrated"]["cpu_s"], med["direct"]["cpu_s"]
    stage_seconds = runs["orchestrated"][-1]["stage_seconds"]
    row = {"repeats": a.repeats, "orchestrated_s": t_orch, "direct_s": t_direct,
           "overhead_s": round(t_orch - t_direct, 1), "overhead_share": round((t_orch - t_direct) / t_orch, 4),
           "orchestrated_cpu_s": c_orch, "direct_cpu_s": c_direct, "overhead_cpu_s": round(c_orch - c_direct, 1),
           "overhead_cpu_share": round((c_orch - c_direct) / c_orch, 4), "runs": runs,
           "round_stage_seconds": stage_seconds, "same_metrics": same, "overrides": a.set,
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "orchestration_overhead.json").write_text(json.dumps(row, indent=1) + "\n")
    md = markdown(row)
    (RESULTS / "orchestration_overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
