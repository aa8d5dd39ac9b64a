"""Typed, validated parameters. One pydantic model per params/*.yaml file.

Each field's description is its documentation (unit and effect); `commented_yaml` writes the YAML
files from these models, so comments and code cannot drift. Loading a bad file raises `GpoError`
naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from gpo.errors import GpoError

WORDS = ("ACE ANT APE ARM ART BAG BAT BED BEE BOX BUG BUS CAB CAN CAP CAR CAT COW CUP DAY DEN DOG "
         "DOT EAR EGG ELF ELK EYE FAN FIG FIN FOX FUN GAS GEM GUM GYM HAM HAT HEN HOP HUG HUT JAM JAR "
         "JAW JET JOY KEG KEY KID KIT LAB LAP LEG MAP MAT MUD MUG NAP NET NUT OAK OAR OWL PAN PAW PEA PEN "
         "PET PIE PIG PIN POT PUP RAT RAY RED RUG RUN SAW SEA SKY SUN TAB TAG TAP TEA TEN TOE TOY TUB VAN "
         "WAX WEB WIG YAK YAM ZAP ZEN ZIP").split()
# GPO's own text words (split practice): three-letter words that are not in WORDS, so the shipped base was
# never pretrained on them and no evaluation reads them. Not the count words ONE/SIX (the lower-casing
# tokenizer would share them with counting prompts) nor YAML 1.1 booleans such as YES (a YAML writer like
# DVC's leaves them unquoted, and PyYAML then reads True).
PRACTICE_WORDS = ("ADD AGE AID AIM AIR ASK AXE BAN BAR BAY BEG BET BID BIG BIN BIT BOW BOY BUD BUN BUY COD COG "
                  "COT CRY CUB CUT DAB DAD DIG DIM DIP DOE DRY DUE DUG DYE EEL ELM END ERA EWE FAR FAT FED FEW "
                  "FIR FIT FLY FOG FRY FUR GAP GEL GET GUN GUT HAY HEM HID HIP HIT HOG HOT HUB HUE ICE INK INN "
                  "IVY JAB JOB JOG JOT JUG LAD LAW LAY LID LIP LOG LOT LOW MAN MIX MOB MOP NAG NOD OAT ODD OIL "
                  "OLD ORB ORE OWN PAD PAL PEG PIT POD POP PUB PUT RAG RAM RIB RIM ROD ROW RUB SAD SAP SIP "
                  "SOY SPA SPY SUB TAN TAX TIE TIN TIP TOP TUG URN VET VOW WAG WAR WET WIN WOK ZOO").split()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --- world.yaml -----------------------------------------------------------------------------------
class CountingVocab(Strict):
    classes: list[str] = Field(["circle", "square", "triangle"], min_length=1,
                               description="object classes to count; must be the detector's class names")
    colors: list[str] = Field(["red", "green", "blue", "purple"],
                              description="colour words put before the class; [] for plain 'three cups'")
    counts: list[int] = Field([1, 2, 3, 4, 5, 6], min_length=1,
                              description="requested numbers of objects (each >= 1)")
    heldout_per_count: int = Field(3, ge=1,
                                   description="(colour, class) pairs held out per count: unseen combinations")

    @field_validator("counts")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(c < 1 for c in v):
            raise ValueError("every count must be >= 1")
        return v


class TextVocab(Strict):
    words: list[str] = Field(list(WORDS), min_length=2, description="words the text prompts ask for")
    templates: list[str] = Field(['"{word}" on a sign', '"{word}" in capital letters', '"{word}" printed on a label'],
                                 min_length=1, description="sentences with a {word} slot; the word first puts its "
                                 "letters at fixed token positions, which a tiny model can bind to image positions")
    heldout_words: int = Field(16, ge=1, description="words never used for training (split heldout_words)")
    heldout_share: float = Field(0.25, gt=0, lt=1,
                                 description="share of (template, training word) prompts held out (split heldout)")
    practice_words: list[str] = Field(list(PRACTICE_WORDS), description=(
        "GPO's own text words (split practice, × every template), used when gpo.yaml groups.text_pool is "
        "practice: never pretrained on, never evaluated, so the unseen words (heldout_words) measure the "
        "transfer"))

    @field_validator("words", "practice_words")
    @classmethod
    def _alpha(cls, v: list[str]) -> list[str]:
        bad = [w for w in v if not w.isalpha()]
        if bad:
            raise ValueError(f"words must be letters only (OCR scores letters): {bad[:5]}")
        return v

    @field_validator("templates")
    @classmethod
    def _slot(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if "{word}" not in t]
        if bad:
            raise ValueError(f"each template needs a {{word}} slot: {bad[:3]}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _practice_for_own_words(cls, data: object) -> object:
        """The embedded practice words belong to the embedded words: a file that sets its own `words` and no
        `practice_words` (e.g. a real model's world.yaml) gets none, rather than three-letter words it never asked for."""
        if isinstance(data, dict) and "words" in data and "practice_words" not in data:
            if [str(w).upper() for w in data["words"] or []] != list(WORDS):
                data = {**data, "practice_words": []}
        return data

    @field_validator("practice_words")
    @classmethod
    def _practice_apart(cls, v: list[str], info: ValidationInfo) -> list[str]:
        both = sorted({w.upper() for w in info.data.get("words", [])} & {w.upper() for w in v})
        if both:
            raise ValueError(f"{both[:5]} are in both words and practice_words: a practice word must be one that "
                             "is never pretrained on nor evaluated; remove it from one of the two lists")
        return v


class PromptParams(Strict):
    seed: int = Field(0, description="seed of the held-out draws; same seed, same splits")
    counting: CountingVocab = CountingVocab()
    text: TextVocab = TextVocab()


class RenderParams(Strict):
    size: int = Field(32, ge=16, le=512, description="image side, pixels (= the model's resolution)")
    supersample: int = Field(4, ge=1, le=8, description="draw at this multiple, then reduce: anti-aliased edges")
    min_object: float = Field(6.0, gt=0, description="smallest shape side, pixels")
    max_object: float = Field(10.0, gt=0, description="largest shape side, pixels")
    gap: float = Field(1.0, ge=0, description="free pixels between two shapes' boxes")
    text_height: float = Field(0.4, gt=0, le=0.9, description="cap height of a word, share of the image side")
    text_jitter: float = Field(1.0, ge=0, description="max shift of a word's centre, pixels")
    background_min: int = Field(205, ge=0, le=255, description="light backgrounds: channels uniform in [min, 255]")


class WorldParams(Strict):
    prompts: PromptParams = PromptParams()
    render: RenderParams = RenderParams()


# --- model.yaml -----------------------------------------------------------------------------------
class ModelParams(Strict):
    arch: Literal["unet", "sd3"] = Field("unet", description="unet: UNet2DConditionModel, ε-prediction, DDIM; "
                                         "sd3: SD3Transformer2DModel, flow matching, flow-Euler")
    resolution: int = Field(32, ge=16, description="pixels per side; must equal world.render.size")
    max_prompt_tokens: int = Field(40, ge=8, description="text encoder context, characters + 2")
    text_width: int = Field(64, ge=8, description="text encoder hidden size (= cross-attention dim)")
    text_layers: int = Field(2, ge=1, description="text encoder transformer layers")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction", description="unet: what the network predicts; v weights content errors at high noise, "
        "where the prompt decides the image (ε barely trains conditioning there)")
    unet_channels: list[int] = Field([32, 64, 64], min_length=2, description="unet: channels per resolution level")
    unet_layers_per_block: int = Field(1, ge=1, description="unet: resnet layers per level")
    attention_head_dim: int = Field(8, ge=4, description="channels per attention head")
    patch_size: int = Field(2, ge=1, description="sd3: pixels per patch side")
    dit_layers: int = Field(4, ge=1, description="sd3: joint transformer blocks")
    dit_width: int = Field(64, ge=16, description="sd3: hidden size (multiple of attention_head_dim)")


