"""Fan-out of a round's generate + score over a real Prefect work pool: a local Prefect server
(127.0.0.1, free port, PREFECT_HOME in tmp), a process work pool, TWO process workers (separate
processes, limit 1 each), the shard deployment, the fan-out flow; the merged tables must equal a
one-process generate + score of the same prompts and seeds (shipped base model, real YOLO + EasyOCR)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from flows.fanout import merge_shards, shard_group_params, split_even
from gpo import params as P
from gpo.errors import GpoError
from gpo.groups import image_seed

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_split_even_keeps_order_and_balance():
    assert split_even(5, 2) == [(0, 3), (3, 5)]
    assert split_even(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert split_even(2, 5) == [(0, 1), (1, 2)]  # never an empty shard
    with pytest.raises(GpoError, match="at least one shard"):
        split_even(3, 0)


def test_shard_seeds_equal_the_one_process_seeds():
    g = P.GroupParams(group_size=5, seed=7)
    for offset in (0, 3, 11):
        shifted = P.GroupParams(**shard_group_params(g.model_dump(), offset))
        for local in range(3):
            for m in range(5):
                assert image_seed(shifted, 2, local, m) == image_seed(g, 2, offset + local, m)
    with pytest.raises(GpoError, match="group_size < 1000"):
        shard_group_params({**g.model_dump(), "group_size": 1000}, 1)


def test_merge_needs_every_shard_table(tmp_path):
    (tmp_path / "s0").mkdir()
    with pytest.raises(GpoError, match="a shard left no table") as err:
        merge_shards([(0, tmp_path / "s0")], tmp_path / "groups")
    assert "groups.parquet" in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {seconds} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop one process we started (its own process group: the worker's flow-run children too)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def prefect_pool(tmp_path_factory):
    """Server + process pool + shard deployment + two workers; yields (api url, pool, worker names)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.fanout import deploy_shard

    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "0",
           "PREFECT_LOGGING_LEVEL": "INFO", "TQDM_DISABLE": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    procs: list[subprocess.Popen] = []
    logs = {}
    try:
        logs["server"] = home / "server.log"
        procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       str(port)], env=env, stdout=open(logs["server"], "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        _wait_health(url, procs[0], logs["server"])
        pool = "gpo-fanout-test"
        with temporary_settings(updates={PREFECT_API_URL: url}):
            deployment = deploy_shard(pool, "test", source=ROOT)
            names = ["worker-a", "worker-b"]
            for name in names:
                logs[name] = home / f"{name}.log"
                procs.append(subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type",
                                               "process", "--limit", "1", "--name", name], env=env, cwd=ROOT,
                                              stdout=open(logs[name], "w"), stderr=subprocess.STDOUT,
                                              start_new_session=True))
            from prefect.client.orchestration import get_client

            deadline = time.time() + 60
            with get_client(sync_client=True) as client:
                while True:
                    online = {w.name for w in client.read_workers_for_work_pool(pool) if w.status.value == "ONLINE"}
                    if online >= set(names):
                        break
                    if time.time() > deadline or any(p.poll() is not None for p in procs):
                        raise AssertionError(f"workers not online ({online}):\n"
                                             + "\n".join(logs[n].read_text()[-2000:] for n in names))
                    time.sleep(0.5)
            yield url, deployment, names, logs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _tiny_workspace(folder: Path) -> None:
    from gpo.prompts import write_prompts
    from gpo.world.dataset import build_prompts

    params = folder / "params"
    rewards = P.RewardsFile()
    rewards.detector.weights = str(ROOT / "release" / "detector.pt")
    P.save(params / "rewards.yaml", rewards)
    # batch_size = G: the shards' batches hold the same images as the one-process batches. With other
    # splits an image can differ by 1/255 in a pixel (measured: batched CPU kernels round differently
    # for a batch of 8 than of 6), not in its reward here.
    P.save(params / "gpo.yaml", P.GpoFile(groups=P.GroupParams(group_size=3, prompts_per_round=4, iterations=1, steps=4,
                                                               batch_size=3, seed=5)))
    write_prompts(build_prompts(P.WorldParams().prompts), folder / "prompts.jsonl")


def test_fanout_on_two_process_workers_equals_one_process(prefect_pool, tmp_path):
    import torch
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.fanout import fanout_round
    from gpo.groups import generate_groups, pick_prompts
    from gpo.model.adapters import load_any
    from gpo.prompts import read_prompts
    from gpo.scoring import score_groups
    from gpo.stages import Workspace

    url, deployment, workers, logs = prefect_pool
    _tiny_workspace(tmp_path)
    model = ROOT / "release" / "base"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        out = fanout_round(1, str(model), str(tmp_path / "round-1"), shards=2, workspace_dir=str(tmp_path),
                           prompts_file=str(tmp_path / "prompts.jsonl"), deployment=deployment, threads=1)
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
        # flush this process's Prefect log/event workers while their server is still up: left running,
        # they keep pointing at it after it stops, and a later harness in this process waits on them
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=30)
        EventsWorker.drain_all(timeout=30)
    assert out["images"] == 12 and out["groups"] == 4
    # both workers ran a shard (limit 1 each), each as its own flow run, all completed on the server
    assert sorted(s["worker"] for s in out["shards"]) == workers, "\n".join(logs[w].read_text()[-1500:] for w in workers)
    assert len({s["pid"] for s in out["shards"]}) == 2 and os.getpid() not in {s["pid"] for s in out["shards"]}
    shard_runs = [r for r in runs if r.name.startswith("round-1-shard-")]
    assert len(shard_runs) == 2 and all(r.state.is_completed() for r in shard_runs)
    assert any(r.name and r.state.is_completed() and r.id not in {s.id for s in shard_runs} for r in runs)  # parent

    # the same prompts and seeds, generated and scored in this process
    ws = Workspace.default(tmp_path)
    g = ws.load("gpo.yaml").groups
    chosen = pick_prompts(read_prompts(tmp_path / "prompts.jsonl"), g.prompts_per_round, 1, g.seed, g.text_share,
                          g.text_pool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = tmp_path / "one-process"
        table = generate_groups(load_any(model), chosen, g, 1, ref, progress=False)
        score_groups(table, ref, ws.scorers())
    finally:
        torch.set_num_threads(threads)
    groups = tmp_path / "round-1" / "groups"
    for name in ("groups.parquet", "rewards.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(groups / name), pd.read_parquet(ref / name))
    merged = pd.read_parquet(groups / "rewards.parquet")
    assert sorted(merged["group"].unique()) == [0, 1, 2, 3] and merged["reward"].notna().all()
    for rel in merged["path"]:
        assert (groups / rel).read_bytes() == (ref / rel).read_bytes(), rel
    # the round's step records, as step_generate/step_score write them
    import json

    gen = json.loads((groups / "generate.json").read_text())
    assert gen["images"] == 12 and len(gen["fanout"]["shards"]) == 2 and "seconds" not in gen
    timings = groups.parent / "timings"  # the seconds: beside the DVC outputs, not in them
    assert json.loads((timings / "generate.json").read_text())["seconds"] > 0
    assert json.loads((timings / "score.json").read_text())["seconds"] > 0
