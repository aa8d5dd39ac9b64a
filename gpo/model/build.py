"""Build the embedded model from params (random init), or load a saved one."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from gpo.errors import GpoError
from gpo.model.pipeline import TinyT2IPipeline
from gpo.model.sampler import unclipped
from gpo.model.tokenizer import build_char_tokenizer
from gpo.params import ModelParams


def build_pipeline(p: ModelParams, seed: int = 0) -> TinyT2IPipeline:
    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer(p.max_prompt_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=p.text_width, intermediate_size=2 * p.text_width,
        num_hidden_layers=p.text_layers, num_attention_heads=4, max_position_embeddings=p.max_prompt_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, projection_dim=p.text_width))
    if p.arch == "unet":
        channels = tuple(p.unet_channels)
        denoiser = UNet2DConditionModel(
            sample_size=p.resolution, in_channels=3, out_channels=3, layers_per_block=p.unet_layers_per_block,
            block_out_channels=channels,
            # attention below full resolution only: 1024-token self-attention at 32² costs ~4× the step
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
            cross_attention_dim=p.text_width, attention_head_dim=p.attention_head_dim,
            norm_num_groups=8)
        # no x0 clipping: under CFG it keeps a mismatched noise estimate and the sample drifts (gpo/model/sampler.py)
        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                  prediction_type=p.prediction_type, clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="trailing")
    else:
        denoiser = SD3Transformer2DModel(
            sample_size=p.resolution, patch_size=p.patch_size, in_channels=3, out_channels=3,
            num_layers=p.dit_layers, attention_head_dim=p.attention_head_dim,
            num_attention_heads=p.dit_width // p.attention_head_dim, joint_attention_dim=p.text_width,
            caption_projection_dim=p.dit_width, pooled_projection_dim=p.text_width,
            pos_embed_max_size=p.resolution // p.patch_size)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return TinyT2IPipeline(denoiser=denoiser, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def load_pipeline(path: str | Path) -> TinyT2IPipeline:
    """Load a saved embedded pipeline (safetensors only), with a clear error when it is not one."""
    path = Path(path)
    if not (path / "model_index.json").exists():
        raise GpoError("not a diffusers pipeline folder (no model_index.json)", file=str(path),
                       fix="point to a folder written by `gpo pretrain` or a round's checkpoint")
    try:
        pipe = TinyT2IPipeline.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise GpoError(f"cannot load pipeline: {err}", file=str(path),
                       fix="a truncated or damaged weights file: restore the shipped model with "
                           "`git checkout -- release/base`, a round's pipeline with `dvc checkout` (it is in "
                           "DVC's cache); only safetensors weights are accepted") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = unclipped(pipe.scheduler)
    return pipe


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
