"""kill -9 of the real `gpo stage score --round 1` (YOLO + EasyOCR) once its reward models are loading,
then the same command again: the reward table is written once, atomically, at the end, so the killed run
left no table (and no half of one) and the re-run scores every image; its table equals an uninterrupted
scoring of the same images by the same models.
"""

import shutil

import pandas as pd

from gpo import params as P
from gpo.evaluate import Scorers
from gpo.round import RoundDir, step_generate, step_score
from gpo.stages import Workspace
from tests.faults_workspace import kill_when, make_workspace, ok, round0, run, start


def _maps(pid: int, needle: str) -> bool:
    """True once the process has mapped a shared library whose path contains `needle`."""
    try:
        return needle in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


def test_kill9_while_scoring_then_rerun_scores_everything_once(tmp_path, shipped_detector, ocr_reader):
    cfg = P.GpoFile(groups=P.GroupParams(group_size=4, prompts_per_round=4, iterations=1, steps=2, batch_size=16))
    ws = make_workspace(tmp_path / "ws", cfg)
    round0(ws)
    rd = RoundDir(ws / "data" / "rounds" / "round-1")
    step_generate(1, ws / "base", rd, Workspace.default(ws).prompt_table(), cfg, progress=False)
    ref = RoundDir(tmp_path / "reference")
    shutil.copytree(rd.groups, ref.groups)

    proc = start(ws, "gpo", "stage", "score", "--round", "1", log=tmp_path / "score1.log")
    # OpenCV is mapped when the detector (ultralytics) is built: the stage is past its start-up
    kill_when(proc, lambda: _maps(proc.pid, "cv2"))
    assert not rd.rewards.exists() and not rd.seconds_file("score").exists()
    assert not [f for f in rd.groups.iterdir() if f.name.startswith(".")]  # no temp file left either

    ok(run(ws, "gpo", "stage", "score", "--round", "1"))
    table = pd.read_parquet(rd.rewards)
    assert len(table) == 16 and table["reward"].notna().all()
    expected = step_score(ref, Scorers(shipped_detector, ocr_reader, P.RewardsFile().max_failed_share))
    cols = ["path", "seed", "raw", "reward", "correct", "advantage", "dropped"]
    pd.testing.assert_frame_equal(table[cols], expected[cols])
