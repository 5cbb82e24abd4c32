"""SDXL on tiny random pipelines: base + refiner as an ensemble of experts, img2img, prompt weighting's SDXL path.

The refiner is a StableDiffusionXLImg2ImgPipeline shaped like stabilityai/stable-diffusion-xl-refiner-1.0: only the
second (projection) text encoder, aesthetic-score micro-conditioning (5 numbers instead of 6), and the base's VAE
(the ensemble hands latents from one U-Net to the other, so they must share the latent space).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.prompt_weighting import encode_sdxl
from difflab.engine.registry import resolve_model
from difflab.engine.request import build_request

from .family_fixtures import build_sdxl, clip_text_encoder, clip_tokenizer
from .test_img2img import shapes_image

CACHE = PipelineCache()


def build_refiner(root: Path, base):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(1)
    tokenizer = clip_tokenizer(root / "refiner-tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8, transformer_layers_per_block=(1, 2),
        cross_attention_dim=16,  # text_encoder_2's hidden states only
        # refiner micro-conditioning: size, crop, aesthetic score (5 numbers) x 8 features + pooled projection (16)
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=5 * 8 + 16,
    )
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.2)  # a refiner that visibly changes the image
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=clip_text_encoder(tokenizer, projection=True),
        tokenizer=None, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )


@pytest.fixture(scope="module")
def sdxl_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sdxl-ensemble")
    base = build_sdxl(root)
    with torch.no_grad():
        base.unet.conv_out.weight.normal_(0, 0.2)
    refiner = build_refiner(root, base)
    base.save_pretrained(root / "base", safe_serialization=True)
    refiner.save_pretrained(root / "refiner", safe_serialization=True)
    return root / "base", root / "refiner"


def request(folder: Path, **fields):
    return build_request(**{"prompt": "a red circle on the left", "model": str(folder), "steps": 10,
                            "guidance": 5.0, "width": 64, "height": 64, "seed": 3, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_refiner_folder_is_detected(sdxl_folders) -> None:
    assert resolve_model(str(sdxl_folders[1])).family == "sdxl-refiner"


def test_ensemble_matches_diffusers_documented_recipe(sdxl_folders) -> None:
    """The reference is diffusers' own ensemble-of-experts recipe, called directly: base with denoising_end and
    output_type="latent", refiner with denoising_start on those latents, per-image generators seed + i."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base_folder, refiner_folder = sdxl_folders
    result = run(request(base_folder, refiner=str(refiner_folder), refiner_switch=0.7, n=2), CACHE)
    base = StableDiffusionXLPipeline.from_pretrained(base_folder)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_folder)
    generators = [torch.Generator("cpu").manual_seed(3 + i) for i in range(2)]
    common = dict(prompt="a red circle on the left", num_inference_steps=10, guidance_scale=5.0,
                  num_images_per_prompt=2, generator=generators)
    latents = base(**common, width=64, height=64, denoising_end=0.7, output_type="latent").images
    expected = refiner(**common, image=latents, denoising_start=0.7).images
    for got, want in zip(result.images, expected):
        assert np.abs(pixels(got) - pixels(want)).max() <= 1

    base_only = run(request(base_folder, n=2), CACHE)
    assert np.abs(pixels(base_only.images[0]) - pixels(result.images[0])).mean() > 1  # the refiner did something


def test_the_refiner_knows_the_prompts_embeddings_too(sdxl_folders, tmp_path: Path) -> None:
    """An SDXL embedding's clip_g vectors reach the refiner's text encoder, as A1111 applies embeddings to every
    model it runs; the reference is diffusers' own load_textual_inversion on both pipelines, then the ensemble.
    The refiner runs 7 of 10 steps and the vectors are large, so the tiny refiner visibly depends on them (49/255
    with and without them in its text encoder, measured)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(4)
    state = {"clip_l": torch.randn(2, 16, generator=generator), "clip_g": 30 * torch.randn(2, 16, generator=generator)}
    save_file(state, str(tmp_path / "xl-style.safetensors"))
    base_folder, refiner_folder = sdxl_folders
    prompt = "a red xl-style circle"
    result = run(request(base_folder, prompt=prompt, refiner=str(refiner_folder), refiner_switch=0.3, n=2,
                         embeddings=[str(tmp_path / "xl-style.safetensors")]), CACHE)
    base = StableDiffusionXLPipeline.from_pretrained(base_folder)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_folder)
    base.load_textual_inversion(state["clip_l"], token="xl-style", text_encoder=base.text_encoder,
                                tokenizer=base.tokenizer)
    for pipe in (base, refiner):
        pipe.load_textual_inversion(state["clip_g"], token="xl-style", text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    generators = [torch.Generator("cpu").manual_seed(3 + i) for i in range(2)]
    common = dict(prompt=prompt, num_inference_steps=10, guidance_scale=5.0, num_images_per_prompt=2,
                  generator=generators)
    latents = base(**common, width=64, height=64, denoising_end=0.3, output_type="latent").images
    expected = refiner(**common, image=latents, denoising_start=0.3).images
    for got, want in zip(result.images, expected):
        assert np.abs(pixels(got) - pixels(want)).max() <= 1


def test_a_base_as_its_own_refiner_takes_the_embedding_once(sdxl_folders, tmp_path: Path) -> None:
    """The same cached pipeline runs both parts: the embedding is applied to it once (a second application would
    find its token already in the tokenizer and refuse)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(5)
    save_file({"clip_l": torch.randn(2, 16, generator=generator), "clip_g": torch.randn(2, 16, generator=generator)},
              str(tmp_path / "xl-style.safetensors"))
    base_folder, _ = sdxl_folders
    result = run(request(base_folder, prompt="a xl-style circle", refiner=str(base_folder), steps=4,
                         embeddings=[str(tmp_path / "xl-style.safetensors")]), CACHE)
    assert len(result.images) == 1


