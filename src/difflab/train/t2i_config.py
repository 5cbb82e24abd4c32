"""The recipe of the bundled text-to-image model: one frozen dataclass per component, loaded from TOML.

A config file has one table per dataclass below (``[data]``, ``[vae]``, ``[text_encoder]``, ``[unet]``,
``[noise]``, ``[vae_training]``, ``[decoder_training]``, ``[text_training]``, ``[unet_training]``, ``[eval]``) plus a top-level
``seed``. A missing field takes its default; an unknown field, a wrong type or a bad value is a ``ValueError``
that names the field as ``table.field``. ``configs/tiny-shapes.toml`` is the committed recipe.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from difflab.data.shapes import BASE_SHAPES, SHAPES

Schedule = Literal["linear", "scaled_linear"]
Prediction = Literal["epsilon", "v_prediction"]
Reconstruction = Literal["l1", "mse"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_channels(channels: tuple[int, ...], groups: int, levels: int | None = None) -> None:
    _require(len(channels) >= 2, f"block_out_channels must list at least 2 levels; got {list(channels)}")
    if levels is not None:
        _require(len(channels) == levels, f"block_out_channels must have {levels} entries; got {list(channels)}")
    _require(all(c > 0 and c % groups == 0 for c in channels),
             f"block_out_channels must be positive multiples of norm_num_groups={groups}; got {list(channels)}")


@dataclass(frozen=True)
class DataConfig:
    resolution: int = 64  # image side; the analyzer and the bundled model use 64
    shapes: tuple[str, ...] = BASE_SHAPES  # hexagon stays out: it is taught later with a LoRA
    dataset_size: int = 1_000_000  # sample index range; every index is a distinct jittered render

    def __post_init__(self) -> None:
        _require(self.resolution >= 16 and self.resolution % 8 == 0,
                 f"resolution must be a multiple of 8 and >= 16; got {self.resolution}")
        _require(len(self.shapes) > 0 and all(s in SHAPES for s in self.shapes),
                 f"shapes must be a non-empty subset of {list(SHAPES)}; got {list(self.shapes)}")
        _require(self.dataset_size >= 1, f"dataset_size must be >= 1; got {self.dataset_size}")


@dataclass(frozen=True)
class VAEConfig:
    # Latent factor = 2 ** (levels - 1): three levels turn 64x64x3 into 16x16x4 (12x fewer numbers).
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    mid_block_attention: bool = True  # one self-attention at the latent resolution, as SD's VAE has

    def __post_init__(self) -> None:
        _check_channels(self.block_out_channels, self.norm_num_groups)
        _require(self.layers_per_block >= 1, f"layers_per_block must be >= 1; got {self.layers_per_block}")
        _require(self.latent_channels >= 1, f"latent_channels must be >= 1; got {self.latent_channels}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class TextEncoderConfig:
    hidden_size: int = 128  # also the U-Net's cross_attention_dim
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 512
    # Prompts are padded to this many tokens (tokenizer.model_max_length). The longest caption is 13 tokens
    # with bos/eos; 32 leaves room for users' longer prompts before truncation.
    max_position_embeddings: int = 32

    def __post_init__(self) -> None:
        _require(self.hidden_size >= 8, f"hidden_size must be >= 8; got {self.hidden_size}")
        _require(self.num_attention_heads >= 1 and self.hidden_size % self.num_attention_heads == 0,
                 f"num_attention_heads must divide hidden_size={self.hidden_size}; got {self.num_attention_heads}")
        _require(self.num_hidden_layers >= 1, f"num_hidden_layers must be >= 1; got {self.num_hidden_layers}")
        _require(self.intermediate_size >= 1, f"intermediate_size must be >= 1; got {self.intermediate_size}")
        _require(self.max_position_embeddings >= 16,
                 f"max_position_embeddings must be >= 16 (captions need 13 tokens); got {self.max_position_embeddings}")


@dataclass(frozen=True)
class UNetConfig:
    block_out_channels: tuple[int, ...] = (48, 96, 128)
    # Per level, finest first: True = ResBlocks + a transformer block (self-attention, cross-attention to the
    # prompt); False = ResBlocks only. Attention at the 16x16 latent level is where position is bound to words.
    cross_attention: tuple[bool, ...] = (True, True, False)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    attention_head_dim: int = 4  # diffusers' name; in UNet2DConditionModel it is the number of heads

    def __post_init__(self) -> None:
        _check_channels(self.block_out_channels, self.norm_num_groups)
        _require(len(self.cross_attention) == len(self.block_out_channels),
                 f"cross_attention must have one entry per block_out_channels level "
                 f"({len(self.block_out_channels)}); got {list(self.cross_attention)}")
        _require(any(self.cross_attention), "cross_attention must enable at least one level, or nothing reads the prompt")
        _require(self.layers_per_block >= 1, f"layers_per_block must be >= 1; got {self.layers_per_block}")
        _require(self.attention_head_dim >= 1 and all(c % self.attention_head_dim == 0 for c in self.block_out_channels),
                 f"attention_head_dim (heads) must divide every block_out_channels entry; got {self.attention_head_dim}")


@dataclass(frozen=True)
class NoiseConfig:
    # Stable Diffusion's training schedule (DDPM, scaled_linear 0.00085..0.012, 1000 steps).
    beta_schedule: Schedule = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    prediction_type: Prediction = "epsilon"

    def __post_init__(self) -> None:
        _require(self.beta_schedule in typing.get_args(Schedule),
                 f"beta_schedule must be one of {list(typing.get_args(Schedule))}; got {self.beta_schedule!r}")
        _require(self.prediction_type in typing.get_args(Prediction),
                 f"prediction_type must be one of {list(typing.get_args(Prediction))}; got {self.prediction_type!r}")
        _require(0 < self.beta_start < self.beta_end < 1,
                 f"beta_start and beta_end must satisfy 0 < beta_start < beta_end < 1; got {self.beta_start}, {self.beta_end}")
        _require(self.num_train_timesteps >= 2, f"num_train_timesteps must be >= 2; got {self.num_train_timesteps}")


@dataclass(frozen=True)
class PhaseConfig:
    """Optimisation settings shared by both phases (AdamW, warm-up then cosine to 10 %, gradient clipping)."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        _require(self.steps >= 1, f"steps must be >= 1; got {self.steps}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}")
        _require(self.learning_rate > 0, f"learning_rate must be > 0; got {self.learning_rate}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0; got {self.warmup_steps}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        _require(self.grad_clip > 0, f"grad_clip must be > 0; got {self.grad_clip}")
        _require(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1; got {self.checkpoint_every}")


@dataclass(frozen=True)
class VAETrainingConfig(PhaseConfig):
    steps: int = 1200
    batch_size: int = 16  # the VAE works at full 64x64 resolution: a step costs ~4x a U-Net sample
    reconstruction: Reconstruction = "l1"  # L1 keeps the flat colours' edges sharper than MSE
    # Weight of the KL term per latent element, against a per-pixel reconstruction loss. Small, as in LDM,
    # but not negligible: it keeps the latents smooth and near-Gaussian for the diffusion model.
    kl_weight: float = 1e-4
    scaling_batches: int = 8  # batches encoded after training to measure the latents' std (scaling_factor)
    # Extra reconstruction weight on foreground pixels (those unlike the image's border colour): a small shape
    # covers ~2% of the picture, so a plain per-pixel loss learns backgrounds and blurs shapes into blobs of the
    # wrong colour. Weight w makes a foreground pixel count 1 + w times. 0 = plain per-pixel loss.
    foreground_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.foreground_weight >= 0, f"foreground_weight must be >= 0; got {self.foreground_weight}")
        _require(self.reconstruction in typing.get_args(Reconstruction),
                 f"reconstruction must be one of {list(typing.get_args(Reconstruction))}; got {self.reconstruction!r}")
        _require(self.kl_weight >= 0, f"kl_weight must be >= 0; got {self.kl_weight}")
        _require(self.scaling_batches >= 1, f"scaling_batches must be >= 1; got {self.scaling_batches}")


@dataclass(frozen=True)
class DecoderTrainingConfig(PhaseConfig):
    """Phase 1b, optional (0 steps = skip): the VAE's decoder alone is trained further on latents of the frozen
    encoder, with phase 1's reconstruction loss (and foreground weight). The encoder, and so the latent space and
    scaling_factor the U-Net learns in, stay exactly as they were, so the phase may run before or after the U-Net:
    Stable Diffusion's sd-vae-ft-mse decoder was made this way, a drop-in replacement for the original VAE's.
    Why here: phase 1's decoder rounded off what is only a couple of latent pixels wide (small stars' arms, small
    squares' corners), and the U-Net's images inherited it."""

    steps: int = 0
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        _require(self.steps >= 0, f"steps must be >= 0; got {self.steps}")
        if self.steps:
            super().__post_init__()


@dataclass(frozen=True)
class TextTrainingConfig(PhaseConfig):
    """Phase 2, before the U-Net: the text encoder learns to read captions (0 steps = skip, start it random).

    Linear heads on the mean of its output tokens predict every field a caption states (shape, colour, background,
    position, size, or "not said"), a parsing objective standing in for the language pretraining of real CLIP
    encoders. Why: trained jointly from scratch with the U-Net, the encoder collapsed the words the U-Net had not
    learnt to use yet (after 3500 steps "left" and "right" differed by 0.5 in a token of norm ~11, "triangle" and
    "star" by 1.1), so the U-Net never learnt positions; from a frozen encoder that reads captions, it placed shapes
    where asked within 200 steps of high-noise training.
    """

    steps: int = 0
    batch_size: int = 128  # captions only: a step costs ~0.1 s
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    # Also read captions of the held-out shapes (text only: no image of one is ever shown to the U-Net), as a
    # real text encoder knows words the image model has not been taught; the LoRA then only has to draw it.
    held_out_captions: bool = True

    def __post_init__(self) -> None:
        _require(self.steps >= 0, f"steps must be >= 0; got {self.steps}")
        if self.steps:  # the shared checks (batch size, rate, ...) matter only when the phase runs
            super().__post_init__()


@dataclass(frozen=True)
class UNetTrainingConfig(PhaseConfig):
    steps: int = 5000
    learning_rate: float = 5e-4
    # None = the U-Net's rate; 0 = frozen: the text phase's encoder is used as it is (and saved unchanged)
    text_encoder_learning_rate: Optional[float] = None
    ema_decay: float = 0.999  # EMA of U-Net and text encoder weights: the saved pipeline uses the EMA pair
    # Classifier-free guidance: the caption is replaced by "" (what StableDiffusionPipeline encodes as the
    # default negative prompt) this often, so one network learns p(x | text) and p(x). Ho & Salimans use 10-20 %.
    caption_dropout: float = 0.1
    # Chance that a word with a prompt alias ("centre" -> "center"/"middle", "small" -> "tiny", "large" -> "big")
    # is swapped for one, so the text encoder learns the aliases the prompt parser accepts.
    alias_probability: float = 0.15
    # Extra weight of the denoising loss on latent pixels under the shape (the image's foreground mask, max-pooled to
    # the latent grid), as phase 1's foreground_weight: a small shape is ~2% of the picture, so the plain mean is
    # nearly all background and the outline of a small star barely moves it. 0 = the plain mean.
    foreground_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.foreground_weight >= 0, f"foreground_weight must be >= 0; got {self.foreground_weight}")
        _require(self.text_encoder_learning_rate is None or self.text_encoder_learning_rate >= 0,
                 f"text_encoder_learning_rate must be >= 0 or absent; got {self.text_encoder_learning_rate}")
        _require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1); got {self.ema_decay}")
        _require(0 <= self.caption_dropout < 1, f"caption_dropout must be in [0, 1); got {self.caption_dropout}")
        _require(0 <= self.alias_probability <= 1, f"alias_probability must be in [0, 1]; got {self.alias_probability}")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0  # U-Net steps between adherence evaluations of a checkpoint; 0 = only at the end
    num_prompts: int = 32  # from a fixed prompt set cycling every base shape and colour
    guidance: float = 7.5
    steps: int = 20  # DPM-Solver++(2M) steps
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.every >= 0, f"every must be >= 0; got {self.every}")
        _require(self.num_prompts >= 0, f"num_prompts must be >= 0 (0 = no evaluation); got {self.num_prompts}")
        _require(self.guidance >= 1, f"guidance must be >= 1; got {self.guidance}")
        _require(self.steps >= 1, f"steps must be >= 1; got {self.steps}")


