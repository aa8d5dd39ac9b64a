"""kill -9 of the flow process itself (what a Prefect worker running `gpo-self-improve` is) while a
stage runs, then the flow again, through a real local Prefect server: the dead run's workspace lock is
stale and taken over, the finished stage is not run again, the killed stage runs again from its start
(its output was never written), and the run completes.
(Stand-in DVC stages as in tests/test_faults_servers.py.)
"""

import json

import pytest

from tests.faults_workspace import STAGES, PrefectServer, flow_workspace, kill9, start_flow, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield s
    s.stop()


def test_kill9_of_the_flow_process_mid_stage_then_the_flow_again_completes(server, tmp_path):
    ws = flow_workspace(tmp_path / "ws")
    flow = start_flow(ws, server, tmp_path / "flow1.log")
    wait_for(ws / "data" / "calibrate.started", flow)
    kill9(flow)  # the flow process and its stage subprocess (one process group)
    lock = ws / "data" / ".gpo.lock"
    assert json.loads(lock.read_text())["pid"] == flow.pid  # left behind by the dead run
    assert (ws / "runs.log").read_text().split() == ["prompts"]
    assert not (ws / "data" / "calibrate.txt").exists()

    (ws / "go").touch()
    again = start_flow(ws, server, tmp_path / "flow2.log")
    assert again.wait(timeout=180) == 0, (tmp_path / "flow2.log").read_text()[-3000:]
    assert (ws / "runs.log").read_text().split() == list(STAGES)  # prompts once; calibrate's one finished run
    assert all((ws / "data" / f"{s}.txt").read_text() == f"{s} done" for s in STAGES)
    assert not lock.exists()
    assert "COMPLETED" in [r["state_type"] for r in server.flow_runs()]