class PretrainParams(Strict):
    seed: int = Field(0, description="init and data seed")
    steps: int = Field(5000, ge=1, description="optimizer steps (the shipped base: 5000; at 2500 it could not yet "
                       "spell its own training words, held-out text exact 0.154)")
    batch_size: int = Field(32, ge=1, description="images per step")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate after warm-up (then constant)")
    warmup_steps: int = Field(200, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    text_share: float = Field(0.5, ge=0, le=1, description="share of each batch drawn from text prompts")
    flow_density: Literal["logit_normal", "uniform"] = Field(
        "uniform", description="flow models: density of σ during pretraining; uniform trains the low-noise end "
        "that pixel-space detail needs, logit_normal is the SD3 latent default")
    cfg_dropout: float = Field(0.1, ge=0, lt=1, description="share of prompts replaced by '' (teaches CFG)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of weights saved as the model; 0 = off")
    save_every: int = Field(250, ge=1, description="steps between snapshots (resume + calibration sweeps)")
    threads: int = Field(2, ge=1, description="torch CPU threads")


class PretrainFile(Strict):
    model: ModelParams = ModelParams()
    pretrain: PretrainParams = PretrainParams()


# --- rewards.yaml ---------------------------------------------------------------------------------
class DetectorParams(Strict):
    weights: str = Field("release/detector.pt", description="YOLO weights (.pt) used for the counting reward "
                         "(relative to the workspace); ultralytics unpickles them, so only files you trust")
    model_yaml: str = Field("yolov8n.yaml", description="ultralytics architecture trained from scratch")
    train_images: int = Field(300, ge=8, description="rendered training images")
    val_images: int = Field(60, ge=4, description="rendered validation images")
    epochs: int = Field(30, ge=1, description="training epochs")
    batch: int = Field(16, ge=1, description="training batch size")
    imgsz: int = Field(128, ge=32, description="detector input side, pixels (images are upscaled to it)")
    conf: float = Field(0.4, gt=0, lt=1, description="τ: keep detections with confidence >= τ")
    seed: int = Field(0, description="render and training seed")


class OcrParams(Strict):
    languages: list[str] = Field(["en"], min_length=1, description="EasyOCR language codes")
    upscale: int = Field(128, ge=32, description="images are resized to this side before reading, pixels")


class RewardsFile(Strict):
    detector: DetectorParams = DetectorParams()
    ocr: OcrParams = OcrParams()
    max_failed_share: float = Field(0.05, ge=0, le=1, description="share of images a reward model may fail on "
                                    "(raise, or return a reward outside [0, 1]) before the run stops; failed "
                                    "images are kept in the tables with their reason and left out of training")


# --- sampling, shared by eval.yaml and gpo.yaml ----------------------------------------------------
class SamplingParams(Strict):
    steps: int = Field(6, ge=1, description="sampler steps (6 UniPC steps in bf16: 3.1× the images/s of 10 DDIM steps "
                       "in fp32, held-out counting +0.009 [-0.041, +0.059] paired, same seeds; 4 steps lose 0.069: "
                       "benchmarks/results/sampler_solvers.md, throughput.md)")
    guidance_scale: float = Field(2.0, ge=1, description="classifier-free guidance scale (2: the best held-out counting "
                                  "of the sweep, text level with 3; 4.5 over-draws)")
    batch_size: int = Field(64, ge=1, description="images generated per forward pass")
    solver: Literal["auto", "default", "ddim", "dpm++", "unipc"] = Field(
        "auto", description="ODE solver of the sampler, built from the model's own noise schedule "
        "(gpo/model/sampler.py): auto = unipc for DDPM-type schedules (embedded UNet, SD, SDXL), the model's own "
        "for flow matching (SD3, MMDiT); default = the model's scheduler (DDIM for the embedded model); ddim; "
        "dpm++ (DPM-Solver++ 2M); unipc (UniPC 2nd order); training always uses the model's scheduler")
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="denoiser precision while sampling: bf16 autocast of float32 weights (AVX512-BF16/AMX "
        "CPUs: 1.9× fp32; guidance and the ODE step stay float32; half-precision GPU weights keep their dtype), or fp32")

    def sampler_kwargs(self) -> dict:
        """The keyword arguments of gpo.generate.generate / generate_to that these params set."""
        return {"steps": self.steps, "guidance_scale": self.guidance_scale, "batch_size": self.batch_size,
                "solver": self.solver, "precision": self.precision}


