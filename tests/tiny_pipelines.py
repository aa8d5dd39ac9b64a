"""Tiny Stable Diffusion, SDXL and Stable Diffusion 3 pipelines assembled offline from configs (random weights,
no download; character-level CLIP tokenizers built in code)."""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpo.model.tokenizer import build_char_tokenizer


def _vae(**sd3) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=8, sample_size=32, **sd3)


def _clip(cls, tok, width: int):
    return cls(CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, projection_dim=width))


def tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tok = build_char_tokenizer(40)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=_clip(CLIPTextModel, tok, 32), tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL's structure at toy size: two CLIP encoders (penultimate states concatenated = the cross-attention
    width), encoder 2's pooled projection + six size/crop ids through the UNet's text_time added embedding."""
    torch.manual_seed(seed)
    tok = build_char_tokenizer(40)
    te1, te2 = _clip(CLIPTextModel, tok, 16), _clip(CLIPTextModelWithProjection, tok, 16)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16 + 16,
                                attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + te2.config.projection_dim)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                          timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=_vae(scaling_factor=0.13025), text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=build_char_tokenizer(40), unet=unet, scheduler=sched,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def tiny_sd3(seed: int = 0, latent_size: int = 16) -> StableDiffusion3Pipeline:
    """`latent_size` 16 = 32 px images (the tests); the memory benchmark also uses 64 (512 px-sized latents)."""
    torch.manual_seed(seed)
    tok = build_char_tokenizer(40)
    transformer = SD3Transformer2DModel(sample_size=latent_size, patch_size=2, in_channels=4, out_channels=4,
                                        num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
                                        pos_embed_max_size=latent_size // 2)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_vae(shift_factor=0.06, scaling_factor=1.5),
                                    text_encoder=_clip(CLIPTextModelWithProjection, tok, 16),
                                    tokenizer=tok, text_encoder_2=_clip(CLIPTextModelWithProjection, tok, 16),
                                    tokenizer_2=build_char_tokenizer(40), text_encoder_3=None, tokenizer_3=None)
