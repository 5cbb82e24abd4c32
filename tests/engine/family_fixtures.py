"""Tiny random-weight pipelines of every family difflab drives, built from configs (no hub) and saved as folders.

The shapes follow diffusers' own ``get_dummy_components`` (tests/pipelines/{stable_diffusion_xl,flux,
stable_diffusion_3}/test_pipeline_*.py): real component classes, a few channels each, so the whole txt2img path
(tokenizers, text encoders, denoiser, scheduler, VAE) runs in a second on a CPU. The VAEs have four levels, so
latents are 1/8 of the image side as in the real models, and the Flux/SD3 VAEs have 16 latent channels as theirs.

Tokenizers are built here from an in-memory vocabulary: CLIP's from the shapes caption words (difflab's own
word-level BPE), T5's as a Unigram model whose pieces are whole words. Both are checked to give different ids to
different words (transformers 5 silently ignores some tokenizer constructor arguments, see issue 3).
"""

from __future__ import annotations

from pathlib import Path

import torch

CLIP_LENGTH = 16  # tokenizer model_max_length = text encoder max_position_embeddings
T5_LENGTH = 32
T5_WIDTH = 32  # d_model: Flux's and SD3's joint_attention_dim
LATENT_LEVELS = (8, 8, 8, 8)  # four VAE levels: the 8x spatial factor of the real models


def caption_words() -> list[str]:
    from difflab.train.tokenizer import tokenizer_words

    return tokenizer_words()


def clip_tokenizer(folder: Path):
    from difflab.train.tokenizer import build_tokenizer

    return build_tokenizer(folder, CLIP_LENGTH)


def t5_tokenizer():
    """A T5 tokenizer (Unigram, as the real spiece model) whose pieces are whole caption words, ids <pad>=0,
    </s>=1, <unk>=2 as T5's."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -1.0) for word in caption_words()]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_LENGTH)


def clip_text_encoder(tokenizer, *, hidden: int = 16, projection: bool = False, projection_dim: int = 16,
                      layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=CLIP_LENGTH, projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def vae(latent_channels: int, **flow_options):
    from diffusers import AutoencoderKL

    levels = len(LATENT_LEVELS)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=LATENT_LEVELS, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=64, **flow_options,
    )


def _flow_vae():
    # Flux/SD3's VAE: 16 channels, no quant convs, and a shift as well as a scale on the latents
    return vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)


def build_sdxl(root: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(root / "clip-tokenizer")
    text_encoder = clip_text_encoder(tokenizer)
    text_encoder_2 = clip_text_encoder(tokenizer, projection=True)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8, transformer_layers_per_block=(1, 2),
        cross_attention_dim=32,  # the two encoders' hidden states side by side: 16 + 16
        # SDXL's micro-conditioning: 6 size/crop numbers x 8 Fourier features + the pooled projection (16)
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae(4), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


def build_flux(root: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(root / "clip-tokenizer")
    tokenizer_2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16 * 4,  # latents are packed 2x2: 16 channels -> 64 features per token
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=16, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,  # as FLUX.1-dev: guidance is an input of the model, not CFG
    )
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=_flow_vae(), text_encoder=clip_text_encoder(tokenizer),
                        tokenizer=tokenizer, text_encoder_2=t5_encoder(tokenizer_2), tokenizer_2=tokenizer_2,
                        transformer=transformer)


def build_sd3(root: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(root / "clip-tokenizer")
    tokenizer_3 = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=32,  # the two CLIP encoders' pooled projections side by side: 16 + 16
    )
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(), transformer=transformer,
        text_encoder=clip_text_encoder(tokenizer, projection=True), tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer, projection=True), tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(tokenizer_3), tokenizer_3=tokenizer_3,
    )


BUILDERS = {"sdxl": build_sdxl, "flux": build_flux, "sd3": build_sd3}


def save_family_pipeline(family: str, root: Path) -> Path:
    """Build the family's tiny pipeline and save it as a diffusers folder (safetensors); returns the folder."""
    pipeline = BUILDERS[family](root)
    folder = root / "pipeline"
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
