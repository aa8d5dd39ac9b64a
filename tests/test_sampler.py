"""The sampler trap (gpo/model/sampler.py): no x0 clipping under guidance, and on the shipped base more
sampler steps do not make held-out rewards worse. The same check on the clipping scheduler fails."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from gpo.evaluate import Scorers
from gpo.generate import generate
from gpo.model.build import build_pipeline, load_pipeline
from gpo.errors import GpoError
from gpo.model.sampler import clipping, sampler_stamp, sampling_autocast, solver_scheduler, unclipped
from gpo.params import ModelParams
from gpo.prompts import Prompt

TOLERANCE = 0.05  # mean reward may fall by at most this much from 10 to 20 steps (paired, same seeds)


def test_shipped_and_built_schedulers_clip_nothing(root):
    cfg = json.loads((root / "release" / "base" / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["clip_sample"] is False and cfg["thresholding"] is False
    assert clipping(load_pipeline(root / "release" / "base").scheduler) == []
    assert clipping(build_pipeline(ModelParams()).scheduler) == []


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler])
def test_unclipped_turns_clipping_and_thresholding_off(cls):
    s = cls(clip_sample=True, thresholding=True, prediction_type="v_prediction")
    assert clipping(s) == ["clip_sample", "thresholding"]
    fixed = unclipped(s)
    assert clipping(fixed) == [] and fixed.config.prediction_type == "v_prediction"
    plain = EulerDiscreteScheduler()
    assert unclipped(plain) is plain  # nothing to fix: the same object


def test_a_loaded_pipeline_with_a_clipping_scheduler_is_unclipped(tmp_path):
    pipe = build_pipeline(ModelParams(text_width=16, text_layers=1, unet_channels=[16, 32]))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True)
    pipe.save_pretrained(tmp_path / "clipping")
    assert json.loads((tmp_path / "clipping" / "scheduler" / "scheduler_config.json").read_text())["clip_sample"]
    assert clipping(load_pipeline(tmp_path / "clipping").scheduler) == []


def _sample(root) -> tuple[list[Prompt], list[int]]:
    from gpo.params import WorldParams, load
    from gpo.world.dataset import build_prompts

    prompts = build_prompts(load(root / "params" / "world.yaml", WorldParams).prompts)  # what `gpo prompts` curates
    counting = [p for p in prompts if p.task == "counting" and p.split == "heldout"]
    text = [p for p in prompts if p.task == "text" and p.split == "heldout"][:18]
    plan = [(p, 10_000 + j) for p in counting + text for j in range(2)]
    return [p for p, _ in plan], [s for _, s in plan]


def _rewards(pipe, scorers, prompts, seeds, steps) -> dict[str, float]:
    images = generate(pipe, [p.text for p in prompts], seeds, steps=steps, guidance_scale=3.0, batch_size=72,
                      progress=False)
    r = np.array([s.reward for s in scorers.score(images, prompts)])
    return {task: float(r[[p.task == task for p in prompts]].mean()) for task in ("counting", "text")}


def _more_steps_hold(r10: dict, r20: dict) -> bool:
    return all(r20[t] >= r10[t] - TOLERANCE for t in r10)


@pytest.mark.slow
def test_more_steps_do_not_lower_heldout_rewards(root, shipped_detector, ocr_reader):
    scorers = Scorers(shipped_detector, ocr_reader)
    prompts, seeds = _sample(root)  # 36 counting + 36 text images, the evaluation's first seeds
    pipe = load_pipeline(root / "release" / "base")
    r10, r20 = (_rewards(pipe, scorers, prompts, seeds, n) for n in (10, 20))
    assert _more_steps_hold(r10, r20), (r10, r20)
    # the trap, rebuilt on purpose: x0 clipping with the unclipped noise estimate fails the same check
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True)
    c10, c20 = (_rewards(pipe, scorers, prompts, seeds, n) for n in (10, 20))
    assert not _more_steps_hold(c10, c20), (c10, c20)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_real_pipelines_load_unclipped(tmp_path, family):
    """An SD / SDXL folder saved with a clipping DDIM (as some community pipelines are) samples unclipped."""
    from gpo.model.adapters import load_any
    from tests.tiny_pipelines import tiny_sd, tiny_sdxl

    pipe = (tiny_sd if family == "sd" else tiny_sdxl)()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True, thresholding=True)
    pipe.save_pretrained(tmp_path / family, safe_serialization=True)
    loaded = load_any(tmp_path / family, family, device=None)
    assert clipping(loaded.scheduler) == [] and isinstance(loaded.scheduler, DDIMScheduler)


# --- the ODE solver and the sampling precision (#15) ----------------------------------------------------
def _tiny():
    pipe = build_pipeline(ModelParams(text_width=16, text_layers=1, unet_channels=[16, 32]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("solver", ["ddim", "dpm++", "unipc"])
def test_solvers_share_the_noise_schedule_and_clip_nothing(root, solver):
    own = load_pipeline(root / "release" / "base").scheduler
    s = solver_scheduler(own, solver)
    assert clipping(s) == [] and s.config.prediction_type == own.config.prediction_type
    assert np.allclose(s.alphas_cumprod.numpy(), own.alphas_cumprod.numpy())
    assert solver_scheduler(own, "default") is own


def test_solvers_integrate_the_same_ode_and_training_keeps_its_scheduler():
    """The same ODE: with many steps DPM-Solver++ and UniPC land where DDIM does, at 10 steps both are
    closer to that solution than DDIM is (they are higher order), and sampling with a solver leaves the
    pipeline's own scheduler (the one training uses) alone."""
    pipe = _tiny()
    own = pipe.scheduler
    texts, seeds = ["three red circles", "the word CAT"], [1, 2]
    run = lambda solver, steps: pipe(texts, seeds=seeds, num_inference_steps=steps, guidance_scale=2.0,  # noqa: E731
                                     output_type="pt", solver=solver).images
    ref = run("ddim", 100)
    err = lambda solver, steps: float((run(solver, steps) - ref).abs().mean())  # noqa: E731
    ddim10 = err("ddim", 10)  # measured 0.017 (dpm++ 0.005, unipc 0.004; at 100 steps all three ≤ 0.001)
    assert ddim10 > 0.008  # the comparison can fail
    for solver in ("dpm++", "unipc"):
        assert err(solver, 60) < 0.003, solver
        assert err(solver, 10) < 0.5 * ddim10, solver
    assert pipe.scheduler is own


