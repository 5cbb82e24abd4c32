"""A1111 prompt weighting and long prompts, checked against A1111's documented parses and the pipeline's own
``encode_prompt`` on a tiny random Stable Diffusion pipeline (its tokenizer holds 16 tokens: 14 per chunk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.prompt_weighting import chunk_tokens, encode_sd, parse_prompt_attention
from difflab.engine.registry import resolve_model
from difflab.engine.request import build_request

CACHE = PipelineCache()
SHORT = "a red circle on the left"
LONG = "a big red circle on the left a small blue square on the right a green triangle in the middle"


@pytest.fixture(scope="module")
def pipe(tiny_sd_folder: Path):
    return CACHE.get(resolve_model(str(tiny_sd_folder)))[0]


def own_encoding(pipe, text: str) -> torch.Tensor:
    """The pipeline's own encoding (truncated at model_max_length): the independent reference."""
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(text, "cpu", 1, False)
    return embeds


# A1111's prompt_parser.parse_prompt_attention docstring examples
A1111_PARSES = {
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", 1.1), (" word", 1.0)],
    "(unbalanced": [("unbalanced", 1.1)],
    "\\(literal\\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", 1.1)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)],
    "[word]": [("word", 1 / 1.1)],
    "a BREAK b": [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)],
}


@pytest.mark.parametrize("text", list(A1111_PARSES))
def test_parse_matches_a1111(text: str) -> None:
    parsed = parse_prompt_attention(text)
    expected = A1111_PARSES[text]
    assert [part for part, _ in parsed] == [part for part, _ in expected]
    assert np.allclose([w for _, w in parsed], [w for _, w in expected], rtol=1e-12)


def test_weight_one_and_one_chunk_is_the_pipelines_own_encoding(pipe) -> None:
    reference = own_encoding(pipe, SHORT)
    for text in (SHORT, f"({SHORT}:1.0)"):
        with torch.no_grad():
            embeds = encode_sd(pipe, text, "")["prompt_embeds"]
        assert embeds.shape == reference.shape == (1, 16, 16)
        assert torch.equal(embeds, reference)


def test_long_prompt_is_chunks_encoded_independently_and_concatenated(pipe) -> None:
    tokens = pipe.tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(tokens) == 20  # over the 14 a chunk holds
    chunks = chunk_tokens(pipe.tokenizer, LONG)
    assert [len(chunk.ids) for chunk in chunks] == [16, 16]
    with torch.no_grad():
        embeds = encode_sd(pipe, LONG, "")
    assert embeds["prompt_embeds"].shape == (1, 32, 16)
    assert embeds["negative_prompt_embeds"].shape == (1, 32, 16)  # padded with empty chunks to the same length
    words = LONG.split()
    first, second = " ".join(words[:14]), " ".join(words[14:])  # one token per word in this vocabulary
    assert torch.equal(embeds["prompt_embeds"][:, :16], own_encoding(pipe, first))
    assert torch.equal(embeds["prompt_embeds"][:, 16:], own_encoding(pipe, second))
    assert torch.equal(embeds["negative_prompt_embeds"][:, 16:], own_encoding(pipe, ""))


def test_truncate_keeps_the_first_chunk_and_warns(pipe) -> None:
    with pytest.warns(UserWarning, match=r"prompt: over the text encoder's limit of 14 tokens; the last 6 tokens"):
        chunks = chunk_tokens(pipe.tokenizer, LONG, truncate=True)
    assert len(chunks) == 1
    with torch.no_grad(), pytest.warns(UserWarning):
        embeds = encode_sd(pipe, LONG, "", truncate=True)["prompt_embeds"]
    assert torch.equal(embeds, own_encoding(pipe, LONG))  # diffusers truncates at the same place


def test_comma_moves_the_last_phrase_to_the_next_chunk(pipe) -> None:
    text = "a red circle on the left , a blue square on the right and a green triangle"
    chunks = chunk_tokens(pipe.tokenizer, text)
    comma = pipe.tokenizer.get_vocab()[",</w>"]
    first_content = chunks[0].ids[1:chunks[0].ids.index(pipe.tokenizer.eos_token_id)]
    assert first_content[-1] == comma and len(first_content) == 7  # cut after the comma, not mid-phrase


def test_weight_scales_the_token_and_keeps_the_mean(pipe) -> None:
    # A trained CLIP's final LayerNorm has a bias, so its states have a mean to restore; the fixture's is fresh
    # (bias 0, mean ~1e-8), so give it one for this test.
    norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm  # transformers 4 | 5
    saved = norm.bias.detach().clone()
    try:
        with torch.no_grad():
            norm.bias.fill_(0.25)
            plain = encode_sd(pipe, SHORT, "")["prompt_embeds"][0]
            weighted = encode_sd(pipe, "a (red:1.5) circle on the left", "")["prompt_embeds"][0]
    finally:
        with torch.no_grad():
            norm.bias.copy_(saved)
    ratio = weighted / plain  # (T, C): c * multiplier, with c restoring the mean
    red = 2  # <bos> a red ...
    scale = ratio[0].mean()
    assert scale < 1  # the mean was restored by scaling down
    assert torch.allclose(ratio[red], 1.5 * scale.expand(16), rtol=1e-4)
    assert torch.allclose(ratio[[0, 1, 3, 4]], scale.expand(4, 16), rtol=1e-4)
    assert torch.isclose(weighted.mean(), plain.mean(), rtol=1e-5)


def test_centred_states_keep_the_weights_without_an_infinite_rescale(pipe) -> None:
    with torch.no_grad():  # the fixture's fresh encoder: LayerNorm bias 0, hidden states' mean ~0
        plain = encode_sd(pipe, SHORT, "")["prompt_embeds"][0]
        weighted = encode_sd(pipe, "a (red:1.5) circle on the left", "")["prompt_embeds"][0]
    assert plain.mean().abs() < 1e-4 * plain.abs().mean()
    assert torch.isfinite(weighted).all()
    assert torch.allclose(weighted[2], 1.5 * plain[2], rtol=1e-4, atol=1e-6)
    assert torch.allclose(weighted[[0, 1, 3, 4]], plain[[0, 1, 3, 4]], rtol=1e-4, atol=1e-6)


def test_generation_with_weights_and_long_prompts(tiny_sd_folder: Path) -> None:
    def image(prompt: str, **fields) -> np.ndarray:
        request = build_request(prompt=prompt, model=str(tiny_sd_folder), steps=4, guidance=7.5, width=32,
                                height=32, **fields)
        return np.asarray(run(request, CACHE).images[0], dtype=np.int16)

    plain = image(SHORT)
    assert np.array_equal(image(f"({SHORT}:1.0)"), plain)  # the embeddings path equals the pipeline's own
    assert not np.array_equal(image("a (red:1.8) circle on the left"), plain)
    long_image = image(LONG)
    with pytest.warns(UserWarning, match="over the text encoder's limit"):
        truncated = image(LONG, long_prompt="truncate")
    assert not np.array_equal(long_image, truncated)  # the words past the limit changed the image


def test_families_without_clip_weighting_get_the_text_and_a_warning() -> None:
    from difflab.engine.prompt_weighting import prompt_arguments

    request = build_request(prompt="a (red:1.5) circle")
    with pytest.warns(UserWarning, match="weighting is not applied for the flux family"):
        arguments = prompt_arguments(None, "flux", request)  # returns before touching the pipeline
    assert arguments == {"prompt": "a (red:1.5) circle"}
    assert prompt_arguments(None, "sd3", build_request(prompt="a red circle", negative_prompt="blue")) == {
        "prompt": "a red circle", "negative_prompt": "blue"}
