"""The real flow `gpo-self-improve` (flows/self_improve.py) against a real local Prefect server
(`prefect server start` on 127.0.0.1, a free port, its state in a temporary PREFECT_HOME), which is
killed (kill -9) while a stage runs, then restarted: the run rides over the gap on the Prefect client's
retries and completes; every stage ran exactly once and its output is intact.

The DVC stages are stand-ins (a file each, `calibrate` waits for a signal file) so that a fault lands
while a stage is in flight and the test takes seconds; the flow, DVC, the lock and Prefect are real.
The server staying down: tests/test_faults_server_down.py; two runs racing: tests/test_faults_race.py.
"""

from tests.faults_workspace import STAGES, flow_workspace, stages_run, start_flow, wait_for


def test_prefect_server_killed_and_restarted_mid_stage_the_run_completes(prefect_server, tmp_path):
    server = prefect_server
    ws = flow_workspace(tmp_path / "ws")
    flow = start_flow(ws, server, tmp_path / "flow.log")
    wait_for(ws / "data" / "calibrate.started", flow)
    server.stop()  # kill -9 of the Prefect server while `calibrate` runs
    (ws / "go").touch()
    server.start()  # same PREFECT_HOME: its database, with the run, survives
    assert flow.wait(timeout=150) == 0, (tmp_path / "flow.log").read_text()[-3000:]
    assert stages_run(ws) == list(STAGES)  # each stage once: nothing redone, nothing skipped
    assert all((ws / "data" / f"{s}.txt").read_text() == f"{s} done" for s in STAGES)
    assert not (ws / "data" / ".gpo.lock").exists()
    states = [r["state_type"] for r in server.flow_runs()]
    assert states.count("COMPLETED") >= 1 and "RUNNING" not in states
