"""Textual inversion (Gal et al. 2022), as diffusers' ``examples/textual_inversion/textual_inversion.py``: a new
token, one or more vectors long, is added to the text encoder's vocabulary, started from an existing word's
vector, and only those vectors are trained, with the usual denoising loss, on a folder of captioned images; the
U-Net, the VAE and the rest of the text encoder stay as they are.

Differences from the example, each for a reason: the new vectors are a small table looked up beside the frozen
vocabulary (engine/embeddings.py's ``ExtendedEmbedding``) instead of rows of a resized matrix restored after every
step, which gives the same gradients and updates for those rows while the others cannot move at all; the VAE
posteriors are encoded once and sampled each step (the example encodes every step: the same distribution); every
random draw of step k comes from ``step_generator(seed, k)``, so a run resumed with ``--resume`` continues exactly
as the uninterrupted one would have.

Captions: the captioned folder as ``train lora`` reads it (``x.png`` + ``x.txt``; an image without a caption gets
the template, ``{trigger}`` = the token); a caption that does not name the token gets ``"<token>, "`` in front,
since the vectors only learn from captions that contain them.

``--out`` holds, as the run goes:

- ``learned_embeds.safetensors``: diffusers' layout, ``{token: (vectors, dim)}`` (``pipe.load_textual_inversion``);
- ``<token>.safetensors``: A1111's, ``{"emb_params": (vectors, dim)}``; its stem is its token in an
  ``embeddings/`` folder;
- ``training.json`` (the recipe, the base model and the loss), ``training_state.safetensors``, ``loss.csv``/``.png``.
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from difflab.core.checkpoint import atomic_save_safetensors, atomic_write_bytes
from difflab.core.train import step_generator
from difflab.train.loop import RECORD_NAME, STATE_NAME, Run, encode_posteriors, load_state, save_state
from difflab.train.textual_inversion_config import TextualInversionConfig

DIFFUSERS_NAME = "learned_embeds.safetensors"  # diffusers' example's (and load_textual_inversion's default) name
SUPPORTED_FAMILIES = ("sd",)


@dataclass(frozen=True)
class EmbeddingEvent:
    step: int
    total: int
    loss: float
    seconds: float
    checkpoint: Optional[Path] = None  # set where the embedding files were written


def check_out(out: Path, resume: bool) -> None:
    """Before any weights load: an output folder that is a file, or already holds a run (without --resume)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a folder")
    if not resume and ((out / STATE_NAME).is_file() or (out / DIFFUSERS_NAME).is_file()):
        raise ValueError(f"--out {str(out)!r} already holds an embedding training run; pass --resume or use a new "
                         "--out folder")


def check_resume(config: TextualInversionConfig, out: Path) -> None:
    record = out / RECORD_NAME
    if not record.is_file():
        return
    saved = json.loads(record.read_text()).get("config", {})
    mine = json.loads(json.dumps(config.to_dict()))
    for name in TextualInversionConfig.RESUME_FIELDS:
        if saved.get(name) != mine.get(name):
            raise ValueError(f"{name} differs from the run in --out {str(out)!r} ({saved.get(name)!r}); resume with "
                             "the same settings or use a new --out folder")


def load_base(config: TextualInversionConfig, device: str):
    """(pipeline, resolved model): the base, frozen, in float32 on ``device``."""
    import diffusers

    from difflab.engine.registry import resolve_model

    model = resolve_model(config.base)
    if model.family not in SUPPORTED_FAMILIES:
        raise ValueError(f"base: textual inversion training supports the {', '.join(SUPPORTED_FAMILIES)} family for "
                         f"now; {config.base!r} is {model.family}")
    if model.single_file:
        pipe = diffusers.StableDiffusionPipeline.from_single_file(str(model.path), local_files_only=True)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            str(model.path), use_safetensors=True, local_files_only=True, safety_checker=None,
            requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.vae, pipe.unet, pipe.text_encoder):
        part.requires_grad_(False).eval()
    return pipe.to(device), model


def initial_vectors(pipe, config: TextualInversionConfig) -> torch.Tensor:
    """(vectors, dim): the init word's token vectors, repeated to fill ``vectors`` (diffusers copies its one
    token's vector into every new row; A1111 cycles through the init text's tokens, which is the same for one)."""
    from difflab.engine.embeddings import is_known_word, token_names

    tokenizer = pipe.tokenizer
    vocab = tokenizer.get_vocab()
    lowered = {word.lower() for word in vocab}
    for name in token_names(config.token, config.vectors):
        if is_known_word(tokenizer, vocab, lowered, name):
            raise ValueError(f"token: {name!r} is already a word of the base model's tokenizer; choose a new word "
                             "(e.g. one in <angle brackets>)")
    ids = tokenizer(config.init_word, add_special_tokens=False)["input_ids"]
    if not ids or tokenizer.unk_token_id in ids:
        raise ValueError(f"init_word: {config.init_word!r} is not made of the tokenizer's known tokens")
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    return torch.stack([table[ids[i % len(ids)]] for i in range(config.vectors)]).float().clone()


def captions_with_token(captions, token: str) -> tuple[str, ...]:
    word = re.compile(rf"(?<![\w]){re.escape(token)}(?![\w])", re.IGNORECASE)
    return tuple(caption if word.search(caption) else f"{token}, {caption}" for caption in captions)


