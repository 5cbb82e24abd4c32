"""A1111 prompt weighting and long prompts for CLIP text encoders (Stable Diffusion 1.x/2.x and SDXL).

Syntax (AUTOMATIC1111's ``prompt_parser.parse_prompt_attention``):

    (word)       weight x 1.1          ((word)) x 1.21, and so on
    (word:1.3)   weight x 1.3
    [word]       weight / 1.1
    \\( \\) \\[ \\]  literal brackets
    BREAK        start a new 75-token chunk

Encoding (A1111's ``FrozenCLIPEmbedderWithCustomWords``, "Original" emphasis): the prompt's tokens are cut into
chunks of ``model_max_length - 2`` tokens (75 for CLIP); each chunk is encoded on its own as
``<bos> tokens <eos> <pad>...`` and the chunks' hidden states are concatenated along the sequence, so a prompt is
never truncated (the U-Net's cross-attention takes any sequence length). Each token's hidden state is multiplied by
its weight, then the whole chunk is rescaled so its mean equals the unweighted mean. SDXL: both encoders' penultimate
hidden states side by side, as diffusers does, and the pooled embedding of the first chunk (A1111).

With every weight 1 and one chunk, the result is exactly the pipeline's own ``encode_prompt`` (tested): the
weighting path is only taken when a prompt has weights or is too long, and the pipeline encodes plain prompts
itself.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from difflab.engine.embeddings import active as embeddings_active, expand

EMPHASIS = 1.1  # A1111's multiplier for one level of ( ) or [ ]
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"
CLIP_FAMILIES = ("sd", "sdxl", "sdxl-refiner")
PROMPT_KEYS = ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
               "negative_pooled_prompt_embeds")

# escaped bracket | backslash | open | ":weight)" close | close | plain text | stray colon
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_SYNTAX = re.compile(r"[()\[\]]|\bBREAK\b")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with neighbouring equal weights merged; ``("BREAK", -1)`` marks a chunk break.

    >>> parse_prompt_attention("a (red:1.5) [circle]")
    [('a ', 1.0), ('red', 1.5), (' ', 1.0), ('circle', 0.9090909090909091)]
    """
    segments: list[list] = []
    open_round: list[int] = []  # index in ``segments`` where each unclosed "(" began
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for segment in segments[start:]:
            segment[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            segments.append([token[1:] if len(token) > 1 else token, 1.0])
        elif token == "(":
            open_round.append(len(segments))
        elif token == "[":
            open_square.append(len(segments))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), EMPHASIS)
        elif token == "]" and open_square:
            scale(open_square.pop(), 1 / EMPHASIS)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    segments.append(["BREAK", -1.0])
                if part:
                    segments.append([part, 1.0])
    for start in open_round:  # unclosed brackets apply to the rest of the prompt, as in A1111
        scale(start, EMPHASIS)
    for start in open_square:
        scale(start, 1 / EMPHASIS)
    merged: list[list] = []
    for segment in segments:
        if merged and merged[-1][1] == segment[1] and segment[1] != -1.0:
            merged[-1][0] += segment[0]
        else:
            merged.append(segment)
    return [(text_, weight_) for text_, weight_ in merged] or [("", 1.0)]


@dataclass(frozen=True)
class Chunk:
    ids: list[int]  # model_max_length ids: <bos> tokens <eos> <pad>...
    weights: list[float]


