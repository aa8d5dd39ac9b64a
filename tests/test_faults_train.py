"""kill -9 of the real `gpo stage train` process, then the same command again.

Killed between checkpoints: the re-run resumes from the last complete checkpoint (the checkpoints made
before the kill are not redone) and its final weights and per-step log equal an uninterrupted run's,
bit for bit. Killed while accelerate writes a checkpoint: the re-run must not read the half-written one.
"""

import json
import shutil
import time

import torch
from safetensors.torch import load_file

from gpo import params as P
from gpo.evaluate import Scorers
from gpo.model.adapters import load_any
from gpo.round import RoundDir, batch_index, step_generate, step_score, step_train
from gpo.stages import Workspace
from tests.faults_workspace import kill_when, make_workspace, ok, round0, run, snapshot, start
from tests.test_round import Brightness

GPO = ["gpo", "stage"]

TRAIN_CFG = P.GpoFile(groups=P.GroupParams(group_size=6, prompts_per_round=4, iterations=1, steps=2, batch_size=24),
                      train=P.TrainParams(epochs=6, groups_per_step=1, draws=1, lr=1e-3, beta=10.0, threads=1))


def _scored_round(tmp_path):
    """A workspace whose round 1 is generated and scored (in this process), ready for the train stage."""
    ws = make_workspace(tmp_path / "ws", TRAIN_CFG)
    round0(ws)
    rd = RoundDir(ws / "data" / "rounds" / "round-1")
    step_generate(1, ws / "base", rd, Workspace.default(ws).prompt_table(), TRAIN_CFG, progress=False)
    step_score(rd, Scorers(Brightness(), Brightness()))
    return ws, rd


def _reference_training(tmp_path, ws, rd):
    """The same train step, uninterrupted, on a copy of the scored round (round 1's batch of groups, as the stage)."""
    ref = RoundDir(tmp_path / "reference")
    shutil.copytree(rd.groups, ref.groups)
    step_train(ws / "base", ref, TRAIN_CFG, progress=False, chain_batch=batch_index(1, 1, TRAIN_CFG.groups.iterations))
    return ref


def _weights(rd):
    return load_file(next((rd.model / "denoiser").glob("*.safetensors")))


def _complete(ck):
    return (ck / "train_log.json").exists()  # written last, after accelerate's state files


def test_kill9_mid_training_resumes_from_the_last_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    ws, rd = _scored_round(tmp_path)
    ckpts = rd.train / "checkpoints"
    proc = start(ws, *GPO, "train", "--round", "1", log=tmp_path / "train1.log")
    kill_when(proc, lambda: ckpts.exists() and any(_complete(c) for c in ckpts.glob("step-*")))
    assert not (rd.model / "model_index.json").exists(), "the kill must land before training finished"
    done = sorted((c for c in ckpts.glob("step-*") if _complete(c)), key=lambda c: int(c.name.split("-")[1]))
    last = int(done[-1].name.split("-")[1])
    kept = snapshot([f for c in done for f in c.iterdir() if f.is_file()])
    carried = json.loads((done[-1] / "train_log.json").read_text())

    ok(run(ws, *GPO, "train", "--round", "1"))
    log = json.loads((rd.train / "train_log.json").read_text())
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))
    assert log[:last] == carried  # steps up to the checkpoint are the killed run's, not redone
    for f, (ino, mtime, data) in kept.items():  # the checkpoints made before the kill are untouched
        st = f.stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime) and f.read_bytes() == data, f
    assert load_any(rd.model) is not None

    ref = _reference_training(tmp_path, ws, rd)
    ref_log = json.loads((ref.train / "train_log.json").read_text())
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    a, b = _weights(rd), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


def test_kill9_while_a_checkpoint_is_being_written_then_rerun_completes(tmp_path):
    """The kill lands inside accelerate's save_state: the newest checkpoint folder is half written."""
    ws, rd = _scored_round(tmp_path)
    ckpts = rd.train / "checkpoints"
    proc = start(ws, *GPO, "train", "--round", "1", log=tmp_path / "train1.log")
    t0 = time.time()
    kill_when(proc, lambda: ckpts.exists() and any(not _complete(c) for c in ckpts.glob("step-*")), poll=0.001)
    partial = [c for c in ckpts.glob("step-*") if not _complete(c)]
    assert partial, f"the kill must land while a checkpoint is written ({time.time() - t0:.1f} s in)"

    proc = run(ws, *GPO, "train", "--round", "1")
    assert proc.returncode == 0, (f"re-running after a kill inside a checkpoint write failed; the half-written "
                                  f"{partial[0].name} ({sorted(p.name for p in partial[0].iterdir())}) was read:\n"
                                  f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    ref = _reference_training(tmp_path, ws, rd)
    a, b = _weights(rd), _weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)
