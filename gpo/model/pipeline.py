"""`TinyT2IPipeline`: the embedded world's text-to-image pipeline, in diffusers format.

Pixel space (no VAE): the denoiser works on RGB in [-1, 1] at the world's resolution. Two denoisers
share one interface: a `UNet2DConditionModel` with ε-prediction sampled by DDIM, or an
`SD3Transformer2DModel` with flow matching sampled by flow-Euler. Both samplers are deterministic
ODEs, and every image has its own recorded seed for its starting noise.

    pipe = TinyT2IPipeline.from_pretrained("release/base")
    image = pipe("three red circles", seeds=[7]).images[0]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers import (DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler,
                       ImagePipelineOutput, SD3Transformer2DModel, UNet2DConditionModel)
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from gpo.errors import GpoError
from gpo.model.sampler import denoiser_autocast, solver_scheduler


def images_to_tensor(images) -> torch.Tensor:
    """PIL RGB images → float tensor (N, 3, H, W) in [-1, 1], the denoiser's pixel space."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


class TinyT2IPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->denoiser"

    def __init__(self, denoiser: UNet2DConditionModel | SD3Transformer2DModel, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer, scheduler: DDIMScheduler | FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(denoiser=denoiser, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)

    # --- pieces the trainers reuse -------------------------------------------------------------
    @property
    def parameterization(self) -> str:
        if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler):
            return "flow"
        return self.scheduler.config.prediction_type

    @property
    def resolution(self) -> int:
        return int(self.denoiser.config.sample_size)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=False,
                  return_tensors="pt").input_ids
        if ids.shape[1] > tok.model_max_length:
            longest = max(prompts, key=len)
            raise GpoError("prompt longer than the text encoder's context", value=longest,
                           field="tokenizer.model_max_length",
                           fix=f"shorten the prompt to fit {tok.model_max_length} tokens")
        return ids

    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token states for cross-attention, pooled vector) for each prompt."""
        out = self.text_encoder(self.tokenize(prompts).to(self.text_encoder.device))
        return out.last_hidden_state, out.pooler_output

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor,
                denoiser: torch.nn.Module | None = None) -> torch.Tensor:
        """The denoiser's output (ε, v or velocity) — one call signature for UNet and MMDiT."""
        net = denoiser if denoiser is not None else self.denoiser
        t = t.to(x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if isinstance(self.denoiser, SD3Transformer2DModel):
            return net(hidden_states=x_t, encoder_hidden_states=states, pooled_projections=pooled,
                       timestep=t, return_dict=False)[0]
        return net(x_t, t, encoder_hidden_states=states, return_dict=False)[0]

    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.text_encoder]

    def set_denoiser(self, net: torch.nn.Module) -> None:
        self.register_modules(denoiser=net)

    def encode_images(self, images) -> torch.Tensor:
        """Pixel space is model space here: RGB in [-1, 1]."""
        return images_to_tensor(images)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """One independent starting noise per seed, so an image depends on its own seed only."""
        c, s = int(self.denoiser.config.in_channels), self.resolution
        return torch.stack([torch.randn(c, s, s, generator=torch.Generator().manual_seed(int(seed)))
                            for seed in seeds])

    # --- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], seeds: Sequence[int] | None = None,
                 num_inference_steps: int = 20, guidance_scale: float = 3.0, output_type: str = "pil",
                 return_dict: bool = True, solver: str = "default", precision: str = "fp32"):
        """Images for prompts, one seed each. `solver`: how the sampling ODE is integrated (default = the
        pipeline's scheduler; ddim, dpm++, unipc: gpo/model/sampler.py); `precision`: fp32, or bf16 autocast
        for the denoiser calls (guidance and the ODE step stay float32)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise GpoError("need one seed per prompt", field="seeds", value=len(seeds),
                           fix=f"pass {len(prompts)} seeds")
        device = self.denoiser.device
        states, pooled = self.encode_prompt(prompts)
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            u_states, u_pooled = self.encode_prompt([""])
            states = torch.cat([u_states.expand_as(states), states])
            pooled = torch.cat([u_pooled.expand_as(pooled), pooled])
        x = self.initial_noise(seeds).to(device)
        scheduler = solver_scheduler(self.scheduler, solver)
        scheduler.set_timesteps(num_inference_steps, device=device)
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        with denoiser_autocast(self.denoiser, device, precision):  # the same mechanism as SD/SDXL/SD3
            for t in self.progress_bar(scheduler.timesteps):
                inp = torch.cat([x, x]) if use_cfg else x
                if hasattr(scheduler, "scale_model_input"):  # identity for DDIM, DPM-Solver++, UniPC; flow-Euler has none
                    inp = scheduler.scale_model_input(inp, t)
                out = self.predict(inp, t, states, pooled)
                if use_cfg:
                    uncond, cond = out.chunk(2)
                    out = uncond + guidance_scale * (cond - uncond)
                x = scheduler.step(out, t, x, return_dict=False)[0]
        images = ((x.clamp(-1, 1) + 1) / 2).cpu()
        if output_type == "pt":
            result = images
        else:
            arr = (images.permute(0, 2, 3, 1).float().numpy() * 255).round().astype(np.uint8)
            result = arr if output_type == "np" else [Image.fromarray(a) for a in arr]
        return ImagePipelineOutput(images=result) if return_dict else (result,)
