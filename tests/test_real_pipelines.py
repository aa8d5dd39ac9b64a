"""The same GPO code path on diffusers' Stable Diffusion (ε, UNet, VAE latents), SDXL (UNet with added
text/time conditioning, two text encoders) and Stable Diffusion 3 (flow matching, MMDiT) pipelines,
assembled tiny and offline: save → load → generate → real GPO steps (full fine-tuning and LoRA)."""

import numpy as np
import pytest
import torch

from gpo.errors import GpoError
from gpo.model.adapters import DiffusersBackbone, detect_family, load_any
from gpo.params import TrainParams
from gpo.train import Group, train_gpo
from tests.tiny_pipelines import tiny_sd, tiny_sd3, tiny_sdxl

BUILDS = {"sd": (tiny_sd, "epsilon"), "sdxl": (tiny_sdxl, "epsilon"), "sd3": (tiny_sd3, "flow")}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny pipeline saved once (safetensors), as a user's model folder would be."""
    root = tmp_path_factory.mktemp("pipelines")
    for family, (build, _) in BUILDS.items():
        build().save_pretrained(root / family, safe_serialization=True)
    return root


@pytest.mark.parametrize("family", list(BUILDS))
@pytest.mark.parametrize("lora", [0, 2])
def test_gpo_steps_on_real_pipeline_types(tmp_path, saved, family, lora):
    pipe = load_any(saved / family, family=family)
    assert isinstance(pipe, DiffusersBackbone) and pipe.parameterization == BUILDS[family][1]
    texts = ["three red circles", "three red circles", 'the word "CAT"', 'the word "CAT"']
    images = pipe(texts, seeds=[0, 1, 2, 3], num_inference_steps=2, guidance_scale=2.0).images
    assert len(images) == 4 and images[0].size == (32, 32)
    again = pipe(texts[:1], seeds=[0], num_inference_steps=2, guidance_scale=2.0).images[0]
    diff = np.abs(np.asarray(again, dtype=int) - np.asarray(images[0], dtype=int)).max()
    assert diff <= 2  # a seed reproduces its image (up to batch-size rounding)
    x0 = pipe.encode_images(images)
    assert x0.shape == (4, 4, 16, 16)  # VAE latents: training never decodes
    groups = [Group(texts[0], x0[:2], torch.tensor([0.2, 0.9])), Group(texts[2], x0[2:], torch.tensor([1.0, 0.0]))]
    before = {k: v.clone() for k, v in pipe.denoiser.state_dict().items()}
    out = train_gpo(pipe, groups, TrainParams(epochs=1, groups_per_step=1, draws=1, lr=1e-3, threads=1, lora_rank=lora,
                                              lora_alpha=4 if lora else 0), tmp_path / "train", progress=False)
    trained = load_any(out)
    after = trained.denoiser.state_dict()
    assert set(after) == set(before)  # LoRA is merged back into a plain pipeline
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed
    if lora:
        assert all("attn" in k for k in changed)  # only the targeted attention projections moved
    assert trained(texts[:1], seeds=[0], num_inference_steps=2, guidance_scale=2.0).images[0].size == (32, 32)


@pytest.mark.parametrize("family", list(BUILDS))
def test_latents_decode_like_the_pipeline(saved, family):
    """output_type="latent" hands back the sampled model-space latents; decoding them gives exactly the
    pipeline's own images (so keeping latents changes nothing the reward models see)."""
    pipe = load_any(saved / family)
    texts, seeds = ["two blue squares", 'the word "DOG"'], [5, 6]
    own = pipe.pipe(prompt=texts, generator=[torch.Generator().manual_seed(s) for s in seeds],
                    num_inference_steps=2, guidance_scale=2.0).images
    latents = pipe(texts, seeds=seeds, num_inference_steps=2, guidance_scale=2.0, output_type="latent").images
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32
    for a, b in zip(pipe.decode_latents(latents), own):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sdxl_added_conditioning_matches_the_pipeline(saved):
    """SDXL's UNet gets encoder 2's pooled projection and the six size/crop ids the pipeline builds."""
    pipe = load_any(saved / "sdxl")
    states, pooled = pipe.encode_prompt(["one green triangle"])
    assert states.shape[-1] == pipe.denoiser.config.cross_attention_dim  # both encoders' states concatenated
    assert pooled.shape == (1, pipe.pipe.text_encoder_2.config.projection_dim)
    x = torch.randn(3, 4, 16, 16)
    ids = pipe.pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32,
                                      text_encoder_projection_dim=pipe.pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(pipe.time_ids(x, torch.float32), ids.expand(3, -1))
    # the pooled text embedding reaches the output: changing it changes the prediction
    t = torch.full((3,), 500)
    a = pipe.predict(x, t, states.expand(3, -1, -1), pooled.expand(3, -1))
    b = pipe.predict(x, t, states.expand(3, -1, -1), torch.zeros_like(pooled).expand(3, -1))
    assert not torch.allclose(a, b)


