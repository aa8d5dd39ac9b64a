"""Real diffusers pipelines (Stable Diffusion 1.x/2.x, SDXL, Stable Diffusion 3/3.5) behind the
interface the GPO trainer and group generation use — the one `TinyT2IPipeline` has natively:

    parameterization, scheduler, denoiser, encode_prompt(texts) -> (states, pooled),
    predict(x_t, t, states, pooled, denoiser=None), encode_images(images) -> model-space x0,
    decode_latents(x0) -> images, text_encoders(), set_denoiser(net), save_pretrained(path),
    __call__(texts, seeds=..., output_type="pil" | "latent")

Model space is the VAE latent space (scaled and shifted as the pipeline does), so training never
decodes; generation can hand back the latents it sampled (output_type="latent") so training does not
re-encode them either. The family (sd, sdxl, sd3) is read from the folder's model_index.json; a
family set in params/models.yaml is checked against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from PIL import Image

from gpo.errors import GpoError
from gpo.model.pipeline import images_to_tensor
from gpo.model.sampler import denoiser_autocast, solver_scheduler, unclipped

# model_index.json `_class_name` -> family; the embedded pipeline is `TinyT2IPipeline`
FAMILIES = {"TinyT2IPipeline": "embedded", "StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
            "StableDiffusion3Pipeline": "sd3"}


class DiffusersBackbone:
    """Wraps a `StableDiffusionPipeline`, `StableDiffusionXLPipeline` or `StableDiffusion3Pipeline`."""

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe = pipe
        self.kind = FAMILIES.get(type(pipe).__name__)
        if self.kind not in ("sd", "sdxl", "sd3"):
            raise GpoError(f"unsupported pipeline class {type(pipe).__name__}", field="models.family",
                           fix="use a StableDiffusion, StableDiffusionXL or StableDiffusion3 pipeline folder")
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.scheduler = unclipped(self.pipe.scheduler)  # the sampler trap, gpo/model/sampler.py

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

    @property
    def has_vae(self) -> bool:
        return True

    def text_encoders(self) -> list[torch.nn.Module]:
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        return [m for m in (getattr(self.pipe, n, None) for n in names) if m is not None]

    def to(self, device) -> "DiffusersBackbone":
        self.pipe.to(device)
        return self

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-token states, pooled vector or None) on the text encoders' device.
        SDXL: states = both encoders' penultimate layers concatenated, pooled = encoder 2's projection."""
        p = self.pipe
        device = self.text_encoders()[0].device
        if self.kind == "sd3":
            states, _, pooled, _ = p.encode_prompt(list(prompts), None, None, device=device,
                                                   do_classifier_free_guidance=False)
            return states, pooled
        if self.kind == "sdxl":
            states, _, pooled, _ = p.encode_prompt(list(prompts), device=device, do_classifier_free_guidance=False)
            return states, pooled
        states, _ = p.encode_prompt(list(prompts), device, 1, False)
        return states, None

    def time_ids(self, x_t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """SDXL micro-conditioning (original size, crop top-left, target size) in pixels, as the pipeline
        builds it for an uncropped image of this latent size: (h, w, 0, 0, h, w) per sample."""
        f = self.pipe.vae_scale_factor
        h, w = int(x_t.shape[-2]) * f, int(x_t.shape[-1]) * f
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=x_t.device).expand(x_t.shape[0], -1)

    def predict(self, x_t, t, states, pooled, denoiser=None) -> torch.Tensor:
        net = denoiser if denoiser is not None else self.denoiser
        t = t.to(x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if self.kind == "sd3":
            return net(hidden_states=x_t, timestep=t, encoder_hidden_states=states, pooled_projections=pooled,
                       return_dict=False)[0]
        if self.kind == "sdxl":
            cond = {"text_embeds": pooled, "time_ids": self.time_ids(x_t, states.dtype)}
            return net(x_t, t, encoder_hidden_states=states, added_cond_kwargs=cond, return_dict=False)[0]
        return net(x_t, t, encoder_hidden_states=states, return_dict=False)[0]

    # --- latent space <-> images -------------------------------------------------------------------------
    def _latent_affine(self, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(mean, std) with model space = (vae latent − mean) · scaling / std, as each pipeline decodes:
        SD: mean 0, std 1; SD3: mean = shift_factor; SDXL variants may set latents_mean/std."""
        cfg = self.pipe.vae.config
        mean, std = getattr(cfg, "shift_factor", None) or 0.0, 1.0
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            c = like.shape[1]
            mean = torch.tensor(cfg.latents_mean).view(1, c, 1, 1).to(like)
            std = torch.tensor(cfg.latents_std).view(1, c, 1, 1).to(like)
        return mean, std

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        vae = self.pipe.vae
        x = images_to_tensor(images).to(vae.device, vae.dtype)
        latents = vae.encode(x).latent_dist.mean
        mean, std = self._latent_affine(latents)
        return ((latents - mean) * vae.config.scaling_factor / std).float().cpu()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, output_type: str = "pil"):
        """Model-space latents → images, the way the pipeline decodes (plus its safety checker, if any)."""
        vae = self.pipe.vae
        z = latents.to(vae.device, vae.dtype)
        mean, std = self._latent_affine(z)
        image = vae.decode(z * std / vae.config.scaling_factor + mean, return_dict=False)[0]
        if getattr(self.pipe, "safety_checker", None) is not None:
            image, _ = self.pipe.run_safety_checker(image, vae.device, vae.dtype)
        return self.pipe.image_processor.postprocess(image, output_type=output_type)

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        self.pipe.save_pretrained(path, safe_serialization=safe_serialization)

    # --- generation: one seed per image ----------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], seeds: Sequence[int] | None = None,
                 num_inference_steps: int = 20, guidance_scale: float = 3.0, output_type: str = "pil",
                 solver: str = "default", precision: str = "fp32"):
        """Images (pil/np/pt) or, with output_type="latent", the sampled model-space latents (N, C, h, w)
        on the CPU in float32: decode them with `decode_latents`, train on them as they are. `solver` and
        `precision` as for the embedded pipeline (gpo/model/sampler.py): bf16 runs the denoiser's forward
        only under autocast and returns float32 (text encoders, guidance and the scheduler stay float32), for
        float32 weights only: a pipeline loaded in half precision (the GPU path) samples in its own dtype."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise GpoError("need one seed per prompt", field="seeds", value=len(seeds),
                           fix=f"pass {len(prompts)} seeds")
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]  # CPU noise: same image on any device
        own = self.pipe.scheduler
        self.pipe.scheduler = solver_scheduler(own, solver)  # for this call only: training keeps `own`
        try:
            with denoiser_autocast(self.denoiser, self.pipe.device, precision):
                latents = self.pipe(prompt=prompts, generator=gens, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, output_type="latent").images
        finally:
            self.pipe.scheduler = own
        if output_type == "latent":
            return ImagePipelineOutput(images=latents.float().cpu())
        return ImagePipelineOutput(images=self.decode_latents(latents, output_type))