# --- eval.yaml ------------------------------------------------------------------------------------
class EvalParams(SamplingParams):
    counting_seeds: int = Field(24, ge=1, description="images per held-out counting prompt")
    text_seeds: int = Field(6, ge=1, description="images per held-out text prompt (split heldout); 67 prompts × 6 ≥ 400")
    heldout_word_seeds: int = Field(9, ge=1, description="images per prompt of an unseen word (split heldout_words); "
                                    "48 prompts × 9 ≥ 400: the text test of a base that spells its training words")
    seed_offset: int = Field(10_000, ge=0, description="evaluation seeds are offset, offset+1, ...; the same for every model compared")
    gt_images: int = Field(300, ge=10, description="rendered ground-truth images per task for reward-model checks")


class EvalFile(Strict):
    eval: EvalParams = EvalParams()


# --- models.yaml ----------------------------------------------------------------------------------
class ModelsFile(Strict):
    base: str = Field("release/base", description="the model round 1 starts from: a diffusers pipeline folder "
                      "(relative to the workspace); release/base is the shipped embedded model")
    family: Literal["auto", "embedded", "sd", "sdxl", "sd3"] = Field(
        "auto", description="model family: auto = what the folder's model_index.json declares; embedded, sd "
        "(SD 1.x/2.x UNet), sdxl (UNet + added text/time conditioning), sd3 (SD3/3.5 MMDiT, flow) = checked "
        "against the folder, so a wrong folder fails at load")