def test_family_in_params_is_checked_against_the_folder(saved):
    assert detect_family(saved / "sdxl") == "sdxl" and detect_family(saved / "sd3") == "sd3"
    with pytest.raises(GpoError, match="holds a 'sd3' model, params ask for 'sdxl'") as err:
        load_any(saved / "sd3", family="sdxl")
    assert "models.family" in str(err.value) and "fix:" in str(err.value)


# --- memory features (params/gpo.yaml train.*, groups.keep_latents), each run for real --------------------
def _moved_groups(pipe, n=2, G=6):
    g = torch.Generator().manual_seed(0)
    return [Group(f"{i + 2} red circles", torch.randn(G, 4, 16, 16, generator=g), torch.rand(G, generator=g))
            for i in range(n)]


def _grad_of_one_group(pipe, p: TrainParams, acc=None, count_calls_of=None):
    """The gradient group_step accumulates for one group (G = 6, micro-batches of 4), policy ≠ reference."""
    from gpo.train import Reference, add_lora, group_step

    policy = pipe.denoiser
    ref = Reference(policy, p.lora_rank > 0)
    if p.lora_rank:
        add_lora(policy, p)
    else:
        torch.manual_seed(3)
        with torch.no_grad():  # move the policy off the reference so Δ ≠ 0
            for q in policy.parameters():
                q.add_(torch.randn_like(q) * 1e-2)
    if p.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    policy.train()
    calls = []
    if count_calls_of is not None:  # count forward runs (hooks do not fire on checkpoint recomputation)
        block = count_calls_of(policy)
        forward = block.forward
        block.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
    stats = group_step(pipe, policy, ref, _moved_groups(pipe)[0], p, torch.Generator().manual_seed(1), 1.0, acc=acc)
    grad = torch.cat([q.grad.flatten() for q in policy.parameters() if q.grad is not None])
    return grad, stats, calls


def _first_block(family):
    """A module diffusers checkpoints and the gradient must pass through (LoRA sits in attention layers
    before it): an MMDiT block, a UNet up-block resnet."""
    return (lambda net: net.transformer_blocks[0]) if family == "sd3" else (lambda net: net.up_blocks[0].resnets[0])


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
@pytest.mark.parametrize("lora", [0, 2])
def test_gradient_checkpointing_gives_the_same_gradient(saved, family, lora):
    p = TrainParams(micro_batch=4, beta=50.0, lora_rank=lora, lora_alpha=4 if lora else 0, draws=1)  # forwards counted below: one draw
    plain, s1, calls1 = _grad_of_one_group(load_any(saved / family), p, count_calls_of=_first_block(family))
    ckpt, s2, calls2 = _grad_of_one_group(load_any(saved / family), p.model_copy(update={"gradient_checkpointing": True}),
                                          count_calls_of=_first_block(family))
    assert plain.abs().max() > 0 and s1["loss"] == pytest.approx(s2["loss"], rel=1e-6)
    assert (plain - ckpt).abs().max() <= 1e-5 * plain.abs().max()
    # checkpointing is really on: the block's forward runs again during backward (2 graded micro-batches)
    assert len(calls1) in (4, 6) and len(calls2) == len(calls1) + 2  # (6: the LoRA reference is the same net)