def detect_family(path: str | Path) -> str:
    """The family a pipeline folder declares in model_index.json (embedded, sd, sdxl, sd3)."""
    index = Path(path) / "model_index.json"
    if not index.exists():
        raise GpoError("not a diffusers pipeline folder (no model_index.json)", file=str(path),
                       fix="point to a diffusers pipeline folder (save_pretrained output)")
    name = json.loads(index.read_text()).get("_class_name")
    if name not in FAMILIES:
        raise GpoError(f"unsupported pipeline class {name!r}", file=str(index), field="_class_name",
                       fix=f"use one of {sorted(FAMILIES)} (families {sorted(set(FAMILIES.values()))})")
    return FAMILIES[name]


def is_hub_id(ref: str | Path) -> bool:
    """'owner/name' that is not a folder here: a Hugging Face hub id (e.g. stabilityai/stable-diffusion-3.5-medium)."""
    text = str(ref)
    parts = text.split("/")
    return (not Path(text).exists() and len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))
            and "\\" not in text)


def load_any(path: str | Path, family: str = "auto", device: str | torch.device | None = "auto"):
    """The embedded pipeline, or a real diffusers pipeline wrapped in `DiffusersBackbone`.

    `path`: a diffusers pipeline folder, or a hub id ('owner/name'; only where the machine may reach the
    hub: gpo sets HF_HUB_OFFLINE=1 unless you export HF_HUB_OFFLINE=0, and a model already in the HF
    cache loads offline). `family` (params/models.yaml `family`): "auto" takes what the folder declares;
    any other value must match it (a wrong folder fails here, not mid-round). `device`: "auto" = this
    process's accelerator (cuda:<local rank> under `accelerate launch`, else cuda:0, else the CPU);
    None leaves the weights on the CPU."""
    from gpo.model.build import load_pipeline
    from gpo.model.device import process_state

    if device == "auto":
        device = process_state().device
    if is_hub_id(path):
        return _load_hub(str(path), family, device)
    found = detect_family(path)
    if family not in ("auto", found):
        raise GpoError(f"the pipeline folder holds a {found!r} model, params ask for {family!r}", file=str(path),
                       field="models.family (params/models.yaml)", value=family,
                       fix=f"set family: {found} (or auto), or point models.base to a {family} pipeline folder")
    if found == "embedded":
        pipe = load_pipeline(path)
        return pipe.to(device) if device is not None else pipe
    meta = json.loads((Path(path) / "model_index.json").read_text())
    # components saved as None (e.g. SD3 without T5, SD without safety checker) must be passed as None again
    absent = {k: None for k, v in meta.items() if isinstance(v, list) and v and v[0] is None}
    try:
        pipe = DiffusionPipeline.from_pretrained(path, use_safetensors=True, **absent)
    except (OSError, ValueError) as err:
        raise GpoError(f"cannot load pipeline: {err}", file=str(path),
                       fix="only safetensors weights are accepted") from None
    out = DiffusersBackbone(pipe)
    return out.to(device) if device is not None else out


def _load_hub(hub_id: str, family: str, device) -> DiffusersBackbone:
    try:
        pipe = DiffusionPipeline.from_pretrained(hub_id, use_safetensors=True)
    except Exception as err:  # offline, unknown id, gated model, no safetensors: one clear message
        raise GpoError(f"no folder {hub_id!r} here, and cannot load it as a hub id from the Hugging Face hub or its "
                       f"local cache: "
                       f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", field="models.base", value=hub_id,
                       fix="export HF_HUB_OFFLINE=0 on a machine that reaches the hub (and log in for gated models), "
                           "or download the pipeline once (`huggingface-cli download ID --local-dir DIR`) and "
                           "set models.base to that folder") from None
    out = DiffusersBackbone(pipe)
    if family not in ("auto", out.kind):
        raise GpoError(f"{hub_id!r} is a {out.kind!r} model, params ask for {family!r}", field="models.family",
                       value=family, fix=f"set family: {out.kind} (or auto)")
    return out.to(device) if device is not None else out