# --- gpo.yaml -------------------------------------------------------------------------------------
class GroupParams(SamplingParams):
    group_size: int = Field(8, ge=2, description="G: images per prompt (one group)")
    prompts_per_round: int = Field(25, ge=1, description="train prompts drawn per iteration (counting prompts "
                                   "spread evenly over the requested counts)")
    text_share: float = Field(0.2, ge=0, le=1, description="share of each iteration's prompts that are text "
                              "prompts (floored; at least one each while the share is above 0 / below 1), the rest "
                              "counting (0.2: 20 counting + 5 text)")
    text_pool: Literal["train", "practice"] = Field("train", description=(
        "where the text prompts come from: train = the base's training words (it spells them: their groups rarely "
        "have spread, text does not move), practice = world.yaml's practice words, never pretrained on "
        "(27 prompts, 7 of them practice, lifted unseen-word exact +9.7 [+6.7, +12.7] points in the first round "
        "of 17 iterations and collapsed in the second; 25 prompts, 5 of them practice: +0.2 after one round, "
        "−6.9 after two, captions −5.7 / −7.5: docs/gpo.md, Text)"))
    iterations: int = Field(17, ge=1, description="semi-online: generate → score → train this many times per round, "
                            "each iteration on fresh prompts from the previous one's weights (1 = offline: one "
                            "batch of groups a round); evaluation and promotion stay once per round (17: two rounds, "
                            "34 iterations at K = 2, took 24.3 GPO minutes, about 43 s an iteration, and gained +20.4 "
                            "[+14.8, +25.9] points of held-out counting in the fresh-clone make run: README; 2 × 14 "
                            "gained +18.5 [+13.1, +23.9]: benchmarks/results/gpo_tuning.md K2_it14x2)")
    seed: int = Field(0, description="base seed: image seed = seed + 1_000_000·i + 1000·prompt index + member, "
                      "i = (round − 1)·iterations + iteration (a chain's i-th batch of groups)")
    keep_latents: bool = Field(False, description="VAE pipelines (sd, sdxl, sd3): also save each image's sampled "
                               "latents (<seed>.latents.safetensors beside its PNG) so training uses them instead "
                               "of re-encoding the PNG with the VAE")


