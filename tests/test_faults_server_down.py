"""The Prefect server killed (kill -9) while a stage of the real flow `gpo-self-improve` runs, and it
stays down. What happens (Prefect 3 runs task state client-side): the stages keep running and write
their outputs under data/; at the end the flow cannot report its final state and the process exits
non-zero after the client's retries, with one gpo error naming the unreachable PREFECT_API_URL and the fix
(PREFECT_CLIENT_MAX_RETRIES=1 here to keep the test short; the default, 5, waits ≈ 1 min more). Nothing
in data/ is lost and the workspace lock is released; with the server back, running the flow again
completes the record on the server without running any stage again (DVC: all up to date).
"""

from tests.faults_workspace import STAGES, PrefectServer, flow_workspace, stages_run, start_flow, wait_for


def test_prefect_server_down_mid_stage_fails_without_losing_data_and_a_rerun_completes(tmp_path):
    server = PrefectServer(tmp_path / "prefect-home").start()
    try:
        ws = flow_workspace(tmp_path / "ws")
        flow = start_flow(ws, server, tmp_path / "flow.log", PREFECT_CLIENT_MAX_RETRIES="1")
        wait_for(ws / "data" / "calibrate.started", flow)
        server.stop()
        (ws / "go").touch()
        rc = flow.wait(timeout=240)
        out = (tmp_path / "flow.log").read_text()
        assert rc != 0 and "ConnectError" in out and "Connection refused" in out, out[-3000:]
        # ... ending in gpo's one error: what could not be reached, the setting, the fix
        assert "cannot reach the Prefect API" in out and "field: PREFECT_API_URL" in out, out[-3000:]
        assert stages_run(ws) == list(STAGES)  # the stages finished while the server was down ...
        assert all((ws / "data" / f"{s}.txt").read_text() == f"{s} done" for s in STAGES)  # ... and are kept
        assert all(f"{s}:" in (ws / "dvc.lock").read_text() for s in STAGES)
        assert not (ws / "data" / ".gpo.lock").exists()  # released on the way out

        server.start()
        rerun = start_flow(ws, server, tmp_path / "rerun.log")
        assert rerun.wait(timeout=240) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
        assert stages_run(ws) == list(STAGES)  # nothing ran twice
        states = sorted(r["state_type"] for r in server.flow_runs())
        assert "COMPLETED" in states, states
    finally:
        server.stop()
