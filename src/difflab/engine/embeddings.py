"""Textual inversion embeddings at generation time (Gal et al. 2022; A1111's ``embeddings/`` folder, diffusers'
``load_textual_inversion``): new words whose input vectors were learned, used in the prompt like any word.

Where they come from:

- ``--embedding FILE[:TOKEN]`` (request field ``embeddings``): a file by path, or a name in the embeddings folder;
  TOKEN overrides the word it is used as;
- the embeddings folder, ``$DIFFLAB_EMBEDDINGS_DIR`` (default ``./embeddings``), scanned with its subfolders as
  A1111 does: a file's stem is its token, and it is loaded when that token appears as a word (any case, as CLIP
  lower-cases) in the prompt or the negative prompt.

Formats: A1111's ``.safetensors`` (``emb_params`` of shape (vectors, dim); SDXL's ``clip_l`` and ``clip_g`` for
its two text encoders), diffusers' ``learned_embeds.safetensors`` (``{token: tensor}``; the file's token is used
when no TOKEN is given), and, only with ``allow_unsafe_pickle``, A1111's pickled ``.pt`` (``string_to_param``
``{'*': tensor}``) and diffusers' ``.bin``, read with ``torch.load(weights_only=True)``.

A multi-vector embedding becomes several tokens, named as diffusers names them (``tok``, ``tok_1``, ...), and
``expand`` writes ``tok`` as ``tok tok_1 ...`` before tokenising (diffusers' ``maybe_convert_prompt``); while any
embedding is applied, prompts are encoded by engine/prompt_weighting.py (equal to the pipeline's own encoding for
plain prompts), so weighting ``(tok:1.2)`` reaches every vector and diffusers' own expansion is never run twice.

Applied for one request (:func:`applied_embeddings`): the pipeline gets a copy of its tokenizer with the tokens
added and its text encoders an input-embedding layer that looks the new ids up in a small table beside the
original (no copy of the vocabulary matrix); both are put back afterwards, even when drawing fails, so nothing
leaks into the next request on a cached pipeline.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from difflab.io.paths import available_hint, looks_like_path, within

import torch

FIELD = "embeddings"
EMBEDDINGS_DIR_ENV = "DIFFLAB_EMBEDDINGS_DIR"
DEFAULT_EMBEDDINGS_DIR = Path("embeddings")  # like A1111's embeddings/, relative to where difflab runs
SAFE_SUFFIX = ".safetensors"
MAX_EMBEDDINGS = 16  # per request
FAMILIES = ("sd", "sdxl", "sdxl-refiner")  # CLIP-only text encoders; Flux's T5 and SD3's three encoders are not
# Which key of an SDXL file goes to which text encoder (A1111's and diffusers' SDXL scripts' layout).
ENCODERS = {"sd": (("tokenizer", "text_encoder", None),),
            "sdxl": (("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g")),
            "sdxl-refiner": (("tokenizer_2", "text_encoder_2", "clip_g"),)}
_TOKEN = re.compile(r"^[^\s()\[\]:,\\/]+$")  # a token must survive the prompt parser as one word
_MARK = "_difflab_embeddings"  # attribute on a tokenizer copy: {lower-case token: [token, token_1, ...]}


@dataclass(frozen=True)
class EmbeddingSpec:
    """One ``FILE[:TOKEN]`` item of a request, before its file is read."""

    source: str
    token: Optional[str] = None

    def __str__(self) -> str:
        return self.source if self.token is None else f"{self.source}:{self.token}"


@dataclass(frozen=True)
class ResolvedEmbedding:
    """An embedding found and read: ``vectors`` maps an encoder key (None: the one encoder of SD 1.x/2.x;
    "clip_l"/"clip_g": SDXL's) to a (vectors, dim) tensor."""

    token: str  # the word it is used as; also its name in "TI hashes", as A1111 names embeddings
    file: Path
    vectors: dict
    explicit: bool  # given in the request (True) or found in the folder by its token (False)

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def sha256(self) -> str:
        from difflab.io.hashing import cached_file_sha256

        return cached_file_sha256(self.file)

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]  # A1111's Embedding.shorthash


