"""Shared pieces of the fault-injection tests (tests/test_faults_*.py): a tiny workspace that the real
`gpo stage ...` command runs in, a way to start that command as its own process, and file snapshots
to prove what a killed-and-restarted run did and did not touch.

The workspace is the real layout (params/*.yaml, data/prompts.jsonl, data/rounds/round-I/...) with a
tiny random SD3-style pipeline as the base model, so a stage takes seconds instead of minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from gpo import params as P
from gpo.model.build import build_pipeline
from gpo.prompts import write_prompts
from gpo.world.dataset import build_prompts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = P.ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8)


def tiny_world() -> P.WorldParams:
    world = P.WorldParams()
    world.prompts.counting.counts = [1, 2]
    world.prompts.counting.colors = ["red", "blue"]
    world.prompts.counting.heldout_per_count = 1
    world.prompts.text.words = ["CAT", "DOG", "SUN", "BOX", "JAR", "MAP"]
    world.prompts.text.templates = ['"{word}" on a sign', '"{word}" in capital letters']
    world.prompts.text.heldout_words = 1
    return world


def make_workspace(root: Path, gpo: P.GpoFile, eval_params: Optional[P.EvalParams] = None, rounds: int = 1) -> Path:
    """params/, data/prompts.jsonl and a tiny base pipeline (base/) under `root`; returns root."""
    root = Path(root)
    params = root / "params"
    world = tiny_world()
    P.save(params / "world.yaml", world)
    P.save(params / "pretrain.yaml", P.PretrainFile())
    P.save(params / "rewards.yaml", P.RewardsFile(detector=P.DetectorParams(weights=str(ROOT / "release" / "detector.pt"))))
    P.save(params / "models.yaml", P.ModelsFile(base="base"))
    P.save(params / "eval.yaml", P.EvalFile(eval=eval_params or P.EvalParams(
        counting_seeds=1, text_seeds=1, heldout_word_seeds=1, steps=2, batch_size=4, gt_images=10)))
    P.save(params / "gpo.yaml", gpo)
    run = P.RunFile().with_rounds(rounds)
    run.promotion.z = 0.0
    P.save(params / "run.yaml", run)
    write_prompts(build_prompts(world.prompts), root / "data" / "prompts.jsonl")
    build_pipeline(TINY, seed=0).save_pretrained(root / "base", safe_serialization=True)
    return root


def round0(ws):
    """Round 0's champion record: the tiny base (the generate and train stages read only its model)."""
    folder = ws / "data" / "rounds" / "round-0"
    folder.mkdir(parents=True)
    (folder / "champion.json").write_text(json.dumps({"round": 0, "model": str(ws / "base"), "summary": {}, "version": None}))


def env_for(ws: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPO_FAULT_AT"}  # a fault point only when asked
    return {**env, "GPO_WORKSPACE": str(ws), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", **extra}


def start(ws: Path, *args: str, log: Optional[Path] = None, **env: str) -> subprocess.Popen:
    """Start a command (e.g. `gpo stage generate --round 1`) as its own process group in `ws`."""
    out = open(log or os.devnull, "ab")
    return subprocess.Popen(list(args), cwd=ws, env=env_for(ws, **env), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def run(ws: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ws, env=env_for(ws, **env), capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its children (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240, poll: float = 0.005) -> float:
    """Poll `ready()`; SIGKILL the process (group) the moment it is true. Returns the kill time.
    Fails if the process ended on its own first (then the fault was never injected)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            kill9(proc)
            return time.time()
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before the fault point was reached")
        time.sleep(poll)
    kill9(proc)
    raise AssertionError(f"fault point not reached within {timeout} s")


def pngs(folder: Path) -> list[Path]:
    """Finished images: visible .png files (a writer's temp files start with '.')."""
    return sorted(p for p in Path(folder).rglob("*.png") if not p.name.startswith("."))


def snapshot(files: list[Path]) -> dict[Path, tuple[int, int, bytes]]:
    """(inode, mtime_ns, bytes) per file: a file rewritten in any way (even to the same bytes) changes."""
    out = {}
    for f in files:
        st = f.stat()
        out[f] = (st.st_ino, st.st_mtime_ns, f.read_bytes())
    return out
