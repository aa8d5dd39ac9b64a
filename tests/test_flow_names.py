"""Prefect task runs of gpo-self-improve carry their DVC stage's name from the moment they exist.

Prefect creates a task run as `<task name>-<3 chars>` (its Pending event) and applies task_run_name
only when the run starts, so a task named `stage` showed as `stage-086` while pending. Run for real
(prefect_test_harness: a temporary Prefect API), with the DVC work of the stage replaced by a stub so
only the naming is under test.
"""

from __future__ import annotations

from pathlib import Path


def test_task_runs_are_named_after_their_stage_from_pending_on(monkeypatch, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.testing.utilities import prefect_test_harness
    import prefect.task_engine as engine

    import flows.self_improve as fs

    seen: list[tuple[str, str]] = []  # (state type, task run name) of every state event emitted
    emit = engine.emit_task_run_state_change_event

    def recording_emit(task_run, initial_state, validated_state, *args, **kwargs):
        seen.append((validated_state.type.value, task_run.name))
        return emit(task_run, initial_state, validated_state, *args, **kwargs)

    monkeypatch.setattr(engine, "emit_task_run_state_change_event", recording_emit)
    monkeypatch.setattr(fs, "repro_stage", lambda root, name: f"Stage '{name}' didn't change, skipping")
    names = ["prompts", "generate@1.2", "evaluate@1"]

    @flow(name="names-only")
    def names_only(root: str) -> list[str]:
        return [fs.run_stage(n, Path(root)) for n in names]

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    with prefect_test_harness():
        assert names_only(str(tmp_path)) == [f"Stage '{n}' didn't change, skipping" for n in names]
        with get_client(sync_client=True) as client:
            final = sorted(r.name for r in client.read_task_runs())
    assert final == sorted(names)
    pending = [name for kind, name in seen if kind == "PENDING"]
    assert len(pending) == len(names), seen
    for stage_name, shown in zip(names, pending):
        assert shown.startswith(f"{stage_name}-") or shown == stage_name, (stage_name, shown)