def parse_embedding_spec(text: str) -> EmbeddingSpec:
    """``"file.safetensors"``, ``"path/x.pt:mytok"``, ``"name"``: the part after the last colon is the token when
    it is a plain word (so ``C:\\emb\\x.pt`` keeps its drive letter)."""
    text = str(text).strip()
    source, token = text, None
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and _TOKEN.match(tail) and not (len(head) == 1 and head.isalpha()):
        source, token = head.strip(), tail
    elif sep and not tail:
        raise ValueError(f"{FIELD}: {text!r}: the token after ':' is empty; expected FILE[:TOKEN]")
    if not source:
        raise ValueError(f"{FIELD}: {text!r}: expected FILE[:TOKEN], e.g. my-style.safetensors:mystyle")
    if token is not None:
        check_token(token)
    return EmbeddingSpec(source, token)


def check_token(token: str) -> str:
    if not _TOKEN.match(token):
        raise ValueError(f"{FIELD}: token {token!r} must be one word without spaces, brackets, ':' or ','")
    return token


def embeddings_dir() -> Path:
    return Path(os.environ.get(EMBEDDINGS_DIR_ENV) or DEFAULT_EMBEDDINGS_DIR)


def folder_embeddings(folder: Optional[Path] = None) -> dict[str, Path]:
    """The embeddings folder's files by lower-case token (the file's stem), subfolders included, as A1111 scans
    it; hidden files and folders are skipped, and of two files with one token the first in sorted order wins."""
    from difflab.core.checkpoint import PICKLE_SUFFIXES

    folder = embeddings_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        if path.suffix.lower() not in (SAFE_SUFFIX, *PICKLE_SUFFIXES) or not _TOKEN.match(path.stem):
            continue
        if within(path, folder):  # no symlinks out of the folder
            found.setdefault(path.stem.lower(), path)
    return found


def resolve_embeddings(request, folder: Optional[Path] = None) -> list[ResolvedEmbedding]:
    """The request's embeddings: its ``embeddings`` items, then the folder's files whose token is a word of the
    prompt or negative prompt. Every file is read and checked here, before any model weights load."""
    return resolve_for([request], folder)


def resolve_for(requests: Sequence, folder: Optional[Path] = None) -> list[ResolvedEmbedding]:
    """``resolve_embeddings`` over requests drawn in one call (their explicit embeddings are equal; their prompts
    may differ, so the folder's embeddings are the union)."""
    if not requests:
        return []
    folder = embeddings_dir() if folder is None else Path(folder)
    allow_pickle = bool(requests[0].allow_unsafe_pickle)
    resolved: list[ResolvedEmbedding] = []
    for item in getattr(requests[0], "embeddings", ()) or ():
        spec = parse_embedding_spec(item)
        resolved.append(_read(_locate(spec.source, folder), spec.token, allow_pickle, explicit=True))
    taken = {embedding.token.lower() for embedding in resolved}
    texts = [text for request in requests for text in (request.prompt, request.negative_prompt) if text]
    for token, path in folder_embeddings(folder).items():
        if token in taken or not any(_word(token).search(text) for text in texts):
            continue
        resolved.append(_read(path, path.stem, allow_pickle, explicit=False))
        taken.add(token)
    seen: dict[str, Path] = {}
    for embedding in resolved:
        key = embedding.token.lower()
        if key in seen:
            raise ValueError(f"{FIELD}: two embeddings use the token {embedding.token!r} ({seen[key]} and "
                             f"{embedding.file}); give one another token as FILE:TOKEN")
        seen[key] = embedding.file
    if len(resolved) > MAX_EMBEDDINGS:
        raise ValueError(f"{FIELD}: at most {MAX_EMBEDDINGS} embeddings per request; got {len(resolved)}")
    return resolved