class TrainParams(Strict):
    arm: Literal["gpo", "dpo", "dpo-random", "group-unweighted", "dgpo"] = Field(
        "gpo", description="loss: gpo (default) or an ablation arm of docs/GPO.md")
    beta: float = Field(5000.0, gt=0, description="β on the per-element mean squared error: where the sigmoid "
                        "saturates, i.e. how far a pair may be pushed, (β/2)·|Δ_i − Δ_j| ≈ 1, before it stops pulling; "
                        "under AdamW the size of a step is set by lr, not by β (5000: the logged margin (β/2)(Δ_l − Δ_w) "
                        "reached 1–2.5 within 20 steps of an iteration at lr 2e-5 on the 2,500-step embedded base)")
    reference: Literal["iteration", "round"] = Field(
        "iteration", description="the frozen reference of a semi-online round's iterations: iteration = the "
        "iteration's start model (each iteration pulls from where the last one stopped, so nothing bounds the drift "
        "of a round), round = the round's start model for every iteration (the loss saturates once the policy is "
        "(β/2)·|Δ_i − Δ_j| past the round's start: the KL-bounded Diffusion-DPO objective); with one iteration the two "
        "are the same (iteration is the default: on the practice-word recipe, round at β 5000 or 1000 held round 1's "
        "on-policy counting at 0.58 → 0.63 where the same prompts with per-iteration references climbed to 0.74: "
        "benchmarks/results/on_policy_curve.md)")
    anchor: float = Field(0.0, ge=0, description="weight of the winner anchor added to the loss (0 = the plain "
                          "loss of docs/GPO.md; see gpo/loss.py anchor_term)")
    anchor_kind: Literal["dpop", "sft"] = Field("dpop", description="dpop: pull back winners the policy explains "
                                                "worse than the reference; sft: pull every winner toward a better fit")
    noise: Literal["shared", "seed"] = Field("shared", description="shared: one fresh noise per group draw "
                                             "(docs/GPO.md); seed: each member noised with its own sampling noise")
    guidance_scale: float = Field(1.0, ge=1.0, description="1 = Δ on the conditional prediction (Diffusion-DPO); "
                                  ">1 = Δ on the guided prediction uncond + w·(cond − uncond), what the sampler follows")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the weights over the optimizer steps, started "
                             "at the start model; the round's model is the EMA (0 = off, the last iterate)")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate: the size of an update (5e-5: docs/gpo.md; "
                      "1e-4 halved exact OCR on the 2,500-step base)")
    exact_weight: float = Field(0.0, ge=0, le=1, description="training reward = (1 − w)·graded + w·[exactly right] "
                                "(0 = GPO.md's graded reward; > 0 pays for the exact count or word over near "
                                "misses); held-out metrics always use the graded reward")
    draws: int = Field(2, ge=1, description="K: (timestep, noise) draws per group per step, each shared by the "
                       "whole group, losses averaged (1 = one draw, the noisiest estimate; DGPO trains 4; with "
                       "noise: seed only the timestep is drawn; dpo-random draws its pair per draw; 2: an iteration "
                       "trained in about 26 s against 64 s at 4 in the fresh-clone make runs, so twice the iterations "
                       "fit the budget: 34 of them gained +20.4 points, where 18 chained at K = 4 on counting prompts only gained +16.0)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="max gradient norm")
    epochs: int = Field(4, ge=1, description="passes over the round's groups")
    groups_per_step: int = Field(4, ge=1, description="groups whose gradients are summed per optimizer step")
    micro_batch: int = Field(32, ge=1, description="(draw, member) pairs per forward/backward: memory is flat in "
                             "G·draws beyond it (above it, one extra forward pass without a graph)")
    timestep_min_fraction: float = Field(0.7, ge=0, lt=1, description="train only on the noisier part of t (≥ this "
                                         "share); GPO.md: restrict t for ≤ 10-step rollouts (0.7: +5.6 points of "
                                         "held-out counting against 0.5's +3.5 in two rounds, docs/gpo.md)")
    lora_rank: int = Field(0, ge=0, description="0 = full fine-tuning with a frozen reference copy; >0 = LoRA rank "
                           "(reference = adapters disabled)")
    lora_alpha: int = Field(0, ge=0, description="LoRA alpha (0 = 2·rank)")
    lora_targets: list[str] = Field(["to_q", "to_k", "to_v", "to_out.0"], description="module names that get LoRA")
    seed: int = Field(0, description="timestep/noise/shuffle seed")
    threads: int = Field(2, ge=1, description="torch CPU threads")
    gradient_checkpointing: bool = Field(False, description="recompute the denoiser's activations during the "
                                         "backward pass: less activation memory for about one extra forward; "
                                         "the same gradient")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "bf16", description="autocast through accelerate (weights and AdamW state stay float32); bf16 also runs on "
        "CPU (with fp32_attention_on_cpu 1.32× fp32's group-steps/s, held-out counting +0.5 [-3.2, +4.2] points "
        "against fp32 on the same batches), fp16 needs a GPU (gradients loss-scaled; an overflowing step is "
        "skipped by the scaler); no = float32")
    fp32_attention_on_cpu: bool = Field(True, description="with bf16 on the CPU, attention runs in float32 where "
                                        "a backward follows (the CPU's bf16 attention backward is the slow part: "
                                        "1.32× fp32's group-steps/s with it, 0.77× without; benchmarks/results/"
                                        "throughput.md); no effect on a GPU or in fp32")
    precompute_prompt_embeds: bool = Field(True, description="encode each prompt of the round once before the "
                                           "loop, then move the text encoders off the accelerator for training "
                                           "(same numbers as encoding per group)")
    max_nonfinite_steps: int = Field(3, ge=1, description="optimizer steps in a row with a NaN/inf loss or "
                                     "gradient (each skipped and logged) before the round stops")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _unquoted_no(cls, v):
        # YAML 1.1 reads an unquoted `no` as false; DVC writes it unquoted when `dvc exp run -S` edits the file
        return "no" if v is False else v


