"""LoRAs at generation time: parse ``NAME_OR_PATH:WEIGHT``, find the file, load, weight, combine, fuse, unload.

A LoRA (Hu et al. 2021) adds ``(alpha / r) * B @ A`` to a linear layer's weight; diffusers loads one into a
pipeline as a peft adapter (``pipe.load_lora_weights(..., adapter_name=...)``), several are combined with
``set_adapters(names, adapter_weights=...)``, and ``fuse_lora`` folds the weighted sum into the base weights so
sampling runs at the base model's speed. Three on-disk formats load:

- diffusers: ``pytorch_lora_weights.safetensors`` with ``unet.`` / ``text_encoder.`` keys (what
  ``StableDiffusionPipeline.save_lora_weights`` and ``difflab train lora`` write);
- kohya: ``lora_unet_..._to_q.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (A1111, ComfyUI, model sites);
- peft: a folder with ``adapter_config.json`` + ``adapter_model.safetensors`` of a U-Net adapter.

Pipelines are cached between requests, so :func:`applied_loras` always unloads in a ``finally``: a LoRA must
never leak into the next request. diffusers only *warns* when a LoRA's keys match nothing in the model (a LoRA
for another base family loads as a silent no-op), so after loading we count the LoRA layers that were actually
injected and raise :class:`LoraError`, naming the file, when the file holds more than the model took.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from difflab.io.paths import available_hint, looks_like_path, within

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights default
KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"  # difflab's kohya export beside it
PEFT_WEIGHT_NAME, PEFT_CONFIG_NAME = "adapter_model.safetensors", "adapter_config.json"
LORA_DIR_ENV = "DIFFLAB_LORA_DIR"
DEFAULT_LORA_DIR = Path("loras")  # like A1111's models/Lora, relative to where difflab runs
MAX_WEIGHT = 10.0  # |weight| beyond this is a typo, not a style: outputs would be noise
# The first tensor of each LoRA pair ("down", A) in every key convention diffusers reads.
_DOWN_KEY = re.compile(r"(lora_down\.|lora\.down\.|lora_linear_layer\.down\.|_lora\.down\.|lora_A\.)")
# Pipeline components that can carry LoRA layers, in diffusers' prefix names.
LORA_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


class LoraError(ValueError):
    """A LoRA that cannot be used: unknown name, unreadable file, or one that does not fit the model."""


@dataclass(frozen=True)
class LoraSpec:
    """One ``NAME_OR_PATH:WEIGHT`` item of a request, before its file is looked up."""

    source: str  # the name or path as written
    weight: float = 1.0

    def __str__(self) -> str:
        return f"{self.source}:{self.weight:g}"


@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA found on disk: ``file`` is the .safetensors to load (a peft folder's adapter_model for peft)."""

    name: str  # display name: the file's stem, or the folder's name for a folder
    file: Path
    weight: float
    format: str  # "diffusers", "kohya" or "peft"

    @property
    def adapter_name(self) -> str:
        # peft adapter names become attribute keys: keep them to identifier characters
        return "lora_" + re.sub(r"\W", "_", self.name)


def parse_lora_spec(text: str) -> LoraSpec:
    """``"name"``, ``"name:0.8"``, ``"path/to/x.safetensors:-0.5"``, ``"C:\\loras\\x.safetensors:0.7"``: the
    weight is the part after the last colon. That part must be a number, except after a drive letter
    (``C:\\loras\\x``) or when the whole text names an existing LoRA; a name that contains a colon takes its
    weight explicitly (``my:style:1``). Otherwise the error names the weight, not a missing LoRA."""
    text = text.strip()
    source, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            weight = float(tail)
            source = head.strip()
        except ValueError:
            if not (_is_drive_path(text) or _names_an_existing_lora(text)):
                raise LoraError(f"lora {text!r}: weight {tail.strip()!r} is not a number; write NAME_OR_PATH[:WEIGHT], "
                                "e.g. hexagon:0.8 (a name with a colon takes its weight: my:style:1)") from None
    if not source:
        raise LoraError(f"lora {text!r}: expected NAME_OR_PATH[:WEIGHT], e.g. hexagon:0.8")
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise LoraError(f"lora {text!r}: weight must be a finite number within +-{MAX_WEIGHT:g}; got {tail}")
    return LoraSpec(source, weight)