def _word(token: str) -> re.Pattern:
    return re.compile(rf"(?<![\w]){re.escape(token)}(?![\w])", re.IGNORECASE)


def _locate(source: str, folder: Path) -> Path:
    path = Path(source).expanduser()
    if looks_like_path(source) or path.suffix:
        if not path.is_file():
            if path.suffix or not (folder / source).is_file():
                raise ValueError(f"{FIELD}: {source!r}: no such file")
            path = folder / source
        return path
    named = folder_embeddings(folder).get(source.lower())
    if named is None:
        raise ValueError(f"{FIELD}: {source!r}: not found in the embeddings folder {str(folder)!r}"
                         f"{available_hint(sorted(folder_embeddings(folder)), folder)}")
    return named


def _read(path: Path, token: Optional[str], allow_pickle: bool, *, explicit: bool) -> ResolvedEmbedding:
    from difflab.core.checkpoint import PICKLE_SUFFIXES

    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ValueError(f"{FIELD}: {str(path)!r} is a pickle ({suffix} files can run code when loaded); use "
                         ".safetensors, or allow_unsafe_pickle (--allow-unsafe-pickle) for a file you trust")
    if suffix != SAFE_SUFFIX and suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{FIELD}: {str(path)!r}: expected a .safetensors (or, allowed, .pt/.bin) embedding file")
    file_token, vectors = _load(str(path), path.stat().st_mtime_ns)
    token = token or file_token or path.stem
    if not _TOKEN.match(token):
        raise ValueError(f"{FIELD}: {str(path)!r}: its token {token!r} is not one plain word; give one as FILE:TOKEN")
    return ResolvedEmbedding(token, path, vectors, explicit)


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int) -> tuple[Optional[str], dict]:
    """(the token the file names, or None; {encoder key: (vectors, dim) float tensor}); cached per file version."""
    if path.lower().endswith(SAFE_SUFFIX):
        from safetensors.torch import load_file

        try:
            state = load_file(path, device="cpu")
        except Exception as error:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"{FIELD}: {path!r} cannot be read as safetensors ({str(error)[:200]})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{FIELD}: {path!r} cannot be read ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None
    token, vectors = _layout(state, path)
    for key, tensor in vectors.items():
        if tensor.ndim == 1:
            tensor = tensor[None]
        if tensor.ndim != 2 or not tensor.is_floating_point() or tensor.shape[0] < 1:
            raise ValueError(f"{FIELD}: {path!r}: expected (vectors, dim) float vectors; got shape "
                             f"{tuple(tensor.shape)} {tensor.dtype}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{FIELD}: {path!r}: its vectors hold inf or NaN")
        vectors[key] = tensor.detach().float().contiguous()
    counts = {tensor.shape[0] for tensor in vectors.values()}
    if len(counts) > 1:
        raise ValueError(f"{FIELD}: {path!r}: clip_l and clip_g have different vector counts")
    return token, vectors


def _layout(state, path: str) -> tuple[Optional[str], dict]:
    if isinstance(state, torch.Tensor):
        return None, {None: state}
    if not isinstance(state, dict):
        raise ValueError(f"{FIELD}: {path!r}: not a textual inversion embedding")
    if "clip_l" in state or "clip_g" in state:  # A1111 SDXL
        return None, {key: state[key] for key in ("clip_l", "clip_g") if key in state}
    if "emb_params" in state:  # A1111 .safetensors
        return None, {None: state["emb_params"]}
    if "string_to_param" in state:  # A1111 .pt: its name is the file's (A1111 ignores the stored one too)
        params = state["string_to_param"]
        if isinstance(params, dict) and len(params) == 1:
            return None, {None: next(iter(params.values()))}
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if len(state) == 1 and len(tensors) == 1:  # diffusers: {token: tensor}
        token, tensor = next(iter(tensors.items()))
        return (token if _TOKEN.match(token) else None), {None: tensor}
    keys = ", ".join(sorted(map(str, state))[:6])
    raise ValueError(f"{FIELD}: {path!r}: not a textual inversion embedding (keys {keys}; expected emb_params, "
                     "clip_l/clip_g, string_to_param, or one token: tensor)")


