"""The locally built CLIP tokenizer: one token per vocabulary word, standard files, sensible fallbacks."""

from __future__ import annotations

import json

import pytest

from difflab.data.shapes import CAPTION_TEMPLATES, ShapesDataset, caption_vocabulary
from difflab.train.tokenizer import ALIASES, EOS_TOKEN, build_tokenizer, build_vocab_and_merges, tokenizer_words


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"), max_length=32)


def test_every_vocabulary_word_is_one_distinct_token(tokenizer):
    # The bug this guards against: CLIPTokenizer(vocab_file=...) maps every word to one id in transformers 5.
    words = tokenizer_words()
    ids = [tokenizer(word, add_special_tokens=False).input_ids for word in words]
    assert all(len(i) == 1 for i in ids), [w for w, i in zip(words, ids) if len(i) != 1]
    assert len({i[0] for i in ids}) == len(words)
    assert set(caption_vocabulary()) <= set(words)


def test_captions_tokenize_word_by_word_with_bos_eos(tokenizer):
    dataset = ShapesDataset(50, seed=3)
    for index in range(len(dataset)):
        text = dataset[index]["caption"]
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)
        assert tokens[0] == "<|startoftext|>" and tokens[-1] == EOS_TOKEN
        assert [t.removesuffix("</w>") for t in tokens[1:-1]] == text.replace(",", " ,").split()
        assert len(tokens) <= 13
    assert len(CAPTION_TEMPLATES) >= 5


def test_aliases_are_words_of_their_own(tokenizer):
    for alias, canonical in ALIASES.items():
        alias_ids = tokenizer(alias, add_special_tokens=False).input_ids
        canonical_ids = tokenizer(canonical, add_special_tokens=False).input_ids
        assert len(alias_ids) == 1 and alias_ids != canonical_ids
    assert tokenizer("in the center").input_ids != tokenizer("in the centre").input_ids


def test_unknown_characters_map_to_unk_and_case_punctuation_are_normalised(tokenizer):
    assert tokenizer.unk_token == EOS_TOKEN
    assert set(tokenizer("zz 42", add_special_tokens=False).input_ids) == {tokenizer.unk_token_id}
    words = {tokenizer.convert_tokens_to_ids(w + "</w>") for w in tokenizer_words()}
    pieces = tokenizer("hexagonal", add_special_tokens=False).input_ids  # unknown word, known letters
    assert len(pieces) > 1 and not set(pieces) <= words
    assert tokenizer("A RED Circle").input_ids == tokenizer("a red circle").input_ids
    assert tokenizer("").input_ids == [tokenizer.bos_token_id, tokenizer.eos_token_id]


def test_padding_to_model_max_length_as_the_pipeline_does(tokenizer):
    ids = tokenizer(["a red circle", ""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 32) and tokenizer.model_max_length == 32
    assert ids[1, 2:].eq(tokenizer.pad_token_id).all()


def test_files_are_standard_and_reloadable(tmp_path, tokenizer):
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges(["red", "right"])
    assert json.loads(json.dumps(vocab)) == vocab and all(" " not in a + b for a, b in merges)
    assert vocab["red</w>"] != vocab["right</w>"]
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a small blue star").input_ids == tokenizer("a small blue star").input_ids


def test_bad_words_are_refused():
    with pytest.raises(ValueError, match="lower-case"):
        build_vocab_and_merges(["Red"])
    with pytest.raises(ValueError, match="max_length"):
        build_tokenizer("/nonexistent", max_length=4)
