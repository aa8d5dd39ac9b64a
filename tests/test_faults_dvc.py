"""kill -9 of `dvc repro --single-item generate@1` (DVC running the real `gpo stage generate --round 1`)
mid-generation, then the same command again: the images finished before the kill must survive DVC's
re-run untouched (DVC removes a stage's outputs before running it unless they persist) and only the
missing ones are generated.
"""

import shutil

from gpo import params as P
from tests.faults_workspace import ROOT, kill_when, make_workspace, ok, pngs, round0, run, snapshot, start


def test_kill9_of_dvc_repro_mid_generation_then_rerun_keeps_the_finished_images(tmp_path):
    cfg = P.GpoFile(groups=P.GroupParams(group_size=4, prompts_per_round=8, iterations=1, steps=3, batch_size=2))
    ws = make_workspace(tmp_path / "ws", cfg)
    shutil.copytree(ROOT / "gpo", ws / "gpo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    ok(run(ws, "dvc", "init", "--no-scm", "-q"))
    round0(ws)
    images, total = ws / "data" / "rounds" / "round-1" / "groups" / "images", 8 * 4

    proc = start(ws, "dvc", "repro", "--single-item", "generate@1", log=tmp_path / "dvc1.log")
    kill_when(proc, lambda: len(pngs(images)) >= 2)
    at_kill = pngs(images)
    assert 0 < len(at_kill) < total, f"the kill must land mid-generation ({len(at_kill)} of {total})"
    kept = snapshot(at_kill)

    out = ok(run(ws, "dvc", "repro", "--single-item", "generate@1"))
    assert "Running stage 'generate@1'" in out
    final = pngs(images)
    assert len(final) == total
    regenerated = [f for f, (ino, mtime, _) in kept.items()
                   if not f.exists() or (f.stat().st_ino, f.stat().st_mtime_ns) != (ino, mtime)]
    assert not regenerated, (f"dvc repro generated {len(regenerated)} of the {len(kept)} images finished before "
                             f"the kill again")
    assert len([f for f in final if f not in kept]) == total - len(kept)
    assert "generate@1" in (ws / "dvc.lock").read_text()