def _is_drive_path(text: str) -> bool:
    """``C:\\loras\\x.safetensors`` or ``C:/loras/x``: a Windows drive, its colon no weight separator."""
    return re.match(r"^[A-Za-z]:[\\/]", text) is not None and text.count(":") == 1


def _names_an_existing_lora(text: str) -> bool:
    """A file or folder called ``text`` as given or in the LoRA folder (a name with a colon, written before
    colons needed an explicit weight)."""
    try:
        return any(p.exists() for p in (Path(text).expanduser(), lora_dir() / text, lora_dir() / f"{text}.safetensors"))
    except OSError:  # a name too long or otherwise impossible on this file system
        return False


def lora_dir() -> Path:
    return Path(os.environ.get(LORA_DIR_ENV) or DEFAULT_LORA_DIR)


def resolve_lora(spec: LoraSpec | str, folder: Optional[Path] = None, *, allow_paths: bool = True) -> ResolvedLora:
    """Find the LoRA's file: a name inside ``folder`` (default ``$DIFFLAB_LORA_DIR`` or ``./loras``), or, with
    ``allow_paths`` (the command line; not a network API), any path. A name can never reach outside ``folder``."""
    spec = parse_lora_spec(spec) if isinstance(spec, str) else spec
    folder = lora_dir() if folder is None else Path(folder)
    source = spec.source
    path = Path(source).expanduser()
    if looks_like_path(source):
        if not allow_paths:
            raise LoraError(f"lora {source!r}: give a name from the LoRA folder, not a path")
        if not path.exists():
            raise LoraError(f"lora {source!r}: no such file or folder")
        return _resolved(path, spec.weight, source)
    for candidate in (folder / source, folder / f"{source}.safetensors"):
        if candidate.exists():
            if not within(candidate, folder):  # a symlink pointing outside
                raise LoraError(f"lora {source!r}: resolves outside the LoRA folder {str(folder)!r}")
            return _resolved(candidate, spec.weight, source)
    known = sorted(p.stem if p.is_file() else p.name for p in folder.glob("*")
                   if p.suffix == ".safetensors" or p.is_dir()) if folder.is_dir() else []
    raise LoraError(f"lora {source!r}: not found in the LoRA folder {str(folder)!r}{available_hint(known, folder)}")


def _resolved(path: Path, weight: float, source: str) -> ResolvedLora:
    from difflab.core.checkpoint import PICKLE_SUFFIXES

    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraError(f"lora {source!r}: {path.suffix} files are pickles (they can run code); use .safetensors")
    if path.is_dir():
        if (path / PEFT_CONFIG_NAME).is_file() and (path / PEFT_WEIGHT_NAME).is_file():
            return ResolvedLora(path.name, path / PEFT_WEIGHT_NAME, weight, "peft")
        if (path / DIFFUSERS_WEIGHT_NAME).is_file():
            return ResolvedLora(path.name, path / DIFFUSERS_WEIGHT_NAME, weight, _format_of(path / DIFFUSERS_WEIGHT_NAME))
        raise LoraError(f"lora {source!r}: folder holds neither {DIFFUSERS_WEIGHT_NAME} nor "
                        f"{PEFT_CONFIG_NAME} + {PEFT_WEIGHT_NAME}")
    if path.suffix.lower() != ".safetensors":
        raise LoraError(f"lora {source!r}: expected a .safetensors file or a LoRA folder")
    return ResolvedLora(path.stem, path, weight, _format_of(path))


def _format_of(file: Path) -> str:
    keys = _keys(file)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    return "diffusers"


def _keys(file: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as error:
        raise LoraError(f"lora file {str(file)!r} cannot be read as safetensors ({error})") from None


def lora_hash(file: Path) -> str:
    """A1111's LoRA short hash ("addnet" hash): SHA-256 of the tensor bytes after the safetensors header, first
    12 hex digits, so editing a file's metadata does not change it."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


# --- loading into a pipeline -----------------------------------------------------------------------------------


def _lora_modules(pipeline) -> list[tuple[str, Any]]:
    return [(name, getattr(pipeline, name)) for name in LORA_COMPONENTS if getattr(pipeline, name, None) is not None]


def injected_layers(pipeline, adapter_name: str) -> int:
    """How many layers of the pipeline carry ``adapter_name``'s LoRA weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for _, component in _lora_modules(pipeline) for module in component.modules()
               if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "lora_A", {}))


