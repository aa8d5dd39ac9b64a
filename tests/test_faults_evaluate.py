"""kill -9 of the real `gpo stage evaluate --round 1` (real YOLO + EasyOCR) mid-evaluation, then again
just after its model version was registered, then the same command with no fault.

The evaluation images finished before the first kill are kept untouched and only the missing ones are
made; the registry ends with exactly one version per round (0 and 1), the alias `champion` on the version
champion.json names, and round.json pointing at the run that holds round 1's version.
"""

import json

from gpo import params as P
from gpo.calibrate import evaluate_model
from gpo.evaluate import Scorers
from gpo.model.adapters import load_any
from gpo.prompts import HELDOUT_SPLITS
from gpo.round import RoundDir, read_record, step_generate, step_score, step_train
from gpo.stages import Workspace, run_stage
from tests.faults_workspace import kill_when, make_workspace, ok, pngs, run, snapshot, start
from tests.test_faults_registry import NAME, registry, state
from tests.test_round import Brightness


def _ready_round(tmp_path):
    """Round 0 registered (version 1) and round 1 generated, scored and trained, all in this process."""
    cfg = P.GpoFile(groups=P.GroupParams(group_size=4, prompts_per_round=4, iterations=1, steps=2, batch_size=16),
                    train=P.TrainParams(epochs=1, groups_per_step=2, draws=1, lr=1e-3, beta=10.0, threads=1))
    e = P.EvalParams(counting_seeds=2, text_seeds=2, heldout_word_seeds=1, steps=3, batch_size=2, gt_images=10)
    root = make_workspace(tmp_path / "ws", cfg, e)
    w = Workspace.default(root)
    summary = evaluate_model(load_any(root / "base"), w.prompt_table(), Scorers(Brightness(), Brightness()), e,
                             tmp_path / "base_eval", "base", progress=False)
    (root / "data" / "calibration").mkdir(parents=True)
    (root / "data" / "calibration" / "calibration.json").write_text(json.dumps({"base_model": summary}))
    run_stage("base", 0, w, progress=False)
    rd = RoundDir(root / "data" / "rounds" / "round-1")
    step_generate(1, root / "base", rd, w.prompt_table(), cfg, progress=False)
    step_score(rd, Scorers(Brightness(), Brightness()))
    step_train(root / "base", rd, cfg, progress=False)
    held = [p for p in w.prompt_table() if p.split in HELDOUT_SPLITS]
    total = sum(2 if p.split != "heldout_words" else 1 for p in held)
    return root, rd, total


def test_kill9_mid_evaluation_and_after_registering_then_one_version_per_round(tmp_path):
    ws, rd, total = _ready_round(tmp_path)
    images = rd.eval / "model_images"
    evaluate = ["gpo", "stage", "evaluate", "--round", "1"]
    assert state(ws)[0] == [1]

    proc = start(ws, *evaluate, log=tmp_path / "eval1.log")
    kill_when(proc, lambda: len(pngs(images)) >= 2)
    at_kill = pngs(images)
    assert 0 < len(at_kill) < total, f"the kill must land mid-evaluation ({len(at_kill)} of {total})"
    assert not (rd.eval / "summary.json").exists() and not rd.champion.exists()
    assert state(ws)[0] == [1]  # nothing registered for round 1
    kept = snapshot(at_kill)

    # re-run, killed again just after round 1's version is registered
    assert run(ws, *evaluate, GPO_FAULT_AT="tracking:registered").returncode == -9
    assert len(pngs(images)) == total and (rd.eval / "summary.json").exists() and not rd.champion.exists()
    assert state(ws)[0] == [1, 2]
    made = [f for f in pngs(images) if f not in kept]
    assert len(made) == total - len(kept)  # only the missing evaluation images were generated

    ok(run(ws, *evaluate))
    versions, alias, history, runs = state(ws)
    champion = json.loads(rd.champion.read_text())
    record = read_record(rd.root)
    assert versions == [1, 2]  # one per round
    assert alias == champion["version"] and alias in (1, 2)  # promoted or not, the record and MLflow agree
    assert record["version"] == 2 and (alias == 2) == record["decision"]["promote"]
    assert [h["version"] for h in history] == ([1, 2] if alias == 2 else [1])
    c = registry(ws)
    mv = c.get_model_version(NAME, "2")
    assert mv.tags["round"] == "1" and mv.run_id == record["mlflow_run"][1]
    for f, (ino, mtime, data) in kept.items():  # never generated twice
        st = f.stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime) and f.read_bytes() == data, f
    round1 = [r for r in runs if r.data.tags.get("round") == "1"]
    assert [r.info.status for r in round1] == ["FINISHED"]
