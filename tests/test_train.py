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
    p = TrainParams(**{"epochs": 2, "groups_per_step": 2, "threads": 1, "lr": 1e-3, "draws": 1, **kw})
    train_gpo(build_pipeline(TINY, seed=0), _groups(), p, tmp / name, progress=False)
    return tmp / name


def _moved_policy():
    """A tiny pipeline whose policy is moved off its frozen reference copy, so Δ ≠ 0."""
    from gpo.train import Reference

    pipe = build_pipeline(TINY, seed=0)
    ref = Reference(pipe.denoiser, lora=False)
    with torch.no_grad():
        for q in pipe.denoiser.parameters():
            q.add_(torch.randn_like(q) * 1e-2)
    return pipe, ref


def test_training_moves_weights_and_logs(tmp_path):
    out = _train(tmp_path, "full")
    before = build_pipeline(TINY, seed=0).denoiser.state_dict()
    after = _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    log = json.loads((out / "train_log.json").read_text())
    assert len(log) == 4 and {"loss", "implicit_accuracy", "reward_margin", "dropped_group_share"} <= set(log[0])
    assert log[0]["loss"] > 0 and not any(r["skipped_nonfinite"] for r in log)


def test_micro_batching_gives_the_same_gradient():
    from gpo.train import group_step

    pipe, ref = _moved_policy()
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


def _grad(pipe):
    return torch.cat([q.grad.flatten() for q in pipe.denoiser.parameters() if q.grad is not None])


@pytest.mark.parametrize("micro_batch", [16, 5])
def test_k_draws_average_the_per_draw_losses(micro_batch):
    """train.draws = K: the group's gradient is the mean of the K one-draw gradients, the draws being the
    next K (t, ε) pairs of the step's generator — also when micro-batches cut across draws."""
    from gpo.train import group_step

    pipe, ref = _moved_policy()
    group = _groups(1, G=6)[0]
    one = TrainParams(micro_batch=micro_batch, beta=50.0, draws=1)
    gen = torch.Generator().manual_seed(3)  # two K = 1 calls in a row consume draw 1, then draw 2
    singles, losses = [], []
    for _ in range(2):
        pipe.denoiser.zero_grad(set_to_none=True)
        losses.append(group_step(pipe, pipe.denoiser, ref, group, one, gen, 1.0)["loss"])
        singles.append(_grad(pipe))
    pipe.denoiser.zero_grad(set_to_none=True)
    stats = group_step(pipe, pipe.denoiser, ref, group, one.model_copy(update={"draws": 2}),
                       torch.Generator().manual_seed(3), 1.0)
    both = _grad(pipe)
    mean = (singles[0] + singles[1]) / 2
    assert not torch.allclose(singles[0], singles[1])  # two different draws
    assert (both - mean).abs().max() < 1e-4 * mean.abs().max()
    assert stats["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_k_draws_train_and_resume(tmp_path):
    """K > 1 through the whole trainer: it trains, and a resumed run equals an uninterrupted one."""
    full = _weights(_train(tmp_path, "full", draws=3))
    _train(tmp_path, "cut", epochs=1, draws=3)
    (tmp_path / "cut" / "pipeline").rename(tmp_path / "cut" / "epoch1")
    resumed = _weights(_train(tmp_path, "cut", draws=3))
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)
    start = build_pipeline(TINY, seed=0).denoiser.state_dict()
    assert any(not torch.equal(start[k], full[k]) for k in full)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_from_checkpoint_matches_uninterrupted(tmp_path, ema):
    full = _weights(_train(tmp_path, "full", ema_decay=ema))
    # interrupted: one epoch done (its checkpoint saved), then the same call again with 2 epochs
    _train(tmp_path, "cut", epochs=1, ema_decay=ema)
    (tmp_path / "cut" / "pipeline").rename(tmp_path / "cut" / "epoch1")
    resumed = _weights(_train(tmp_path, "cut", ema_decay=ema))
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)
    if ema:  # the saved model is the EMA: between the reference and the last iterate, not either
        last = load_file(str(tmp_path / "full" / "checkpoints" / "step-4" / "policy.safetensors"))
        start = build_pipeline(TINY, seed=0).denoiser.state_dict()
        k = next(k for k in full if not torch.equal(start[k], last[k]))
        assert not torch.equal(full[k], last[k]) and not torch.equal(full[k], start[k])
        # EMA − start = Σ c_k (θ_k − start) with Σ c_k = 1 − 0.9⁴ = 0.34 over the four iterates, which move
        # away from the start step by step here: the EMA sits about a third of the way to the last iterate
        assert (full[k] - start[k]).norm() < 0.5 * (last[k] - start[k]).norm()