# ---- applying to a pipeline ----

def check_family(family: str, embeddings: Sequence[ResolvedEmbedding]) -> None:
    if embeddings and family not in FAMILIES:
        raise ValueError(f"{FIELD}: textual inversion embeddings work on CLIP text encoders ({', '.join(FAMILIES)}); "
                         f"this model is {family} (requested: {', '.join(e.token for e in embeddings)})")


def _vectors_for(embedding: ResolvedEmbedding, family: str, key: Optional[str]) -> torch.Tensor:
    vectors = embedding.vectors
    if key is None:
        if None not in vectors:
            raise ValueError(f"{FIELD}: {embedding.token!r} ({embedding.file.name}) was made for SDXL (clip_l/clip_g); "
                             f"this model is {family}")
        return vectors[None]
    if key not in vectors:
        made = "an SD 1.x/2.x embedding (one set of vectors)" if None in vectors else f"it has no {key}"
        raise ValueError(f"{FIELD}: {embedding.token!r} ({embedding.file.name}) is {made}; this {family} model needs "
                         f"{key} vectors for its text encoder")
    return vectors[key]


def token_names(token: str, count: int) -> list[str]:
    """diffusers' names for the tokens of a multi-vector embedding: ``tok``, ``tok_1``, ``tok_2``, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]


@contextmanager
def applied_embeddings(pipeline, family: str, embeddings: Sequence[ResolvedEmbedding]) -> Iterator[None]:
    """``pipeline`` knows the embeddings' tokens inside the block; afterwards its own tokenizers and input
    embedding layers are back, whether or not the block raised. Every check runs before anything changes."""
    if not embeddings:
        yield
        return
    check_family(family, embeddings)
    plans = []  # (tokenizer attribute, encoder attribute, [(names, (n, dim) vectors)])
    for tokenizer_name, encoder_name, key in ENCODERS[family]:
        tokenizer, encoder = getattr(pipeline, tokenizer_name, None), getattr(pipeline, encoder_name, None)
        if tokenizer is None or encoder is None:
            continue
        width = encoder.get_input_embeddings().weight.shape[1]
        vocab = tokenizer.get_vocab()
        lowered = {word.lower() for word in vocab}
        items = []
        for embedding in embeddings:
            vectors = _vectors_for(embedding, family, key)
            if vectors.shape[1] != width:
                raise ValueError(f"{FIELD}: {embedding.token!r} ({embedding.file.name}) has {vectors.shape[1]}-"
                                 f"dimensional vectors; this model's {encoder_name} takes {width} (it was made for "
                                 "another model)")
            if vectors.shape[0] > tokenizer.model_max_length - 2:
                raise ValueError(f"{FIELD}: {embedding.token!r} has {vectors.shape[0]} vectors; a prompt chunk holds "
                                 f"{tokenizer.model_max_length - 2}")
            names = token_names(embedding.token, vectors.shape[0])
            for name in names:
                if is_known_word(tokenizer, vocab, lowered, name):
                    raise ValueError(f"{FIELD}: the token {name!r} ({embedding.file.name}) is already a word of the "
                                     "model's tokenizer; give the embedding another token as FILE:TOKEN")
            items.append((names, vectors))
        plans.append((tokenizer_name, encoder_name, items))
    originals = [(name, getattr(pipeline, name)) for tokenizer_name, encoder_name, _ in plans
                 for name in (tokenizer_name,)]
    layers = []
    copies: dict[int, object] = {}  # one copy per tokenizer object (SDXL pipelines may share one)
    try:
        for tokenizer_name, encoder_name, items in plans:
            tokenizer = getattr(pipeline, tokenizer_name)
            extended = copies.get(id(tokenizer))
            if extended is None:
                extended = copy.deepcopy(tokenizer)
                extended.add_tokens([name for names, _ in items for name in names])
                mark(extended, [names for names, _ in items])
                copies[id(tokenizer)] = extended
            encoder = getattr(pipeline, encoder_name)
            base = encoder.get_input_embeddings()
            ids = [extended.convert_tokens_to_ids(name) for names, _ in items for name in names]
            table = torch.cat([vectors for _, vectors in items])
            layers.append((encoder, base))
            encoder.set_input_embeddings(ExtendedEmbedding(base, ids, table))
            setattr(pipeline, tokenizer_name, extended)
        yield
    finally:
        for encoder, base in reversed(layers):
            encoder.set_input_embeddings(base)
        for name, original in originals:
            setattr(pipeline, name, original)


def is_known_word(tokenizer, vocab: dict, lowered: set, name: str) -> bool:
    """Whether ``name`` already means something to the tokenizer: a vocabulary entry (diffusers' check) or a
    whole word that tokenises to one known token (CLIP stores words as "red</w>", which diffusers' check misses;
    the embedding would silently replace that word in every prompt)."""
    if name in vocab or name.lower() in lowered:
        return True
    ids = tokenizer(name, add_special_tokens=False, truncation=False)["input_ids"]
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


class ExtendedEmbedding(torch.nn.Module):
    """An input-embedding layer that answers the embeddings' ids from a small table and every other id from the
    model's own layer, which stays untouched (no resize, no copy of the vocabulary matrix)."""

    def __init__(self, base: torch.nn.Embedding, ids: list[int], vectors: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.tensor(ids, device=base.weight.device), persistent=False)
        self.register_buffer("table", vectors.to(base.weight.device, base.weight.dtype), persistent=False)
        self.embedding_dim = base.embedding_dim
        self.num_embeddings = max(base.num_embeddings, max(ids) + 1)

    @property
    def weight(self) -> torch.Tensor:  # for code that reads the width or dtype off the layer
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.base(input_ids.clamp(max=self.base.num_embeddings - 1))  # ids past the vocabulary are ours
        match = input_ids.unsqueeze(-1) == self.ids  # (..., k)
        hit = match.any(-1)
        if not bool(hit.any()):
            return hidden
        return torch.where(hit.unsqueeze(-1), self.table[match.int().argmax(-1)], hidden)


def mark(tokenizer, token_lists: Sequence[list[str]]) -> None:
    """Tell ``expand`` (and prompt_weighting) which tokens of ``tokenizer`` (a copy) are embeddings."""
    setattr(tokenizer, _MARK, {names[0].lower(): list(names) for names in token_lists})


def active(tokenizer) -> bool:
    """Whether ``tokenizer`` is a copy carrying applied embeddings (prompts are then encoded by difflab)."""
    return bool(getattr(tokenizer, _MARK, None))


def expand(tokenizer, text: str) -> str:
    """``text`` with each multi-vector embedding's token written as all its tokens (diffusers'
    ``maybe_convert_prompt``, but matching whole words in any case, as the tokenizer matches them)."""
    multi = {token: names for token, names in (getattr(tokenizer, _MARK, None) or {}).items() if len(names) > 1}
    if not multi or not text:
        return text
    pattern = re.compile(r"(?<![\w])(" + "|".join(re.escape(token) for token in sorted(multi, key=len, reverse=True))
                         + r")(?![\w])", re.IGNORECASE)
    return pattern.sub(lambda match: " ".join(multi[match.group(1).lower()]), text)


# ---- metadata ----

def ti_hashes(embeddings: Sequence[ResolvedEmbedding]) -> str:
    """A1111's "TI hashes" value: ``name: <first 12 hex of the file's SHA-256>, ...``."""
    return ", ".join(f"{embedding.token}: {embedding.short_hash}" for embedding in embeddings)


def record(embeddings: Sequence[ResolvedEmbedding]) -> list[dict]:
    return [{"token": e.token, "path": str(e.file.resolve()), "sha256": e.sha256, "vectors": e.count,
             "from": "request" if e.explicit else "folder"} for e in embeddings]