def chunk_tokens(tokenizer, text: str, *, truncate: bool = False, field: str = "prompt") -> list[Chunk]:
    """The prompt as chunks of ``model_max_length - 2`` tokens with their weights (A1111's ``tokenize_line``).

    A full chunk whose last comma is at most ``COMMA_BACKTRACK`` tokens back moves the words after that comma to the
    next chunk (A1111's default), so a chunk boundary does not cut a phrase in two."""
    length = tokenizer.model_max_length - 2
    comma = tokenizer.get_vocab().get(",</w>")
    pieces: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1
    for part, weight in parse_prompt_attention(text):
        if weight == -1.0:  # BREAK: the next words start a new chunk
            if ids:
                pieces.append((ids, weights))
                ids, weights, last_comma = [], [], -1
            continue
        part = expand(tokenizer, part)  # a multi-vector embedding's token -> its tokens, each with the weight
        for token in tokenizer(part, add_special_tokens=False, truncation=False)["input_ids"]:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == length and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                pieces.append((ids[:last_comma + 1], weights[:last_comma + 1]))
                ids, weights, last_comma = ids[last_comma + 1:], weights[last_comma + 1:], -1
            if len(ids) == length:
                pieces.append((ids, weights))
                ids, weights, last_comma = [], [], -1
            ids.append(token)
            weights.append(weight)
    if ids or not pieces:
        pieces.append((ids, weights))
    if truncate and len(pieces) > 1:
        dropped = sum(len(piece[0]) for piece in pieces[1:])
        warnings.warn(f"{field}: over the text encoder's limit of {length} tokens; the last {dropped} tokens are "
                      "dropped (long_prompt='chunk' keeps them)", UserWarning, stacklevel=2)
        pieces = pieces[:1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chunks = []
    for chunk_ids, chunk_weights in pieces:
        filler = length - len(chunk_ids)
        chunks.append(Chunk([tokenizer.bos_token_id, *chunk_ids, tokenizer.eos_token_id] + [pad] * filler,
                            [1.0, *chunk_weights, 1.0] + [1.0] * filler))
    return chunks


def needs_weighting(tokenizer, text: str) -> bool:
    """Whether the plain pipeline encoding would differ: weighting syntax, or more tokens than one chunk holds."""
    if text and _SYNTAX.search(text):
        return True
    count = len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]) if text else 0
    return count > tokenizer.model_max_length - 2