@pytest.mark.parametrize("lora", [0, 4])
def test_a_fixed_reference_is_what_the_policy_is_measured_against(tmp_path, lora):
    """train.reference: round hands the trainer another model's denoiser as the reference. A copy of the
    start model gives the same weights as the default; a moved model makes Δ ≠ 0 from the first step
    (the default's Δ is exactly 0 there: the policy starts as its reference), for LoRA too."""
    # float32: under CPU bf16 the policy's attention runs in float32 and the reference's in bf16 (Δ ≈ 1e-4)
    p = TrainParams(epochs=1, groups_per_step=2, threads=1, lr=1e-3, draws=1, lora_rank=lora, mixed_precision="no")
    default = tmp_path / "default"
    train_gpo(build_pipeline(TINY, seed=0), _groups(), p, default, progress=False)
    same = tmp_path / "same"
    train_gpo(build_pipeline(TINY, seed=0), _groups(), p, same, progress=False,
              reference=build_pipeline(TINY, seed=0).denoiser)
    a, b = _weights(default), _weights(same)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    moved = build_pipeline(TINY, seed=0).denoiser
    with torch.no_grad():
        for q in moved.parameters():
            q.add_(torch.randn_like(q) * 1e-2)
    other = tmp_path / "other"
    train_gpo(build_pipeline(TINY, seed=0), _groups(), p, other, progress=False, reference=moved)
    first = lambda out: json.loads((out / "train_log.json").read_text())[0]  # noqa: E731
    assert first(default)["delta_above"] == 0.0 and first(default)["delta_below"] == 0.0
    assert abs(first(other)["delta_above"]) > 0 and abs(first(other)["delta_below"]) > 0
    c = _weights(other)
    assert any(not torch.allclose(a[k], c[k], atol=1e-6) for k in a)


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


@pytest.mark.parametrize("noise,guidance", [("seed", 2.5), ("shared", 1.0)])
def test_group_delta_matches_a_hand_computation(noise, guidance):
    """train.noise = seed noises member i with its own sampling noise (pipe.initial_noise of its seed);
    train.guidance_scale > 1 takes Δ on uncond + w·(cond − uncond). Both against a by-hand Δ and loss."""
    from gpo.loss import gpo_loss
    from gpo.model.targets import noisy_and_target, sample_timesteps
    from gpo.train import group_step

    pipe, ref = _moved_policy()
    group = _groups(1, G=4)[0]
    group.seeds = [11, 12, 13, 14]
    p = TrainParams(noise=noise, guidance_scale=guidance, beta=50.0, draws=1)  # one draw: computed by hand below
    stats = group_step(pipe, pipe.denoiser, ref, group, p, torch.Generator().manual_seed(1), 1.0)

    gen = torch.Generator().manual_seed(1)
    t = sample_timesteps("flow", 1, gen, min_fraction=p.timestep_min_fraction).expand(4)
    shared = torch.randn((1, 3, 32, 32), generator=gen).expand(4, -1, -1, -1)
    z = pipe.initial_noise(group.seeds) if noise == "seed" else shared
    x_t, y = noisy_and_target("flow", group.x0, z, t)
    with torch.no_grad():
        (c, cp), (u, up) = pipe.encode_prompt([group.prompt]), pipe.encode_prompt([""])

        def err(net):
            cond = pipe.predict(x_t, t, c.expand(4, -1, -1), cp.expand(4, -1), denoiser=net)
            unc = pipe.predict(x_t, t, u.expand(4, -1, -1), up.expand(4, -1), denoiser=net)
            pred = unc + guidance * (cond - unc) if guidance != 1.0 else cond
            return ((pred - y) ** 2).mean(dim=(1, 2, 3))

        delta = err(pipe.denoiser) - err(ref.copy)
    expected = gpo_loss(delta[None], group.rewards[None], 50.0).loss.item()
    assert stats["loss"] == pytest.approx(expected, rel=1e-4)
    assert stats["delta_above"] == pytest.approx(delta[group.rewards > group.rewards.mean()].mean().item(), rel=1e-4)


