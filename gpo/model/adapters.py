"""Real diffusers pipelines (Stable Diffusion 1.x/2.x, SDXL-style UNets, Stable Diffusion 3/3.5) behind
the interface the GPO trainer and group generation use — the one `TinyT2IPipeline` has natively:

    parameterization, scheduler, denoiser, encode_prompt(texts) -> (states, pooled),
    predict(x_t, t, states, pooled, denoiser=None), encode_images(images) -> model-space x0,
    text_encoders(), set_denoiser(net), save_pretrained(path), __call__(texts, seeds=..., ...)

Model space is the VAE latent space (scaled and shifted as the pipeline does), so training never
decodes and generation keeps the latents' seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from PIL import Image

from gpo.errors import GpoError
from gpo.model.pipeline import images_to_tensor


class DiffusersBackbone:
    """Wraps a `StableDiffusionPipeline` or a `StableDiffusion3Pipeline` (SDXL: see `is_sdxl`)."""

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe = pipe
        self.kind = "sd3" if hasattr(pipe, "transformer") else ("sdxl" if hasattr(pipe, "text_encoder_2") else "sd")
        if self.kind == "sdxl":
            raise GpoError("SDXL pipelines need the added time/text conditioning, not wired in yet",
                           field="models.base", fix="use an SD 1.x/2.x or SD3 pipeline for now")
        self.pipe.set_progress_bar_config(disable=True)

    # --- the trainer's interface --------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer if self.kind == "sd3" else self.pipe.unet

    def set_denoiser(self, net: torch.nn.Module) -> None:
        self.pipe.register_modules(**{"transformer" if self.kind == "sd3" else "unet": net})

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def parameterization(self) -> str:
        if isinstance(self.pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            return "flow"
        return self.pipe.scheduler.config.prediction_type

    def text_encoders(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if m is not None]

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.pipe
        if self.kind == "sd3":
            states, _, pooled, _ = p.encode_prompt(list(prompts), None, None, do_classifier_free_guidance=False,
                                                   device=self.denoiser.device)
            return states, pooled
        states, _ = p.encode_prompt(list(prompts), self.denoiser.device, 1, False)
        return states, None

    def predict(self, x_t, t, states, pooled, denoiser=None) -> torch.Tensor:
        net = denoiser if denoiser is not None else self.denoiser
        t = t.to(x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if self.kind == "sd3":
            return net(hidden_states=x_t, timestep=t, encoder_hidden_states=states, pooled_projections=pooled,
                       return_dict=False)[0]
        return net(x_t, t, encoder_hidden_states=states, return_dict=False)[0]

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        vae = self.pipe.vae
        x = images_to_tensor(images).to(vae.device, vae.dtype)
        latents = vae.encode(x).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float().cpu()

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        self.pipe.save_pretrained(path, safe_serialization=safe_serialization)

    # --- generation: one seed per image ----------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], seeds: Sequence[int] | None = None,
                 num_inference_steps: int = 20, guidance_scale: float = 3.0, output_type: str = "pil"):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        out = self.pipe(prompt=prompts, generator=gens, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, output_type=output_type)
        return ImagePipelineOutput(images=out.images)


def load_any(path: str | Path):
    """The embedded pipeline, or a real diffusers pipeline wrapped in `DiffusersBackbone`."""
    import json

    from gpo.model.build import load_pipeline

    index = Path(path) / "model_index.json"
    if not index.exists():
        raise GpoError("not a diffusers pipeline folder (no model_index.json)", file=str(path),
                       fix="point to a diffusers pipeline folder (save_pretrained output)")
    meta = json.loads(index.read_text())
    if meta.get("_class_name") == "TinyT2IPipeline":
        return load_pipeline(path)
    # components saved as None (e.g. SD3 without T5) must be passed as None again
    absent = {k: None for k, v in meta.items() if isinstance(v, list) and v and v[0] is None}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, use_safetensors=True, **absent)
    except (OSError, ValueError) as err:
        raise GpoError(f"cannot load pipeline: {err}", file=str(path),
                       fix="only safetensors weights are accepted") from None
    return DiffusersBackbone(pipe)