class GpoFile(Strict):
    groups: GroupParams = GroupParams()
    train: TrainParams = TrainParams()


# --- run.yaml (orchestration: DVC rounds, promotion rule, MLflow) --------------------------------
class RoundEntry(Strict):
    prev: int = Field(ge=0, description="the round whose champion this round starts from (always key − 1)")
    start: str = Field("auto", description="'auto' = that champion; a registered model version number "
                       "(set by `gpo promote` / `gpo rollback`) = start from that version instead")

    @field_validator("start")
    @classmethod
    def _start(cls, v: str) -> str:
        if v != "auto" and not v.isdigit():
            raise ValueError("start must be 'auto' or a registered model version number such as '3'")
        return v


class PromotionParams(Strict):
    z: float = Field(1.0, ge=0, description="a round's model becomes champion when its headline (mean of held-out "
                     "counting accuracy and OCR mean reward) beats the champion's by more than z standard errors "
                     "of the difference (from the evaluation intervals); 0 = any gain")


class MlflowParams(Strict):
    tracking_uri: str = Field("sqlite:///mlflow/mlflow.db", description="MLflow backend; a relative sqlite path "
                              "is taken from the workspace")
    artifact_root: str = Field("mlflow/artifacts", description="folder of the file artifact store (workspace-relative)")
    experiment: str = Field("gpo-embedded", description="experiment holding one run per round")
    model_name: str = Field("gpo-embedded", description="registered model; every round adds a version, alias "
                            "'champion' marks the best")