def test_bf16_sampling_matches_fp32_to_rounding():
    pipe = _tiny()
    kw = dict(seeds=[3, 4], num_inference_steps=4, guidance_scale=2.0, output_type="pt")
    a = pipe(["two blue squares"] * 2, precision="fp32", **kw).images
    b = pipe(["two blue squares"] * 2, precision="bf16", **kw).images
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 really ran
    assert float((a - b).abs().mean()) < 0.01


def test_flow_pipelines_refuse_a_ddpm_solver():
    pipe = build_pipeline(ModelParams(arch="sd3", text_width=16, text_layers=1, dit_layers=1, dit_width=32,
                                      attention_head_dim=16))
    with pytest.raises(GpoError, match="flow matching"):
        pipe(["one red circle"], seeds=[0], num_inference_steps=2, solver="dpm++")
    with pytest.raises(ValueError):
        solver_scheduler(pipe.scheduler, "euler-a")


def test_sampler_stamp_tells_solvers_and_precisions_apart():
    s = _tiny().scheduler
    stamps = {json.dumps(sampler_stamp(s, solver, precision), sort_keys=True)
              for solver in ("default", "dpm++") for precision in ("fp32", "bf16")}
    assert len(stamps) == 4


def test_bf16_leaves_half_precision_weights_alone():
    assert isinstance(sampling_autocast("cpu", "bf16"), torch.autocast)
    for dtype in (torch.float16, torch.bfloat16):  # the GPU path: weights already in half precision
        assert not isinstance(sampling_autocast("cpu", "bf16", dtype), torch.autocast)
    assert not isinstance(sampling_autocast("cpu", "fp32"), torch.autocast)


def test_default_params_sample_every_embedded_arch():
    """solver: auto is UniPC on the UNet's DDPM schedule and flow-Euler on the MMDiT's flow matching."""
    from gpo.model.sampler import resolve_solver
    from gpo.params import EvalParams

    e = EvalParams()
    unet = _tiny()
    dit = build_pipeline(ModelParams(arch="sd3", text_width=16, text_layers=1, dit_layers=1, dit_width=32,
                                     attention_head_dim=16))
    assert resolve_solver(unet.scheduler, e.solver) == "unipc"
    assert resolve_solver(dit.scheduler, e.solver) == "default"
    for pipe in (unet, dit):
        images = generate(pipe, ["two blue squares"], [5], **{**e.sampler_kwargs(), "steps": 2}, progress=False)
        assert images[0].size == (pipe.resolution, pipe.resolution)