def test_refiner_image_is_the_same_alone_or_in_a_batch(sdxl_folders) -> None:
    base_folder, refiner_folder = sdxl_folders
    batch = run(request(base_folder, refiner=str(refiner_folder), n=2, scheduler="Euler a"), CACHE)
    alone = run(request(base_folder, refiner=str(refiner_folder), n=1, seed=4, scheduler="Euler a"), CACHE)
    assert np.abs(pixels(batch.images[1]) - pixels(alone.images[0])).max() <= 2


def test_refiner_needs_an_sdxl_base_and_a_refiner_model(sdxl_folders, tiny_sd_folder: Path) -> None:
    base_folder, refiner_folder = sdxl_folders
    with pytest.raises(ValueError, match="refiner: needs an SDXL base model"):
        run(request(tiny_sd_folder, refiner=str(refiner_folder)), CACHE)
    with pytest.raises(ValueError, match=r"refiner: .* is of the sd family"):
        run(request(base_folder, refiner=str(tiny_sd_folder)), CACHE)
    with pytest.raises(ValueError, match="is an SDXL refiner \\(img2img only\\)"):
        run(request(refiner_folder), CACHE)


def test_sdxl_img2img_and_the_refiner_alone_on_an_image(sdxl_folders, tmp_path: Path) -> None:
    base_folder, refiner_folder = sdxl_folders
    init = shapes_image(tmp_path / "init.png")
    for folder in (base_folder, refiner_folder):
        images = run(request(folder, init_image=str(init), strength=0.5, width=None, height=None), CACHE).images
        assert images[0].size == (64, 64)


def test_sdxl_inpainting_keeps_the_unmasked_half(sdxl_folders, tmp_path: Path) -> None:
    from PIL import Image

    init = shapes_image(tmp_path / "init.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    image = run(request(sdxl_folders[0], init_image=str(init), mask=str(tmp_path / "mask.png"), strength=1.0,
                        width=None, height=None), CACHE).images[0]
    out, original = pixels(image), pixels(Image.open(init).convert("RGB"))
    assert np.array_equal(out[:, :32], original[:, :32])
    assert np.abs(out[:, 32:] - original[:, 32:]).mean() > 20


def test_sdxl_weight_one_is_the_pipelines_own_encoding(sdxl_folders) -> None:
    for folder in sdxl_folders:
        pipe = CACHE.get(resolve_model(str(folder)))[0]
        with torch.no_grad():
            own = pipe.encode_prompt("a red circle", device="cpu", num_images_per_prompt=1,
                                     do_classifier_free_guidance=True, negative_prompt="blue")
            ours = encode_sdxl(pipe, "(a red circle:1.0)", "blue")
            ours_empty = encode_sdxl(pipe, "a red circle", "")
            own_empty = pipe.encode_prompt("a red circle", device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=True)
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        for name, reference in zip(names, own):
            assert torch.equal(ours[name], reference), name
        for name, reference in zip(names, own_empty):  # an empty negative: zeros (base) or "" (refiner)
            assert torch.equal(ours_empty[name], reference), name
    long = "a big red circle on the left a small blue square on the right a green triangle in the middle"
    with torch.no_grad():
        embeds = encode_sdxl(CACHE.get(resolve_model(str(sdxl_folders[0])))[0], long, "")
    assert embeds["prompt_embeds"].shape == (1, 32, 32) and embeds["pooled_prompt_embeds"].shape == (1, 16)
