"""Resume only what is still valid: stamped folders (gpo/resume.py) and batch-by-batch image writes.

A real tiny pipeline generates; a crash is a pipeline call that raises after some batches, as a
killed process leaves things (the process-level kill tests are in test_faults_*.py)."""

import json

import pytest
import torch

from gpo.generate import generate_to
from gpo.groups import generate_groups
from gpo.model.build import build_pipeline
from gpo.params import GroupParams, ModelParams, PromptParams
from gpo.resume import STAMP, resume_or_reset, weights_digest
from gpo.world.dataset import build_prompts

TINY = ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8)


def test_resume_or_reset_keeps_same_inputs_and_clears_other_inputs(tmp_path):
    folder = tmp_path / "work"
    assert resume_or_reset(folder, {"lr": 1e-4}) is False  # new: stamped
    (folder / "a.png").write_text("partial result")
    assert resume_or_reset(folder, {"lr": 1e-4}) is True  # same inputs: keep
    assert (folder / "a.png").exists()
    assert resume_or_reset(folder, {"lr": 2e-4}) is False  # other inputs: cleared
    assert not (folder / "a.png").exists()
    assert json.loads((folder / STAMP).read_text()) == {"lr": 2e-4}
    # files without a stamp cannot be trusted either
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "b.png").write_text("from somewhere")
    assert resume_or_reset(tmp_path / "old", {"lr": 1e-4}) is False
    assert not (tmp_path / "old" / "b.png").exists()
    # a damaged stamp: start over
    (folder / STAMP).write_text("{not json")
    (folder / "c.png").write_text("x")
    assert resume_or_reset(folder, {"lr": 2e-4}) is False and not (folder / "c.png").exists()


def test_weights_digest_sees_any_update():
    net = torch.nn.Linear(4, 3)
    d0 = weights_digest(net)
    assert weights_digest(net) == d0
    with torch.no_grad():
        net.weight[1, 2] += 1e-6
    assert weights_digest(net) != d0


class Crashing:
    """A pipeline that raises on its `after`-th call (the process dies mid-generation)."""

    def __init__(self, pipe, after):
        self.pipe, self.after, self.calls = pipe, after, 0

    def __call__(self, texts, **kw):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt("killed")
        return self.pipe(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def test_a_crash_keeps_finished_batches_and_the_rerun_makes_only_the_rest(tmp_path):
    pipe = build_pipeline(TINY, seed=0)
    texts = [f"{n} red circles" for n in ("one", "two", "three")] * 3
    seeds = list(range(9))
    paths = [tmp_path / f"{i}.png" for i in range(9)]
    crashing = Crashing(pipe, after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_to(crashing, texts, seeds, paths, steps=2, guidance_scale=3.0, batch_size=2, progress=False)
    kept = {p: p.stat().st_mtime_ns for p in paths if p.exists()}
    assert len(kept) == 4  # two batches of two were written before the crash
    counter = Crashing(pipe, after=99)
    images, made = generate_to(counter, texts, seeds, paths, steps=2, guidance_scale=3.0, batch_size=2,
                               progress=False)
    assert made == 5 and counter.calls == 3  # only the missing five, in batches of two
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished images untouched
    fresh, _ = generate_to(pipe, texts, seeds, [tmp_path / "ref" / p.name for p in paths], steps=2,
                           guidance_scale=3.0, batch_size=2, progress=False)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in fresh]  # same as one uninterrupted run
    # a temp file left by a write that a kill cut short is removed when the folder resumes
    from gpo.resume import resume_or_reset as ror
    ror(tmp_path / "stamped", {"a": 1})
    (tmp_path / "stamped" / ".x.png.abc.tmp.png").write_bytes(b"half")
    assert ror(tmp_path / "stamped", {"a": 1}) and not (tmp_path / "stamped" / ".x.png.abc.tmp.png").exists()


def test_group_images_of_another_model_are_not_reused(tmp_path):
    prompts = [p for p in build_prompts(PromptParams()) if p.split == "train"][:2]
    g = GroupParams(group_size=2, steps=2, batch_size=8)
    a, b = build_pipeline(TINY, seed=0), build_pipeline(TINY, seed=1)
    table = generate_groups(a, prompts, g, 1, tmp_path, progress=False)
    first = {p: (tmp_path / p).read_bytes() for p in table.path}
    stray = tmp_path / "images" / "stray.png"
    stray.write_bytes(b"left by an older run")
    generate_groups(b, prompts, g, 1, tmp_path, progress=False)  # e.g. DVC re-ran the stage after round 0 changed
    assert not stray.exists()
    assert all((tmp_path / p).read_bytes() != first[p] for p in table.path)
    mtimes = {p: (tmp_path / p).stat().st_mtime_ns for p in table.path}
    generate_groups(b, prompts, g, 1, tmp_path, progress=False)  # same model again: nothing regenerated
    assert all((tmp_path / p).stat().st_mtime_ns == mtimes[p] for p in table.path)


def test_train_checkpoints_of_other_params_are_not_resumed(tmp_path):
    """The bug this guards: DVC re-runs `train` after `train.lr` changed, the checkpoints persist, and a
    resume from the old run's last checkpoint would save the old weights as the new model."""
    import numpy as np

    from gpo.evaluate import Scorers
    from gpo.params import GpoFile, TrainParams
    from gpo.rewards.arith import Score
    from gpo.round import RoundDir, step_generate, step_score, step_train

    class Brightness:
        def score(self, images, prompts):
            vals = [float(np.asarray(im, dtype=np.float32).mean() / 255) for im in images]
            return [Score(v, v > 0.5, f"{v:.3f}") for v in vals]

    base = tmp_path / "base"
    build_pipeline(TINY, seed=0).save_pretrained(base, safe_serialization=True)
    prompts = build_prompts(PromptParams())
    cfg = GpoFile(groups=GroupParams(group_size=4, prompts_per_round=4, iterations=1, steps=2, batch_size=16),
                  train=TrainParams(epochs=1, groups_per_step=2, draws=1, lr=1e-3, beta=10.0, threads=1))
    rd = RoundDir(tmp_path / "round-1")
    step_generate(1, base, rd, prompts, cfg, progress=False)
    step_score(rd, Scorers(Brightness(), Brightness()))

    def trained(c):
        from gpo.model.adapters import load_any

        step_train(base, rd, c, progress=False)
        return weights_digest(load_any(rd.model).denoiser)

    first = trained(cfg)
    assert trained(cfg) == first  # same inputs: resumed from the final checkpoint, same weights
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-2})})
    assert trained(other) != first  # new lr: trained afresh, not the old run's checkpoint