def load_lora(pipeline, lora: ResolvedLora) -> None:
    """Load one LoRA as adapter ``lora.adapter_name``; raise LoraError naming the file if it does not fit."""
    import logging

    from safetensors.torch import load_file

    expected = sum(1 for key in _keys(lora.file) if _DOWN_KEY.search(key))
    if expected == 0:
        raise LoraError(f"lora file {str(lora.file)!r} holds no LoRA weights (lora_A / lora_down keys); "
                        f"LyCORIS variants (LoHa, LoKr) are not supported")
    # diffusers logs (not raises) unmatched keys; keep that noise off the user's terminal, we check ourselves
    diffusers_logger = logging.getLogger("diffusers")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR + 10)
    try:
        with warnings.catch_warnings():
            # peft warns on every adapter after the first that the model already has one: combining is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            if lora.format == "peft":
                config = json.loads((lora.file.parent / PEFT_CONFIG_NAME).read_text())
                state_dict = {k.removeprefix("base_model.model."): v for k, v in load_file(str(lora.file)).items()}
                metadata = {k: v for k, v in config.items() if k in _LORA_CONFIG_FIELDS}
                pipeline.unet.load_lora_adapter(state_dict, prefix=None, adapter_name=lora.adapter_name,
                                                metadata=metadata)
            else:
                pipeline.load_lora_weights(str(lora.file.parent), weight_name=lora.file.name,
                                           adapter_name=lora.adapter_name)
    except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as error:
        # AssertionError: diffusers' kohya Flux converter asserts FLUX.1's layer widths
        _forget(pipeline, lora.adapter_name)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoraError(f"lora file {str(lora.file)!r} does not fit this model: {first_line[:300]}") from None
    finally:
        diffusers_logger.setLevel(level)
    injected = injected_layers(pipeline, lora.adapter_name)
    if injected < expected:
        _forget(pipeline, lora.adapter_name)
        raise LoraError(f"lora file {str(lora.file)!r} does not fit this model: {expected - injected} of its "
                        f"{expected} LoRA layers match no layer of the model (a LoRA for another base model?)")


# LoraConfig fields that a peft adapter_config.json may carry and diffusers passes on to LoraConfig
_LORA_CONFIG_FIELDS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_dora",
                       "lora_bias", "use_rslora", "init_lora_weights", "exclude_modules", "fan_in_fan_out")


def _forget(pipeline, adapter_name: str) -> None:
    """Remove a half-loaded adapter, whatever state the failed load left it in."""
    with contextlib.suppress(Exception):
        pipeline.delete_adapters([adapter_name])
    for _, component in _lora_modules(pipeline):
        with contextlib.suppress(Exception):
            component.delete_adapters([adapter_name])


def unload_loras(pipeline, fused: bool = False) -> None:
    """Back to the base model: unfuse first (unloading a fused LoRA would keep its delta), then drop the layers."""
    if fused:
        pipeline.unfuse_lora()
    pipeline.unload_lora_weights()


@contextlib.contextmanager
def applied_loras(pipeline, loras: Sequence[ResolvedLora], *, fuse: bool = False) -> Iterator[list[ResolvedLora]]:
    """Load ``loras`` with their weights for the duration of the block; always unload afterwards.

    With ``fuse``, the weighted sum is folded into the base weights (faster steps); unfusing subtracts it again,
    which leaves float rounding of ~1e-7 relative in the base weights (measured in tests/engine/test_lora.py).
    """
    if not loras:
        yield []
        return
    names = [lora.adapter_name for lora in loras]
    if len(set(names)) != len(names):
        raise LoraError(f"the same LoRA is listed twice: {', '.join(lora.name for lora in loras)}")
    fused = False
    try:
        for lora in loras:
            load_lora(pipeline, lora)
        pipeline.set_adapters(names, adapter_weights=[lora.weight for lora in loras])
        if fuse:
            pipeline.fuse_lora(adapter_names=names, lora_scale=1.0)
            fused = True
        yield list(loras)
    finally:
        unload_loras(pipeline, fused)


def resolve_all(sources: Sequence[str], folder: Optional[Path] = None, *, allow_paths: bool = True) -> list[ResolvedLora]:
    return [resolve_lora(source, folder, allow_paths=allow_paths) for source in sources]
