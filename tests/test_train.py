"""The GPO trainer for real on a tiny pipeline: micro-batching, resume, LoRA and full fine-tuning."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from gpo.model.build import build_pipeline, load_pipeline
from gpo.params import ModelParams, TrainParams
from gpo.scoring import add_advantages
from gpo.train import Group, groups_from_table, train_gpo

TINY = ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8)


def _groups(n=3, G=6):
    g = torch.Generator().manual_seed(0)
    return [Group(f"{i + 1} red circles", torch.rand(G, 3, 32, 32, generator=g) * 2 - 1, torch.rand(G, generator=g))
            for i in range(n)]


def _weights(folder):
    return load_file(next((folder / "pipeline" / "denoiser").glob("*.safetensors")))


def _train(tmp, name, **kw):
    p = TrainParams(**{"epochs": 2, "groups_per_step": 2, "threads": 1, "lr": 1e-3, **kw})
    train_gpo(build_pipeline(TINY, seed=0), _groups(), p, tmp / name, progress=False)
    return tmp / name


def test_training_moves_weights_and_logs(tmp_path):
    out = _train(tmp_path, "full")
    before = build_pipeline(TINY, seed=0).denoiser.state_dict()
    after = _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    log = json.loads((out / "train_log.json").read_text())
    assert len(log) == 4 and {"loss", "implicit_accuracy", "reward_margin", "dropped_group_share"} <= set(log[0])
    assert log[0]["loss"] > 0 and not any(r["skipped_nonfinite"] for r in log)


def test_micro_batching_gives_the_same_gradient():
    from gpo.train import Reference, group_step

    pipe = build_pipeline(TINY, seed=0)
    ref = Reference(pipe.denoiser, lora=False)
    with torch.no_grad():  # move the policy off the reference so Δ ≠ 0
        for q in pipe.denoiser.parameters():
            q.add_(torch.randn_like(q) * 1e-2)
    group = _groups(1, G=8)[0]
    grads = []
    for mb in (16, 3):
        pipe.denoiser.zero_grad(set_to_none=True)
        stats = group_step(pipe, pipe.denoiser, ref, group, TrainParams(micro_batch=mb, beta=50.0),
                           torch.Generator().manual_seed(1), 1.0)
        grads.append(torch.cat([q.grad.flatten() for q in pipe.denoiser.parameters() if q.grad is not None]))
        assert stats["loss"] > 0
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() < 1e-4 * grads[0].abs().max()  # float32 summation order only


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    full = _weights(_train(tmp_path, "full"))
    # interrupted: one epoch done (its checkpoint saved), then the same call again with 2 epochs
    _train(tmp_path, "cut", epochs=1)
    (tmp_path / "cut" / "pipeline").rename(tmp_path / "cut" / "epoch1")
    resumed = _weights(_train(tmp_path, "cut"))
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)


def test_lora_trains_adapters_and_saves_a_plain_pipeline(tmp_path):
    out = _train(tmp_path, "lora", lora_rank=4)
    assert (out / "lora").exists() and list((out / "lora").glob("*.safetensors"))
    pipe = load_pipeline(out / "pipeline")
    assert not any("lora" in k for k in pipe.denoiser.state_dict())  # merged into the base weights
    base = build_pipeline(TINY, seed=0).denoiser.state_dict()
    after = pipe.denoiser.state_dict()
    changed = [k for k in after if not torch.equal(base[k], after[k])]
    assert changed and all("attn" in k for k in changed)  # only the targeted attention projections moved


def test_groups_from_table_drops_zero_spread():
    table = add_advantages(pd.DataFrame({
        "group": [0, 0, 1, 1], "prompt": ["a", "a", "b", "b"], "reward": [0.5, 0.5, 0.0, 1.0]}))
    assert table["dropped"].tolist() == [True, True, False, False]
    assert table.loc[3, "advantage"] == pytest.approx(0.5 / (0.5 + 1e-4))  # (1 - 0.5) / (std 0.5 + eps)
    from PIL import Image
    groups = groups_from_table(table, [Image.new("RGB", (32, 32))] * 4)
    assert len(groups) == 1 and groups[0].prompt == "b" and groups[0].x0.shape == (2, 3, 32, 32)


def test_nonfinite_steps_are_skipped_then_stop_the_round_with_weights_intact(tmp_path):
    from gpo.errors import GpoError

    pipe = build_pipeline(TINY, seed=0)
    calls = {"n": 0}

    def poison(module, args, output):  # NaN from the 3rd policy forward on: a real fault mid-training
        calls["n"] += 1
        if calls["n"] > 2 and module.training:
            return (output[0] * float("nan"),) + tuple(output[1:]) if isinstance(output, tuple) else output * float("nan")
        return output

    pipe.denoiser.register_forward_hook(poison)
    p = TrainParams(epochs=3, groups_per_step=1, threads=1, lr=1e-3, max_nonfinite_steps=2)
    with pytest.raises(GpoError, match="2 optimizer steps in a row"):
        train_gpo(pipe, _groups(), p, tmp_path / "nan", progress=False)
    for q in pipe.denoiser.parameters():
        assert torch.isfinite(q).all()  # skipped steps never touched the weights
    log = json.loads((tmp_path / "nan" / "train_log.json").read_text())
    assert [r["skipped_nonfinite"] for r in log] == [False, True, True]