@dataclass(frozen=True)
class T2IConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    vae_training: VAETrainingConfig = field(default_factory=VAETrainingConfig)
    decoder_training: DecoderTrainingConfig = field(default_factory=DecoderTrainingConfig)
    text_training: TextTrainingConfig = field(default_factory=TextTrainingConfig)
    unet_training: UNetTrainingConfig = field(default_factory=UNetTrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, f"seed must be >= 0; got {self.seed}")
        _require(self.data.resolution % self.vae.downsample_factor == 0,
                 f"data.resolution ({self.data.resolution}) must be divisible by the VAE's downsample factor "
                 f"({self.vae.downsample_factor})")

    @property
    def latent_size(self) -> int:
        return self.data.resolution // self.vae.downsample_factor

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "T2IConfig":
        """Build from nested dicts (a parsed TOML file); errors name the field as ``table.field``."""
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_max_steps(self, max_steps: int | None) -> "T2IConfig":
        """A copy whose phases stop after at most ``max_steps`` steps each (quick trials)."""
        if max_steps is None:
            return self
        _require(max_steps >= 1, f"max_steps must be >= 1; got {max_steps}")
        return dataclasses.replace(
            self,
            vae_training=dataclasses.replace(self.vae_training, steps=min(self.vae_training.steps, max_steps)),
            decoder_training=dataclasses.replace(self.decoder_training,
                                                 steps=min(self.decoder_training.steps, max_steps)),
            text_training=dataclasses.replace(self.text_training, steps=min(self.text_training.steps, max_steps)),
            unet_training=dataclasses.replace(self.unet_training, steps=min(self.unet_training.steps, max_steps)),
        )


def load_config(path: str | Path) -> T2IConfig:
    """Read and validate a TOML recipe; any problem is a ValueError naming the file and the field."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config {str(path)!r} is not valid TOML: {error}") from None
    try:
        return T2IConfig.from_dict(data)
    except ValueError as error:
        raise ValueError(f"config {str(path)!r}: {error}") from None


# --- building dataclasses from dicts, with errors that name the field -------------------------------------


def _build(cls: type, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a table; got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field '{prefix}{unknown[0]}'; {prefix.rstrip('.') or 'config'} has {sorted(known)}")
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as error:
        message = str(error)
        # Field checks start with the field's own name; prefix the table so the message names "table.field".
        raise ValueError(f"{prefix}{message}" if prefix and not message.startswith(prefix) else message) from None


def _convert(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{name}.")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(options[0], value, name)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list; got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v, f"{name}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        return value  # checked against the choices in __post_init__, which lists them
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string; got {value!r}")
        return value
    return value