def test_bf16_autocast_steps_are_finite_and_close_to_float32(saved, tmp_path):
    from gpo.train import make_accelerator

    p = TrainParams(micro_batch=4, beta=50.0, mixed_precision="no")  # the float32 reference
    g32, _, _ = _grad_of_one_group(load_any(saved / "sd3"), p, acc=make_accelerator(p))
    bf16 = p.model_copy(update={"mixed_precision": "bf16"})
    g16, s16, _ = _grad_of_one_group(load_any(saved / "sd3"), bf16, acc=make_accelerator(bf16))
    assert torch.isfinite(g16).all() and not torch.equal(g16, g32)  # autocast really ran in bf16 ...
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98  # ... and kept the direction
    # a whole bf16 round of steps: finite losses, float32 weights saved, weights moved
    pipe = load_any(saved / "sd3")
    before = {k: v.clone() for k, v in pipe.denoiser.state_dict().items()}
    out = train_gpo(pipe, _moved_groups(pipe), TrainParams(epochs=2, groups_per_step=2, draws=1, micro_batch=4, lr=1e-3,
                                                           threads=1, mixed_precision="bf16"),
                    tmp_path / "bf16", progress=False)
    log = __import__("json").loads((tmp_path / "bf16" / "train_log.json").read_text())
    assert len(log) == 2 and all(np.isfinite(r["loss"]) and not r["skipped_nonfinite"] for r in log)
    after = load_any(out).denoiser.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_fp16_on_cpu_is_a_clear_error(saved, tmp_path):
    pipe = load_any(saved / "sd")
    with pytest.raises(GpoError, match="fp16 mixed precision needs a GPU") as err:
        train_gpo(pipe, _moved_groups(pipe), TrainParams(mixed_precision="fp16", threads=1), tmp_path, progress=False)
    assert "train.mixed_precision" in str(err.value) and "bf16" in str(err.value)


def test_precomputed_prompt_embeds_same_weights_and_no_encoder_calls_in_the_loop(saved, tmp_path):
    from safetensors.torch import load_file

    results = {}
    for pre in (False, True):
        pipe = load_any(saved / "sdxl")
        calls = []
        for enc in pipe.text_encoders():
            enc.register_forward_hook(lambda *a: calls.append(1))
        groups = _moved_groups(pipe, n=3)
        train_gpo(pipe, groups, TrainParams(epochs=2, groups_per_step=2, draws=1, micro_batch=4, lr=1e-3, threads=1,
                                            precompute_prompt_embeds=pre), tmp_path / str(pre), progress=False)
        results[pre] = (len(calls), load_file(next((tmp_path / str(pre) / "pipeline" / "unet").glob("*.safetensors"))))
        assert all(next(e.parameters()).device.type == "cpu" for e in pipe.text_encoders())
    n_steps_groups = 2 * 3  # 2 epochs × 3 groups, each encoded per group without precomputing
    assert results[False][0] == 2 * n_steps_groups  # two SDXL text encoders per encoding
    assert results[True][0] == 2 * 3  # each of the 3 prompts once, before the loop
    a, b = results[False][1], results[True][1]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same numbers


