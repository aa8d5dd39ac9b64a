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
    out = train_gpo(pipe, groups, TrainParams(epochs=1, groups_per_step=1, lr=1e-3, threads=1, lora_rank=lora,
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
