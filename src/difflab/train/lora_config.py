"""The settings of one LoRA training run (``difflab train lora``): one frozen dataclass, checked on creation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

from difflab.core.lr_schedule import DEFAULT_LR_SCHEDULER, LR_SCHEDULERS

MixedPrecision = Literal["no", "fp16", "bf16"]
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# diffusers' examples/text_to_image/train_text_to_image_lora.py targets these four projections of every
# attention block (self- and cross-attention); the text encoder's CLIP attention names them differently.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Wider networks, in kohya-ss/sd-scripts' terms: its plain LoRA adapts every Linear and 1x1 conv of the transformer
# blocks (projections in and out, the feed-forward), and LoCon (LyCORIS; sd-scripts' conv_dim) also the 3x3 convs
# of the ResNet blocks and the down/up samplers, where outlines and corners are drawn.
UNET_NETWORKS: dict[str, tuple[str, ...]] = {
    "attention": UNET_TARGETS,
    "transformer": UNET_TARGETS + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"),
}
UNET_NETWORKS["locon"] = UNET_NETWORKS["transformer"] + ("conv1", "conv2", "conv_shortcut", "conv")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# Flux's transformer: "attention" is the image stream's projections (the usual --lora_layers of Flux LoRAs),
# "transformer" diffusers' train_dreambooth_lora_flux.py default (both streams' attention and feed-forwards).
# It has no convolutions, so no locon.
FLUX_NETWORKS: dict[str, tuple[str, ...]] = {"attention": ("to_q", "to_k", "to_v", "to_out.0")}
FLUX_NETWORKS["transformer"] = FLUX_NETWORKS["attention"] + (
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
    "ff_context.net.2")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class LoraTrainConfig:
    base: str  # model preset, diffusers folder or hub id (cached) of an SD 1.x-family, SDXL or Flux pipeline
    data: str  # folder of images with same-named .txt captions
    trigger: str  # word that calls up the learnt concept; fills {trigger} in caption_template
    caption_template: str = "{trigger}"  # caption of an image that has no .txt file
    rank: int = 8  # r: LoRA's inner dimension; 4-32 is usual for SD, a tiny model needs few
    alpha: Optional[float] = None  # the update is scaled by alpha / rank; None means alpha = rank (scale 1)
    learning_rate: float = 1e-3  # peak AdamW rate for the LoRA weights (diffusers' example: 1e-4 on SD1.5)
    text_encoder_learning_rate: Optional[float] = None  # None: the same as learning_rate
    warmup_steps: int = 20  # linear warm-up, then the schedule's decay
    # core.lr_schedule.LR_SCHEDULERS: cosine_floor (cosine to 10% of the peak) or diffusers'/kohya's constant,
    # constant_with_warmup, linear, cosine
    lr_scheduler: str = DEFAULT_LR_SCHEDULER
    steps: int = 500
    batch_size: int = 8
    weight_decay: float = 1e-2  # AdamW's decoupled decay, as diffusers' example
    grad_clip: float = 1.0
    text_encoder_lora: bool = False  # also train LoRA on the text encoder's attention (q/k/v/out projections)
    network: str = "attention"  # which U-Net layers get adapters: a key of UNET_NETWORKS
    # DreamBooth's prior preservation (Ruiz et al. 2022; kohya's reg_data_dir): a folder of captioned images of
    # what the model should keep drawing, typically made by the base model itself. Each step adds a batch of
    # them, and loss = loss(data) + prior_loss_weight * loss(reg_data).
    reg_data: Optional[str] = None
    prior_loss_weight: float = 1.0
    # kohya's masked loss, as a weight (train/masked_loss.py): latent pixels under the subject count
    # 1 + foreground_weight times. masks: a folder of same-named greyscale masks (white = subject), or "auto" for
    # pictures on a flat background (the subject is what differs from the border colour).
    foreground_weight: float = 0.0
    masks: Optional[str] = None
    # Min-SNR-gamma (diffusers' --snr_gamma, kohya's --min_snr_gamma; 5 is the paper's value): each sample's loss
    # weighted min(SNR(t), gamma) / SNR(t), / (SNR(t) + 1) for v-prediction. None = every timestep counts the same.
    min_snr_gamma: Optional[float] = None
    checkpoint_every: int = 100  # steps between training-state checkpoints (and LoRA files) on disk
    validate_every: int = 0  # steps between validation grids; 0 = only at the end when prompts are given
    validation_prompts: tuple[str, ...] = ()  # () = the first 4 distinct captions of the data
    validation_steps: int = 20  # sampling steps of validation images
    validation_guidance: float = 7.5
    seed: int = 0  # LoRA initialisation and every random draw of step k (batch, timesteps, noise)
    mixed_precision: MixedPrecision = "no"  # autocast on GPU; fp16 also scales the loss (GradScaler)
    gradient_checkpointing: bool = False  # trade compute for memory on big bases; no effect on results
    resolution: Optional[int] = None  # training image side; None = the base model's native size

    def __post_init__(self) -> None:
        _require(bool(self.trigger.strip()) and not any(c.isspace() for c in self.trigger.strip()),
                 f"trigger must be one word; got {self.trigger!r}")
        _require("{trigger}" in self.caption_template,
                 f"caption_template must contain {{trigger}}; got {self.caption_template!r}")
        _require(self.network in UNET_NETWORKS,
                 f"network must be one of {list(UNET_NETWORKS)}; got {self.network!r}")
        _require(math.isfinite(self.prior_loss_weight) and self.prior_loss_weight >= 0,
                 f"prior_loss_weight must be >= 0; got {self.prior_loss_weight}")
        _require(math.isfinite(self.foreground_weight) and 0 <= self.foreground_weight <= 1000,
                 f"foreground_weight must be in [0, 1000]; got {self.foreground_weight}")
        _require((self.foreground_weight > 0) == (self.masks is not None),
                 "foreground_weight and masks go together: a weight > 0 needs masks (a folder or 'auto'), and "
                 f"masks need a weight > 0; got foreground_weight {self.foreground_weight}, masks {self.masks!r}")
        _require(self.min_snr_gamma is None or (math.isfinite(self.min_snr_gamma) and 0 < self.min_snr_gamma <= 1000),
                 f"min_snr_gamma must be in (0, 1000] or None; got {self.min_snr_gamma}")
        _require(1 <= self.rank <= 1024, f"rank must be between 1 and 1024; got {self.rank}")
        _require(self.alpha is None or (math.isfinite(self.alpha) and self.alpha > 0),
                 f"alpha must be a positive number; got {self.alpha}")
        for name in ("learning_rate", "text_encoder_learning_rate"):
            value = getattr(self, name)
            _require(value is None or (math.isfinite(value) and 0 < value < 1), f"{name} must be in (0, 1); got {value}")
        _require(self.steps >= 1, f"steps must be >= 1; got {self.steps}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0; got {self.warmup_steps}")
        _require(self.lr_scheduler in LR_SCHEDULERS,
                 f"lr_scheduler must be one of {list(LR_SCHEDULERS)}; got {self.lr_scheduler!r}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        _require(self.grad_clip > 0, f"grad_clip must be > 0; got {self.grad_clip}")
        _require(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1; got {self.checkpoint_every}")
        _require(self.validate_every >= 0, f"validate_every must be >= 0; got {self.validate_every}")
        _require(self.validation_steps >= 1, f"validation_steps must be >= 1; got {self.validation_steps}")
        _require(0 <= self.seed < 2**32, f"seed must be in [0, 2**32); got {self.seed}")
        _require(self.mixed_precision in MIXED_PRECISIONS,
                 f"mixed_precision must be one of {list(MIXED_PRECISIONS)}; got {self.mixed_precision!r}")
        _require(self.resolution is None or (self.resolution >= 16 and self.resolution % 8 == 0),
                 f"resolution must be a multiple of 8 and >= 16; got {self.resolution}")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # what must match between a run and its --resume: anything that changes the weights' shapes or the draws
    RESUME_FIELDS = ("base", "data", "trigger", "caption_template", "rank", "alpha", "text_encoder_lora", "network",
                     "reg_data", "seed", "batch_size", "resolution")