def _emphasize(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Scale each token's hidden state by its weight, then restore the chunk's mean (A1111 "Original")."""
    if all(weight == 1.0 for weight in weights):
        return hidden
    multipliers = torch.tensor(weights, dtype=hidden.dtype, device=hidden.device)
    original_mean = hidden.mean()
    weighted = hidden * multipliers[None, :, None]  # (1, T, C) * (1, T, 1)
    weighted_mean = weighted.mean()
    # A1111 divides by the weighted mean. Trained CLIP encoders end in a LayerNorm with a bias, so that mean is
    # well away from 0; an encoder whose states are centred (a fresh one: bias 0) has a mean of ~1e-8, and the
    # ratio turns the embeddings into inf. There, the weighted states are kept as they are.
    if weighted_mean.abs() <= 1e-4 * hidden.abs().mean():
        return weighted
    return weighted * (original_mean / weighted_mean)


def _encode_chunk(encoder, chunk: Chunk, penultimate: bool, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (1, T, C) with weights applied, the encoder's first output (pooled or last hidden)).
    ``clip_skip`` is A1111's: 1 = the last layer (SD) or the penultimate one (SDXL, which always skips one), N = N - 1
    layers earlier; SD's skipped states go through the final layer norm, as A1111 and diffusers do."""
    ids = torch.tensor([chunk.ids], device=encoder.device)
    output = encoder(ids, output_hidden_states=penultimate or clip_skip > 1)
    if penultimate:
        hidden = output.hidden_states[-(clip_skip + 1)]
    elif clip_skip > 1:
        # transformers 5 keeps the final layer norm on the model itself; 4.x under .text_model
        final_layer_norm = getattr(encoder, "text_model", encoder).final_layer_norm
        hidden = final_layer_norm(output.hidden_states[-clip_skip])
    else:
        hidden = output[0]
    return _emphasize(hidden, chunk.weights), output[0]


def _pad_chunks(chunks: list[Chunk], count: int, tokenizer) -> list[Chunk]:
    """Extra empty chunks (the encoding of "") so prompt and negative prompt have the same length for CFG."""
    return chunks + chunk_tokens(tokenizer, "") * (count - len(chunks))


def encode_sd(pipe, prompt: str, negative: str, truncate: bool = False, clip_skip: int = 1) -> dict[str, torch.Tensor]:
    """prompt_embeds and negative_prompt_embeds for a one-encoder CLIP pipeline (SD 1.x/2.x)."""
    positive = chunk_tokens(pipe.tokenizer, prompt, truncate=truncate, field="prompt")
    negatives = chunk_tokens(pipe.tokenizer, negative, truncate=truncate, field="negative_prompt")
    count = max(len(positive), len(negatives))

    def encode(chunks: list[Chunk]) -> torch.Tensor:
        chunks = _pad_chunks(chunks, count, pipe.tokenizer)
        return torch.cat([_encode_chunk(pipe.text_encoder, chunk, penultimate=False, clip_skip=clip_skip)[0]
                          for chunk in chunks], dim=1)

    return {"prompt_embeds": encode(positive), "negative_prompt_embeds": encode(negatives)}


def encode_sdxl(pipe, prompt: str, negative: str, truncate: bool = False, clip_skip: int = 1) -> dict[str, torch.Tensor]:
    """prompt_embeds, pooled_prompt_embeds and their negatives for SDXL (base: two encoders; refiner: one)."""
    pairs = [(tokenizer, encoder) for tokenizer, encoder in
             ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)) if encoder is not None]
    texts = {"prompt": prompt, "negative_prompt": negative}
    chunks = {field: [chunk_tokens(tokenizer, text, truncate=truncate, field=field) for tokenizer, _ in pairs]
              for field, text in texts.items()}
    count = max(len(per_encoder) for lists in chunks.values() for per_encoder in lists)

    def encode(field: str) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_per_encoder, pooled = [], None
        for (tokenizer, encoder), encoder_chunks in zip(pairs, chunks[field]):
            encoded = [_encode_chunk(encoder, chunk, penultimate=True, clip_skip=clip_skip)
                       for chunk in _pad_chunks(encoder_chunks, count, tokenizer)]
            hidden_per_encoder.append(torch.cat([hidden for hidden, _ in encoded], dim=1))
            pooled = encoded[0][1]  # the last encoder's (text_encoder_2's) projection of the first chunk
        return torch.cat(hidden_per_encoder, dim=-1), pooled

    prompt_embeds, pooled = encode("prompt")
    if not negative and pipe.config.force_zeros_for_empty_prompt:
        # what SDXL's encode_prompt does for an empty negative prompt: zeros, not the encoding of ""
        negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
    else:
        negative_embeds, negative_pooled = encode("negative_prompt")
    return {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds,
            "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}


def prompt_arguments(pipe, family: str, request) -> dict[str, Any]:
    """The prompt keyword arguments for ``pipe``: plain strings where the pipeline's own encoding is exact,
    weighted and chunked embeddings where the prompt has weights or is over the token limit."""
    plain: dict[str, Any] = {"prompt": request.prompt}
    if family in ("sd", "sdxl", "sdxl-refiner", "sd3"):
        plain["negative_prompt"] = request.negative_prompt or None
    # A clip skip is encoded here, not by diffusers' clip_skip (which counts N - 1): diffusers skips layers for the
    # prompt only and encodes the negative prompt from the usual layer, where A1111 takes both from layer N (CFG
    # then compares like with like); and diffusers 0.42's SD 1.x encode_prompt reads
    # text_encoder.text_model.final_layer_norm, which transformers 5 moved onto the model itself
    clip_skip = check_clip_skip(pipe, family, request)
    if family not in CLIP_FAMILIES:
        if _SYNTAX.search(request.prompt) or _SYNTAX.search(request.negative_prompt):
            warnings.warn(f"prompt: (word:1.3) weighting is not applied for the {family} family; the brackets are "
                          "passed to its text encoders as text", UserWarning, stacklevel=2)
        return plain
    tokenizer = pipe.tokenizer if getattr(pipe, "text_encoder", None) is not None else pipe.tokenizer_2
    # with textual inversion embeddings applied (engine/embeddings.py), difflab encodes every prompt itself: it
    # expands multi-vector tokens in any case and under weights, where diffusers' expansion is case-sensitive
    if clip_skip == 1 and not embeddings_active(tokenizer) and not any(needs_weighting(tokenizer, text) for text in (request.prompt, request.negative_prompt)):
        return plain
    truncate = request.long_prompt == "truncate"
    with torch.no_grad():
        if family == "sd":
            return encode_sd(pipe, request.prompt, request.negative_prompt, truncate, clip_skip)
        return encode_sdxl(pipe, request.prompt, request.negative_prompt, truncate, clip_skip)


def check_clip_skip(pipe, family: str, request) -> int:
    """The request's clip skip (1 = none), after checking the model can skip that many layers."""
    clip_skip = getattr(request, "clip_skip", None) or 1
    if clip_skip == 1:
        return 1
    if family not in CLIP_FAMILIES:
        raise ValueError(f"clip_skip: the {family} family has no CLIP text encoder to skip layers of "
                         f"(clip skip works on {', '.join(CLIP_FAMILIES)})")
    encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if e is not None]
    layers = min(encoder.config.num_hidden_layers for encoder in encoders)
    usable = layers if family == "sd" else layers - 1  # SDXL already uses the penultimate layer; never the embeddings
    if clip_skip > usable:
        raise ValueError(f"clip_skip: this model's text encoder has {layers} layers, so clip skip can be 1 to "
                         f"{usable}; got {clip_skip}")
    return clip_skip
