"""The same GPO code path on diffusers' Stable Diffusion (ε, UNet, VAE latents) and Stable Diffusion 3
(flow matching, MMDiT) pipelines, assembled tiny and offline: save → load → generate → real GPO steps."""

import numpy as np
import pytest
import torch

from gpo.model.adapters import DiffusersBackbone, load_any
from gpo.params import TrainParams
from gpo.train import Group, train_gpo
from tests.tiny_pipelines import tiny_sd, tiny_sd3


@pytest.mark.parametrize("build,kind", [(tiny_sd, "epsilon"), (tiny_sd3, "flow")])
@pytest.mark.parametrize("lora", [0, 2])
def test_gpo_steps_on_real_pipeline_types(tmp_path, build, kind, lora):
    build().save_pretrained(tmp_path / "base", safe_serialization=True)
    pipe = load_any(tmp_path / "base")
    assert isinstance(pipe, DiffusersBackbone) and pipe.parameterization == kind
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
    out = train_gpo(pipe, groups, TrainParams(epochs=1, groups_per_step=1, lr=1e-3, threads=1, lora_rank=lora,
                                              lora_alpha=4 if lora else 0), tmp_path / "train", progress=False)
    trained = load_any(out)
    after = trained.denoiser.state_dict()
    assert set(after) == set(before)  # LoRA is merged back into a plain pipeline
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert trained(texts[:1], seeds=[0], num_inference_steps=2, guidance_scale=2.0).images[0].size == (32, 32)
