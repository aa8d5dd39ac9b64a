"""kill -9 of the real `gpo stage generate` process mid-generation, then the same command again.

The images finished before the kill are kept untouched (same inode, mtime and bytes: not generated
twice), only the missing ones are made (counted), a truncated image planted in the folder is made again
from its recorded seed, and the result equals an uninterrupted run image for image.
(Training: tests/test_faults_train.py; evaluation and the MLflow registry: tests/test_faults_registry.py.)
"""

import numpy as np
import pandas as pd
from PIL import Image

from gpo import params as P
from gpo.round import RoundDir, step_generate
from gpo.stages import Workspace
from tests.faults_workspace import kill_when, make_workspace, ok, pngs, round0, run, snapshot, start

GPO = ["gpo", "stage"]


def _pixel_differences(a, b) -> tuple[int, int]:
    """(largest difference of one channel, number of differing values) between two image folders."""
    rel_a, rel_b = {p.relative_to(a) for p in pngs(a)}, {p.relative_to(b) for p in pngs(b)}
    assert rel_a == rel_b
    worst, count = 0, 0
    for rel in rel_a:
        d = np.abs(np.asarray(Image.open(a / rel), dtype=int) - np.asarray(Image.open(b / rel), dtype=int))
        worst, count = max(worst, int(d.max())), count + int((d > 0).sum())
    return worst, count


def test_kill9_mid_generation_then_rerun_makes_only_the_missing_images(tmp_path):
    cfg = P.GpoFile(groups=P.GroupParams(group_size=4, prompts_per_round=8, iterations=1, steps=3, batch_size=2),
                    train=P.TrainParams(epochs=1, groups_per_step=2, draws=1, threads=1))
    ws = make_workspace(tmp_path / "ws", cfg)
    round0(ws)
    rd = RoundDir(ws / "data" / "rounds" / "round-1")
    images, total = rd.groups / "images", 8 * 4

    proc = start(ws, *GPO, "generate", "--round", "1", log=tmp_path / "gen1.log")
    kill_when(proc, lambda: len(pngs(images)) >= 2)
    at_kill = pngs(images)
    assert 0 < len(at_kill) < total, f"the kill must land mid-generation ({len(at_kill)} of {total})"
    assert not rd.manifest.exists()
    for f in at_kill:  # every finished file is whole: written to a temp name, then renamed
        with Image.open(f) as im:
            im.load()
    # a finished image that a copy or a full disk truncated: readers must not take it as finished
    victim = at_kill[0]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    kept = snapshot(at_kill[1:])

    ok(run(ws, *GPO, "generate", "--round", "1"))
    final = pngs(images)
    assert len(final) == total
    table = pd.read_parquet(rd.manifest)
    assert len(table) == total and table["seed"].is_unique
    assert {rd.groups / p for p in table["path"]} == set(final)
    for f, (ino, mtime, data) in kept.items():  # not generated twice: the very same file
        st = f.stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime) and f.read_bytes() == data, f
    made = [f for f in final if f not in kept]
    assert len(made) == total - len(kept)  # the missing ones and the truncated one, nothing else
    assert victim in made and victim.read_bytes() == good  # same seed, same image
    for f in final:
        with Image.open(f) as im:
            im.load()

    # the resumed folder equals an uninterrupted run of the same step
    ref = RoundDir(tmp_path / "reference")
    wsp = Workspace.default(ws)
    step_generate(1, ws / "base", ref, wsp.prompt_table(), cfg, progress=False)
    # an image depends on its prompt and seed only; a batch of another size/composition may round one
    # channel of a rare pixel the other way (float summation order), never more
    worst, count = _pixel_differences(images, ref.groups / "images")
    assert worst <= 1 and count <= total * 32 * 32 * 3 // 1000, (worst, count)
    assert pd.read_parquet(ref.manifest)[["prompt", "seed", "path"]].equals(table[["prompt", "seed", "path"]])