def test_exact_weight_shapes_rewards_and_drops_groups_left_without_spread():
    from PIL import Image

    table = add_advantages(pd.DataFrame({"group": [0, 0, 1, 1], "prompt": ["a", "a", "b", "b"],
                                         "reward": [0.5, 0.75, 0.5, 1.0], "correct": [False, False, False, True]}))
    images = [Image.new("RGB", (32, 32))] * 4
    half = groups_from_table(table, images, exact_weight=0.5)
    assert [g.prompt for g in half] == ["a", "b"]
    assert half[1].rewards.tolist() == pytest.approx([0.25, 1.0])  # 0.5·0.5 + 0, 0.5·1 + 0.5
    only_exact = groups_from_table(table, images, exact_weight=1.0)  # group a: no exact member, no signal
    assert [g.prompt for g in only_exact] == ["b"] and only_exact[0].rewards.tolist() == [0.0, 1.0]


class _Spy:
    """An attention processor that records (grad on, input dtype, autocast on) per call, then runs `inner`."""

    def __init__(self, inner, seen):
        self.inner, self.seen = inner, seen

    def __call__(self, attn, hidden_states, *args, **kw):
        self.seen.append((torch.is_grad_enabled(), hidden_states.dtype, torch.is_autocast_cpu_enabled()))
        return self.inner(attn, hidden_states, *args, **kw)


def _spied(pipe):
    seen = []
    pipe.denoiser.set_attn_processor({k: _Spy(v, seen) for k, v in pipe.denoiser.attn_processors.items()})
    return seen


def test_fp32_attention_under_grad_runs_the_models_own_processors_in_float32_and_restores_them():
    """bf16 on the CPU: attention sees float32 inputs (autocast off) only where a backward follows."""
    from gpo.model.attention import fp32_attention_under_grad

    pipe = build_pipeline(TINY, seed=0)
    seen = _spied(pipe)
    spies = dict(pipe.denoiser.attn_processors)
    restore = fp32_attention_under_grad(pipe.denoiser)
    group = _groups(1, G=4)[0]
    x = group.x0[:2]
    states, pooled = pipe.encode_prompt([group.prompt] * 2)
    t = torch.tensor([500, 700])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pipe.predict(x, t, states, pooled).float().square().mean().backward()
        with torch.no_grad():
            pipe.predict(x, t, states, pooled)
    under_grad = [s for s in seen if s[0]]
    no_grad = [s for s in seen if not s[0]]
    assert under_grad and all(dt == torch.float32 and not ac for _, dt, ac in under_grad)
    assert no_grad and all(dt == torch.bfloat16 and ac for _, dt, ac in no_grad)  # unchanged without grad
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in pipe.denoiser.parameters())
    restore()
    assert dict(pipe.denoiser.attn_processors) == spies  # the very same processor objects back


@pytest.mark.parametrize("fp32_attention", [True, False])
def test_bf16_training_on_cpu_runs_attention_in_float32_for_the_round_only(tmp_path, fp32_attention):
    pipe = build_pipeline(TINY, seed=0)
    seen = _spied(pipe)
    spies = dict(pipe.denoiser.attn_processors)
    p = TrainParams(epochs=1, groups_per_step=2, threads=1, lr=1e-3, draws=1, mixed_precision="bf16",
                    fp32_attention_on_cpu=fp32_attention)
    train_gpo(pipe, _groups(), p, tmp_path / "bf16", progress=False)
    grad_dtypes = {dt for grad, dt, _ in seen if grad}
    assert grad_dtypes == ({torch.float32} if fp32_attention else {torch.bfloat16})
    assert dict(pipe.denoiser.attn_processors) == spies
    log = json.loads((tmp_path / "bf16" / "train_log.json").read_text())
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) and not r["skipped_nonfinite"] for r in log)


def test_every_batch_of_groups_draws_its_own_timesteps_and_noise():
    """The (t, ε) of a step and slot differ between the chain's batches of groups (iterations, rounds), so a
    semi-online chain never replays the previous iteration's draws; the same batch draws the same."""
    from gpo.train import group_generator

    def draws(batch):
        return torch.randn(64, generator=group_generator(0, 3, 1, batch))

    assert torch.equal(draws(2), draws(2))
    assert not torch.equal(draws(1), draws(2)) and not torch.equal(draws(0), draws(1))