class _Embedded:
    """The pipeline's tokenizer and text encoder with the token's vectors as a trainable table."""

    def __init__(self, pipe, config: TextualInversionConfig, vectors: torch.Tensor) -> None:
        import copy

        from difflab.engine.embeddings import ExtendedEmbedding, mark, token_names

        names = token_names(config.token, config.vectors)
        self.tokenizer = copy.deepcopy(pipe.tokenizer)
        self.tokenizer.add_tokens(names)
        mark(self.tokenizer, [names])
        base = pipe.text_encoder.get_input_embeddings()
        layer = ExtendedEmbedding(base, [self.tokenizer.convert_tokens_to_ids(name) for name in names], vectors)
        layer.table = torch.nn.Parameter(vectors.to(base.weight.device).clone())  # a parameter, not a buffer
        pipe.text_encoder.set_input_embeddings(layer)
        self.pipe, self.layer = pipe, layer

    @property
    def vectors(self) -> torch.nn.Parameter:
        return self.layer.table

    def encode(self, captions: list[str]) -> torch.Tensor:
        """(B, L, D) as StableDiffusionPipeline.encode_prompt makes them, multi-vector tokens expanded."""
        from difflab.engine.embeddings import expand

        tokenizer = self.tokenizer
        ids = tokenizer([expand(tokenizer, caption) for caption in captions], padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        return self.pipe.text_encoder(ids.to(self.vectors.device))[0]


def denoising_loss(pipe, embedded: _Embedded, scheduler, mean: torch.Tensor, std: torch.Tensor, captions,
                   batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The base model's epsilon (or v) loss on a batch drawn from ``generator``, through the token's vectors."""
    device = mean.device
    index = torch.randint(0, len(captions), (batch_size,), generator=generator)
    z_0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
    eps = torch.randn(z_0.shape, generator=generator).to(device)
    z_t = scheduler.add_noise(z_0, eps, t)
    target = eps if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(z_0, eps, t)
    text = embedded.encode([captions[i] for i in index.tolist()])
    prediction = pipe.unet(z_t, t, encoder_hidden_states=text).sample
    return torch.nn.functional.mse_loss(prediction.float(), target.float())


def train_embedding(config: TextualInversionConfig, out: str | Path, *, resume: bool = False,
                    device: Optional[str] = None) -> Iterator[EmbeddingEvent]:
    """Train the token's vectors on ``config.data``, yielding an event per step; writes the files in the module
    docstring every ``checkpoint_every`` steps and at the end."""
    from diffusers import DDPMScheduler

    from difflab.data.captioned_folder import load_captioned_folder
    from difflab.engine.device import choose_placement

    out = Path(out)
    check_out(out, resume)
    if resume:
        check_resume(config, out)
    device = device or choose_placement().device
    pipe, model = load_base(config, device)
    vectors = initial_vectors(pipe, config)
    resolution = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    data = load_captioned_folder(config.data, resolution, config.token, config.caption_template)
    captions = captions_with_token(data.captions, config.token)
    mean, std = encode_posteriors(pipe.vae, data.pixels, device, chunk=16)  # the VAE is frozen: once
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the base's training noise schedule
    embedded = _Embedded(pipe, config, vectors)
    optimizer = torch.optim.AdamW([embedded.vectors], lr=config.learning_rate, weight_decay=0.0)
    run = Run()
    if resume and (out / STATE_NAME).is_file():
        load_state(out, {"vectors": embedded.vectors}, optimizer, run)
    started = time.perf_counter() - run.seconds
    out.mkdir(parents=True, exist_ok=True)
    while run.step < config.steps:
        generator = step_generator(config.seed, run.step)
        loss = denoising_loss(pipe, embedded, scheduler, mean, std, captions, config.batch_size, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step += 1
        run.seconds = time.perf_counter() - started
        run.rows.append((run.step, loss.item()))
        written = None
        if run.step % config.checkpoint_every == 0 or run.step == config.steps:
            save_embedding(embedded.vectors.detach(), config, out, model, run, len(captions))
            save_state(out, {"vectors": embedded.vectors}, optimizer, run)
            written = out
        yield EmbeddingEvent(run.step, config.steps, run.rows[-1][1], run.seconds, written)


def save_embedding(vectors: torch.Tensor, config: TextualInversionConfig, out: Path, model=None,
                   run: Optional[Run] = None, num_images: int = 0) -> None:
    """Both files (each written atomically) and the recipe beside them."""
    vectors = vectors.detach().float().cpu().contiguous()
    metadata = {"difflab_token": config.token, "difflab_base": config.base, "difflab_step": str(run.step if run else 0)}
    atomic_save_safetensors({config.token: vectors}, out / DIFFUSERS_NAME, metadata=metadata)
    atomic_save_safetensors({"emb_params": vectors}, out / f"{config.token}.safetensors", metadata=metadata)
    record = {
        "kind": "textual_inversion",
        "config": config.to_dict(),
        "files": {"diffusers": DIFFUSERS_NAME, "a1111": f"{config.token}.safetensors"},
        "base_model": None if model is None else {"name": model.name, "path": str(model.path),
                                                  "family": model.family},
        "num_images": num_images,
        "step": run.step if run else 0,
        "seconds": round(run.seconds, 3) if run else 0.0,
        "final_loss": run.rows[-1][1] if run and run.rows else None,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    atomic_write_bytes(out / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())
