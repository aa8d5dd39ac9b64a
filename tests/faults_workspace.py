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


# --- the Prefect flow against a real local Prefect server ------------------------------------------
STAGES = ("prompts", "calibrate", "base", "report")  # what flows.self_improve runs for a run.yaml of 0 rounds


def flow_workspace(root: Path) -> Path:
    """A DVC workspace for the real flow `gpo-self-improve` with stand-in stages: each writes its output
    under data/, appends its name to runs.log (how often it ran) and `calibrate` waits for a file `go`
    (so a test can fault the run while a stage is in flight: `data/calibrate.started`)."""
    import yaml

    root = Path(root)
    P.save(root / "params" / "run.yaml", P.RunFile(rounds={}))

    def cmd(name: str) -> str:
        wait = "[time.sleep(0.05) for _ in iter(lambda: pathlib.Path('go').exists(), True)]; " if name == "calibrate" else ""
        return (f"python -c \"import pathlib, time; d = pathlib.Path('data'); d.mkdir(exist_ok=True); "
                f"(d / '{name}.started').touch(); {wait}open('runs.log', 'a').write('{name}\\n'); "
                f"(d / '{name}.txt').write_text('{name} done')\"")

    stages, prev = {}, None
    for name in STAGES:
        stages[name] = {"cmd": cmd(name), "outs": [f"data/{name}.txt"], **({"deps": [f"data/{prev}.txt"]} if prev else {})}
        prev = name
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its state (sqlite) in `home`; stop() is a kill -9."""

    def __init__(self, home: Path):
        self.home, self.port, self.proc = Path(home), free_port(), None
        self.api = f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        return {"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true"}

    def start(self, timeout: float = 120) -> "PrefectServer":
        import urllib.request

        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                      str(self.port)], env={**os.environ, **self.env()}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.api}/health", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError((self.home / "server.log").read_text()[-2000:])
                time.sleep(0.3)
        raise AssertionError(f"prefect server not up within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None:
            kill9(self.proc)
            self.proc = None

    def flow_runs(self) -> list[dict]:
        import httpx

        return httpx.post(f"{self.api}/flow_runs/filter", json={}, timeout=10).json()


def start_flow(ws: Path, server: PrefectServer, log: Path, **env: str) -> subprocess.Popen:
    """`python -m flows.self_improve run` on workspace `ws`, reporting to `server`."""
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "flows.self_improve", "run"], cwd=ROOT,
                            env={**env_for(ws), **server.env(), **env}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not Path(path).exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {path} appeared")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def stages_run(ws: Path) -> list[str]:
    """The stand-in stages of `flow_workspace` that ran, in order (each appends its name to runs.log)."""
    log = ws / "runs.log"
    return log.read_text().split() if log.exists() else []