class RunFile(Strict):
    rounds: dict[str, RoundEntry] = Field(
        {str(i): RoundEntry(prev=i - 1) for i in (1, 2)},
        description="rounds DVC templates stages for (foreach): key = round number as a quoted string")
    promotion: PromotionParams = PromotionParams()
    mlflow: MlflowParams = MlflowParams()

    @field_validator("rounds")
    @classmethod
    def _chain(cls, v: dict[str, RoundEntry]) -> dict[str, RoundEntry]:
        keys = list(v)
        if keys != [str(i) for i in range(1, len(keys) + 1)]:
            raise ValueError(f"round keys must be '1', '2', ... in order, got {keys}")
        bad = [k for k, r in v.items() if r.prev != int(k) - 1]
        if bad:
            raise ValueError(f"round {bad[0]} must have prev: {int(bad[0]) - 1}")
        return v

    def with_rounds(self, n: int) -> "RunFile":
        """The same file listing rounds 1..n (existing entries kept)."""
        rounds = {str(i): self.rounds.get(str(i), RoundEntry(prev=i - 1)) for i in range(1, n + 1)}
        return self.model_copy(update={"rounds": rounds})


FILES: dict[str, type[Strict]] = {"world.yaml": WorldParams, "pretrain.yaml": PretrainFile,
                                   "rewards.yaml": RewardsFile, "eval.yaml": EvalFile,
                                   "models.yaml": ModelsFile, "gpo.yaml": GpoFile,
                                   "run.yaml": RunFile}
M = TypeVar("M", bound=Strict)


def load(path: str | Path, model: type[M]) -> M:
    """Load and validate one params file; any problem becomes one GpoError with file/key/value/fix."""
    path = Path(path)
    if not path.exists():
        raise GpoError("params file not found", file=str(path),
                       fix="run `gpo params --write` to create the defaults, or pass the right --params folder")
    return load_text(path.read_text(), model, path)


def load_text(text: str, model: type[M], path: Path) -> M:
    """Validate YAML text as the params file `path` (errors name that file)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise GpoError(f"not valid YAML: {err}", file=str(path), fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise GpoError("top level must be a mapping of keys", file=str(path), value=type(data).__name__,
                       fix="write `key: value` lines")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(x) for x in first["loc"]) or "(top level)"
        allowed = first["msg"]
        if first["type"] == "extra_forbidden":
            allowed = f"unknown key; allowed here: {_allowed_keys(model, first['loc'][:-1])}"
        fix = _describe(model, first["loc"])
        if first["type"] in RANGE_ERRORS:  # quote the allowed range (and the default), not the description
            fix = f"{key} must be {_range(model, first['loc']) or first['msg']}{_default(model, first['loc'])}"
        raise GpoError(f"invalid parameter ({allowed})", file=str(path), field=key,
                       value=first.get("input"), fix=fix) from None


# pydantic error types of a value outside its field's bounds (Field ge/gt/le/lt, min_length/max_length)
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"}


def _range(model: type[Strict], loc: tuple) -> str:
    """A field's bounds in words: '> 0', '>= 1 and <= 8', 'a list of at least 1 item'."""
    _, info = _field_info(model, loc)
    if info is None:
        return ""
    parts = []
    for meta in info.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {getattr(meta, attr)}")
        if getattr(meta, "min_length", None) is not None:
            parts.append(f"a list of at least {meta.min_length} item{'s' * (meta.min_length != 1)}")
        if getattr(meta, "max_length", None) is not None:
            parts.append(f"a list of at most {meta.max_length} items")
    return " and ".join(parts)


