"""`dvc repro --single-item STAGE`, with a `gpo ...` stage command run inside this process.

Why: a stage command in its own process pays for importing torch + diffusers and for DVC's start-up
on every stage (≈ 8 s a stage, 9% of a round; benchmarks/results/orchestration_overhead.md). Inside
the flow's process the imports are paid once. What DVC does around the command is kept, through
DVC's own stage objects, under DVC's repository lock:

    skip if `stage.changed()` is false ("didn't change, skipping"), as `dvc repro` does;
    remove the stage's non-persistent outputs (persistent ones resume, gpo/resume.py);
    run the command (the repository unlocked meanwhile, as in `dvc repro`): `gpo ARGS` → the gpo CLI in-process (same code as the shell command);
    save deps/outs, commit outputs to the cache, write the stage's entry in dvc.lock.

So a flow run, `dvc repro` and `dvc exp run` still share one dvc.lock and skip each other's work.
A stage whose command is not `gpo ...` runs as a subprocess through `dvc repro` itself.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path


@contextlib.contextmanager
def _in_workspace(root: Path):
    """The environment a DVC stage command gets: cwd = the repo root, GPO_WORKSPACE set."""
    old_env = os.environ.get("GPO_WORKSPACE")
    os.environ["GPO_WORKSPACE"] = str(root)
    try:
        with contextlib.chdir(root):
            yield
    finally:
        if old_env is None:
            os.environ.pop("GPO_WORKSPACE", None)
        else:
            os.environ["GPO_WORKSPACE"] = old_env


def _run_gpo(args: list[str]) -> None:
    from gpo.cli import app

    # standalone_mode=False: errors propagate (a GpoError reaches Prefect with its message)
    code = app(args, standalone_mode=False, prog_name="gpo")
    if code not in (None, 0):
        raise RuntimeError(f"`gpo {shlex.join(args)}` exited with {code}")


def dvc_subprocess(root: Path, *args: str) -> str:
    bin_dir = Path(sys.executable).parent  # the environment's `dvc` and `gpo`
    env = {**os.environ, "GPO_WORKSPACE": str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


def repro_stage(root: Path, name: str) -> str:
    """Bring one stage of dvc.yaml up to date; returns what happened, in DVC's words."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    # DVC resolves stage paths against the working directory, as when it runs from the repo root
    with _in_workspace(root), Repo(str(root)) as repo:
        (stage,) = repo.stage.collect(f"dvc.yaml:{name}")
        commands = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
        argv = [shlex.split(c) for c in commands]
        if not all(a and a[0] == "gpo" for a in argv):
            return dvc_subprocess(root, "repro", "--single-item", name)
        with repo.lock:
            if not stage.changed():
                return f"Stage '{name}' didn't change, skipping"
            outside = [o.fs_path for o in stage.outs if not Path(o.fs_path).resolve().is_relative_to(root)]
            if outside:  # never remove anything outside the repository this task is about
                raise RuntimeError(f"stage {name}: outputs outside {root}: {outside}")
            stage.remove_outs(ignore_remove=False, force=False)  # persist: true outputs are kept
            stage.save_deps()
        for a in argv:  # unlocked while the command runs, as in `dvc repro`
            _run_gpo(a[1:])
        with repo.lock:
            no_cache_outs = any(not o.use_cache for o in stage.outs if not (o.is_metric or o.is_plot))
            stage.save(run_cache=not no_cache_outs)
            stage.commit()
            stage.dump(update_pipeline=False)
        return f"Ran stage '{name}' in-process: {' && '.join(commands)}"
