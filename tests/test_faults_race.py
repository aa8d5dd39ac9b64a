"""Two runs of the real flow `gpo-self-improve` started on one workspace, both through a real local
Prefect server: the second fails at once with the workspace lock's message naming the first run's pid,
host and start time, and Prefect records it as Failed with that message; the first run completes.
(Stand-in DVC stages as in tests/test_faults_servers.py: `calibrate` waits for a signal file, so the
first run is mid-stage, holding the lock, when the second starts.)
"""

from tests.faults_workspace import STAGES, flow_workspace, stages_run, start_flow, wait_for


def test_a_second_flow_run_on_the_same_workspace_is_refused_naming_the_first(prefect_server, tmp_path):
    server = prefect_server
    ws = flow_workspace(tmp_path / "ws")
    first = start_flow(ws, server, tmp_path / "first.log")
    try:
        wait_for(ws / "data" / "calibrate.started", first)  # the first run holds the lock, mid-stage
        owner = (ws / "data" / ".gpo.lock").read_text()
        second = start_flow(ws, server, tmp_path / "second.log")
        assert second.wait(timeout=120) != 0
        out = (tmp_path / "second.log").read_text()
        assert f"another gpo run holds this workspace: pid {first.pid}" in out, out[-3000:]
        assert '"started"' in owner and "started " in out and str(ws / "data" / ".gpo.lock") in out
        assert stages_run(ws) == ["prompts"]  # the second run touched nothing
    finally:
        (ws / "go").touch()
    assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert stages_run(ws) == list(STAGES)
    assert sorted(r["state_type"] for r in server.flow_runs()) == ["COMPLETED", "FAILED"]
    failed = [r for r in server.flow_runs() if r["state_type"] == "FAILED"]
    assert any("another gpo run holds this workspace" in (r["state"]["message"] or "") for r in failed), failed
