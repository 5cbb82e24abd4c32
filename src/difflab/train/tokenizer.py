"""A CLIP tokenizer built locally from the shapes caption vocabulary: one token per vocabulary word.

CLIP's tokenizer is byte-level BPE: a word is split into characters (the last one marked with ``</w>``) and
merged pair by pair, lowest rank in ``merges.txt`` first, as far as ``vocab.json`` allows. Learning the merges
from the vocabulary itself until no word has two pieces left makes every word exactly one token, while the files
stay the standard ones that ``CLIPTokenizer`` (and so ``StableDiffusionPipeline.from_pretrained``) reads without
difflab.

Out-of-vocabulary text: a character no vocabulary word uses (digits, ``z``, ``q``, most punctuation) becomes the
unknown token, which is CLIP's ``<|endoftext|>`` (also its padding token); an unknown word spelt with known
characters falls apart into sub-word pieces, as in real CLIP ("zebra" -> <unk> e b r a</w>, where "a</w>" is
also the word "a"). BPE cannot map a whole unknown word to one unknown token: every character must be in the
vocabulary for merges to work. The
aliases the prompt parser accepts ("center", "middle", "big", "tiny") are words of their own; the trainer swaps
them in for their canonical word now and then (``alias_probability``), so the text encoder learns them as
synonyms.

Why not ``CLIPTokenizer(vocab_file=..., merges_file=...)``: in transformers 5 those arguments are silently
ignored and every word maps to one id (see issue 8); ``from_pretrained`` on a folder reads the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from difflab.core.checkpoint import atomic_write_bytes
from difflab.data.shapes import POSITION_ALIASES, SIZE_ALIASES, caption_vocabulary

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also CLIP's padding and unknown token
END_OF_WORD = "</w>"
# Punctuation the captions use ("..., blue background"); the pre-tokenizer makes each mark a word of its own.
PUNCTUATION = (",", ".")
ALIASES = {**POSITION_ALIASES, **SIZE_ALIASES}  # alias -> canonical word


def tokenizer_words() -> list[str]:
    """Every word that gets a token of its own: the caption vocabulary, the prompt aliases, punctuation."""
    return sorted(set(caption_vocabulary()) | set(ALIASES)) + list(PUNCTUATION)


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``vocab.json`` and ``merges.txt`` contents under which each of ``words`` is a single token.

    BPE training (Sennrich et al. 2016) on the word list itself, run until every word is one symbol: merge the
    most frequent adjacent pair everywhere, record it, repeat. Applying merges by rank, as the tokenizer does,
    replays exactly this sequence on each word, so every word ends as one token. (Hand-written left-to-right
    chains do not: "r i" from "right" outranks "t r" and would split "triangle".)

    Ids: 0 = ``<|startoftext|>``, 1 = ``<|endoftext|>``, then single characters, then merge results in order.
    """
    words = list(dict.fromkeys(words))
    for word in words:
        if not word or any(c.isspace() or c.isupper() for c in word):
            raise ValueError(f"tokenizer words must be non-empty, lower-case and without spaces; got {word!r}")
    vocab: dict[str, int] = {BOS_TOKEN: 0, EOS_TOKEN: 1}
    merges: list[tuple[str, str]] = []
    # 1. The alphabet: every starting piece must be in the vocabulary, including "e</w>"-style word ends.
    symbols = [list(word[:-1]) + [word[-1] + END_OF_WORD] for word in words]
    for piece in sorted({piece for pieces in symbols for piece in pieces}):
        vocab[piece] = len(vocab)
    # 2. Merge the most frequent pair (ties: alphabetical) until every word is a single symbol.
    while any(len(pieces) > 1 for pieces in symbols):
        counts: dict[tuple[str, str], int] = {}
        for pieces in symbols:
            for pair in zip(pieces, pieces[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))
        symbols = [_merge(pieces, pair) for pieces in symbols]
    return vocab, merges


def _merge(pieces: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(pieces):
        if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == pair:
            merged.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            merged.append(pieces[i])
            i += 1
    return merged


def write_tokenizer_files(folder: str | Path, max_length: int, words: Iterable[str] | None = None) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for ``CLIPTokenizer.from_pretrained``.

    ``max_length`` becomes ``model_max_length``: StableDiffusionPipeline pads every prompt to it, so it must
    equal the text encoder's ``max_position_embeddings``.
    """
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8 (the longest caption is 13 tokens with bos/eos); got {max_length}")
    folder = Path(folder)
    vocab, merges = build_vocab_and_merges(tokenizer_words() if words is None else words)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "do_lower_case": True,
    }
    atomic_write_bytes(folder / "vocab.json", (json.dumps(vocab, indent=1) + "\n").encode())
    merges_text = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges)
    atomic_write_bytes(folder / "merges.txt", merges_text.encode())
    atomic_write_bytes(folder / "tokenizer_config.json", (json.dumps(config, indent=2) + "\n").encode())
    return folder


def build_tokenizer(folder: str | Path, max_length: int, words: Iterable[str] | None = None):
    """Write the tokenizer files into ``folder`` and load them as a ``transformers.CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder, max_length, words)
    return CLIPTokenizer.from_pretrained(str(folder))