def test_kept_latents_are_the_sampled_ones_and_feed_training(saved, tmp_path):
    from gpo.groups import generate_groups, load_images, model_inputs
    from gpo.params import GroupParams
    from gpo.prompts import Prompt

    pipe = load_any(saved / "sd3")
    prompts = [Prompt("three red circles", "counting", "train", "circle", "red", 3),
               Prompt('"CAT" on a sign', "text", "train", word="CAT")]
    g = GroupParams(group_size=2, steps=2, batch_size=3, guidance_scale=2.0)
    plain = generate_groups(pipe, prompts, g, 1, tmp_path / "plain", progress=False)
    kept = generate_groups(pipe, prompts, g.model_copy(update={"keep_latents": True}), 1, tmp_path / "kept",
                           progress=False)
    for rel in kept["path"]:  # the PNGs are the same images either way
        assert (tmp_path / "kept" / rel).read_bytes() == (tmp_path / "plain" / rel).read_bytes()
        assert (tmp_path / "kept" / rel).with_suffix(".latents.safetensors").exists()
    x_kept = model_inputs(kept, tmp_path / "kept", pipe.encode_images)
    sampled = pipe(list(kept["prompt"]), seeds=list(kept["seed"]), num_inference_steps=2, guidance_scale=2.0,
                   output_type="latent", solver=g.solver, precision=g.precision).images  # the groups' sampler
    assert torch.allclose(x_kept, sampled, atol=1e-5)  # exactly what the sampler produced ...
    x_enc = model_inputs(plain, tmp_path / "plain", pipe.encode_images)
    assert torch.equal(x_enc, pipe.encode_images(load_images(plain, tmp_path / "plain")))  # ... else re-encoded
    assert not torch.allclose(x_kept, x_enc, atol=1e-2)  # (a VAE round trip is not the identity)


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    """A hub id is recognised as one (not a missing folder) and, offline and not cached, fails with the fix."""
    from gpo.model.adapters import is_hub_id

    monkeypatch.chdir(tmp_path)
    assert is_hub_id("stabilityai/stable-diffusion-3.5-medium") and not is_hub_id("release/base/x")
    assert not is_hub_id("./a/b") and not is_hub_id("/abs/path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GpoError, match="no folder 'gpo-tests/no-such-model' here, and cannot load it as a hub id") as err:
        load_any("gpo-tests/no-such-model")
    assert "HF_HUB_OFFLINE=0" in str(err.value) and "models.base" in str(err.value)


class _RedShare:
    """A real, deterministic reward (share of red in the image): random-weight tiny models give the real
    detector and OCR nothing to find, so every group would be dropped; the round code is what is tested."""

    def score(self, images, prompts):
        from gpo.rewards.arith import Score

        out = []
        for im in images:
            a = np.asarray(im, dtype=np.float32) / 255
            r = float(np.clip(a[..., 0].mean() - 0.5 * a[..., 1:].mean() + 0.5, 0, 1))
            out.append(Score(r, r > 0.5, f"red={r:.3f}"))
        return out


@pytest.mark.parametrize("family", list(BUILDS))
def test_a_gpo_round_through_the_round_steps(saved, tmp_path, family):
    """generate → score → train as `gpo stage` / the flow run them (gpo/round.py `improve`), from a folder."""
    from gpo.evaluate import Scorers
    from gpo.params import GpoFile, GroupParams
    from gpo.prompts import Prompt
    from gpo.round import improve

    prompts = [Prompt(f"{n} red circles", "counting", "train", "circle", "red", n) for n in (1, 2)] + \
              [Prompt(f'"{w}" on a sign', "text", "train", word=w) for w in ("CAT", "DOG")]
    cfg = GpoFile(groups=GroupParams(group_size=3, prompts_per_round=4, iterations=1, steps=2, batch_size=12, guidance_scale=2.0,
                                      text_share=0.5),
                  train=TrainParams(epochs=1, groups_per_step=2, draws=1, micro_batch=2, lr=1e-3, threads=1))
    out = improve(1, saved / family, tmp_path / "round-1", prompts, cfg, Scorers(_RedShare(), _RedShare()),
                  progress=False)
    assert len(out.rewards) == 12 and out.rewards["reward"].notna().all()
    trained = load_any(out.model, family=family)
    base = load_any(saved / family).denoiser.state_dict()
    assert any(not torch.equal(base[k], v) for k, v in trained.denoiser.state_dict().items())
    assert set(out.seconds) == {"generate", "score", "train"}


@pytest.mark.parametrize("family", list(BUILDS))
def test_solver_and_bf16_on_real_pipeline_types(saved, family):
    """The params' defaults (solver auto, bf16) on SD / SDXL / SD3: auto picks UniPC for the DDPM-type
    schedules and the model's own flow-Euler for SD3; bf16 runs the denoiser only, so every sample the
    scheduler steps is float32; the pipeline's own scheduler is back after the call; a DDPM solver asked
    for by name on SD3 is one clear error."""
    from gpo.params import GroupParams

    pipe = load_any(saved / family, family=family)
    own = pipe.scheduler
    g = GroupParams()
    seen = []

    def record(cls):
        step = cls.step

        def wrapped(self, model_output, timestep, sample, *a, **k):
            seen.append((type(self).__name__, model_output.dtype, sample.dtype))
            out = step(self, model_output, timestep, sample, *a, **k)
            seen.append((type(self).__name__, None, out[0].dtype if isinstance(out, tuple) else out.prev_sample.dtype))
            return out
        return step, wrapped

    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    cls = FlowMatchEulerDiscreteScheduler if family == "sd3" else UniPCMultistepScheduler
    step, wrapped = record(cls)
    cls.step = wrapped
    try:
        pipe(["three red circles"] * 2, seeds=[0, 1], num_inference_steps=3, guidance_scale=2.0,
             solver=g.solver, precision=g.precision)
    finally:
        cls.step = step
    assert seen and {name for name, _, _ in seen} == {cls.__name__}
    assert all(d == torch.float32 for _, m, x in seen for d in (m, x) if d is not None), seen
    assert pipe.scheduler is own
    assert pipe.denoiser.forward.__func__ is type(pipe.denoiser).forward  # the autocast wrapper is gone
    if family == "sd3":
        with pytest.raises(GpoError, match="flow matching"):
            pipe(["one red circle"], seeds=[0], num_inference_steps=2, solver="unipc")