def _default(model: type[Strict], loc: tuple) -> str:
    _, info = _field_info(model, loc)
    if info is None or info.is_required():
        return ""
    return f" (default: {info.get_default(call_default_factory=True)!r})"


def _field_info(model: type[Strict], loc: tuple) -> tuple[type | None, object | None]:
    cur, info = model, None
    for part in loc:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None, info
        info = cur.model_fields[part]
        cur = info.annotation
    return cur, info


def _allowed_keys(model: type[Strict], loc: tuple) -> list[str]:
    cur, _ = _field_info(model, loc) if loc else (model, None)
    return sorted(cur.model_fields) if isinstance(cur, type) and issubclass(cur, BaseModel) else []


def _describe(model: type[Strict], loc: tuple) -> str:
    _, info = _field_info(model, loc)
    if info is None or not info.description:
        return "see the comments in the default params file (`gpo params --write`)"
    return f"expected: {info.description}"


def load_all(folder: str | Path) -> dict[str, Strict]:
    """Every params file of a folder, keyed by file name."""
    return {name: load(Path(folder) / name, model) for name, model in FILES.items()}


def check_base(models: ModelsFile, file: str | Path, root: str | Path) -> Path:
    """models.yaml `base:` must name a diffusers pipeline folder (relative to the workspace `root`).

    Validating the YAML alone said `models.yaml: ok` for a folder that does not exist; the first stage
    that loads it failed later, naming the folder but not the setting. Returns the resolved folder.
    """
    path = Path(models.base)
    path = path if path.is_absolute() else Path(root) / path
    what = None
    if not path.is_dir():
        what = "the base model folder does not exist"
    elif not (path / "model_index.json").exists():
        what = "the base model folder is not a diffusers pipeline (no model_index.json)"
    if what:
        raise GpoError(what, file=str(file), field="base", value=models.base,
                       fix=f"set `base:` in {file} to a diffusers pipeline folder (relative to {root}; "
                           "release/base is the shipped embedded model), or restore the shipped one with "
                           "`git checkout -- release/base`")
    return path


def commented_yaml(obj: Strict, indent: int = 0) -> str:
    """YAML of a params object with each field's description as a comment above it."""
    lines: list[str] = []
    pad = " " * indent
    for name, info in type(obj).model_fields.items():
        value = getattr(obj, name)
        if info.description:
            lines.append(f"{pad}# {info.description}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(commented_yaml(value, indent + 2))
        else:
            if isinstance(value, dict):  # e.g. run.yaml rounds: one flow-style entry per line
                plain = {k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in value.items()}
                dumped = yaml.safe_dump({name: plain}, default_flow_style=None, width=10_000, sort_keys=False)
                lines += [pad + line for line in dumped.rstrip().splitlines()]
                continue
            dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=10_000, sort_keys=False)
            lines.append(pad + dumped.strip().removeprefix("{").removesuffix("}"))
    return "\n".join(lines)


def save(path: str | Path, obj: Strict) -> Path:
    """Write a params file atomically, with its comments (used by --write, `gpo promote`, flow overrides)."""
    from gpo.io import atomic_write_text

    path = Path(path)
    out = atomic_write_text(path, f"# {path.name}: written by gpo (`gpo params --write` makes the defaults); "
                                  "edit values freely.\n" + commented_yaml(obj) + "\n")
    if isinstance(obj, (RunFile, GpoFile)) and (path.parent / "run.yaml").exists() and (path.parent / "gpo.yaml").exists():
        from gpo.graph import write_graph

        write_graph(path.parent)  # the DVC stage graph follows the rounds and groups.iterations it derives from
    return out


def write_defaults(folder: str | Path, overwrite: bool = False) -> list[Path]:
    written = []
    for name, model in FILES.items():
        path = Path(folder) / name
        if overwrite or not path.exists():
            written.append(save(path, model()))
    return written
