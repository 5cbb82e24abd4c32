"""Checkpoint merging, as AUTOMATIC1111's checkpoint merger does it (``modules/extras.py``, ``run_modelmerger``).

Two interpolation methods, applied tensor by tensor in float32 and stored in the primary model's dtype:

    weighted sum:    merged = (1 - alpha) * A + alpha * B
    add difference:  merged = A + alpha * (B - C)       (C is the model B was fine-tuned from: B - C is what it learned)

Inputs are diffusers folders or single ``.safetensors`` checkpoints of one family. Folders merge component by
component (``unet/``, ``text_encoder/``, ``vae/``, ...) into a folder laid out like A's; single files merge key by
key into one file. A Stable Diffusion 1.x folder mixed with single files is first written in the single-file
layout (engine.single_file), so an A1111 checkpoint and a diffusers folder merge too. Every tensor of A must exist
in B (and C) with the same shape: models of different architectures are refused, naming the first tensor that
differs, instead of A1111's silent "keep A's tensor".

The recipe goes into each output file's safetensors metadata under A1111's keys: ``sd_merge_recipe`` (JSON:
method, multiplier, the inputs' SHA-256) and ``sd_merge_models`` (per input SHA-256: name, legacy hash, and the
input's own recipe when it was a merge itself), so A1111 and Civitai show where the model came from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

MODES = ("weighted-sum", "add-difference")
A1111_METHOD = {"weighted-sum": "Weighted sum", "add-difference": "Add difference"}
# integer buffers, not weights: A1111 skips this one too (checkpoint_dict_skip_on_merge)
SKIP_SUFFIXES = ("embeddings.position_ids",)
_VARIANTS = (".fp16.", ".bf16.", ".non_ema.", ".ema.")  # diffusers' variant files: the plain file is what loads


@dataclass(frozen=True)
class MergeRecipe:
    mode: str
    alpha: float
    models: tuple[Path, ...]  # A, B[, C]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha must be a number in [0, 1]; got {self.alpha!r}")
        wanted = 3 if self.mode == "add-difference" else 2
        if len(self.models) != wanted:
            names = "A, B and C (the model B was trained from)" if wanted == 3 else "A and B (no C)"
            raise ValueError(f"models: {self.mode} takes {names}; got {len(self.models)} model(s)")

    def merge(self, a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        a32, b32 = a.float(), b.float()
        if self.mode == "weighted-sum":
            merged = (1.0 - self.alpha) * a32 + self.alpha * b32
        else:
            merged = a32 + self.alpha * (b32 - c.float())
        return merged.to(a.dtype)


@dataclass
class WeightSource:
    """The tensors of one model, read lazily: ``{key: file}``; keys of a folder are ``component/tensor name``."""

    path: Path
    family: str
    files: dict[str, Path] = field(default_factory=dict)  # key -> safetensors file holding it
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # key -> shape, from the headers
    metadata: dict[str, str] = field(default_factory=dict)  # the single file's header metadata

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    def tensor(self, key: str, handles: dict[Path, object]) -> torch.Tensor:
        from safetensors import safe_open

        file = self.files[key]
        if file not in handles:
            handles[file] = safe_open(str(file), framework="pt")
        return handles[file].get_tensor(key.split("/", 1)[1] if self.is_folder else key)


def open_source(path: Path, option: str) -> WeightSource:
    """The model at ``path`` (a diffusers folder or a ``.safetensors`` file), its family and tensor names.
    ValueError naming ``option`` for anything else."""
    from difflab.engine.registry import resolve_model
    from difflab.engine.single_file import read_header_shapes

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{option}: {str(path)!r} does not exist")
    if path.is_file() and path.suffix.lower() != ".safetensors":
        raise ValueError(f"{option}: {str(path)!r} is not a .safetensors file or a diffusers folder (pickled "
                         "checkpoints are not merged: convert them to .safetensors first)")
    try:
        family = resolve_model(str(path)).family
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    source = WeightSource(path, family)
    if path.is_file():
        source.shapes, source.metadata = read_header_shapes(path)
        source.files = {key: path for key in source.shapes}
        return source
    for component in sorted(p for p in path.iterdir() if p.is_dir()):
        files = sorted(component.glob("*.safetensors"))
        if not files and any(component.glob("*.bin")):
            raise ValueError(f"{option}: {component.name}/ of {str(path)!r} holds only pickled .bin weights; "
                             "convert them to .safetensors first")
        plain = [f for f in files if not any(v in f.name for v in _VARIANTS)]
        for file in plain or files:
            for key, shape in read_header_shapes(file)[0].items():
                source.files[f"{component.name}/{key}"] = file
                source.shapes[f"{component.name}/{key}"] = shape
    if not source.files:
        raise ValueError(f"{option}: {str(path)!r} holds no .safetensors weights")
    return source


def as_single_file(source: WeightSource, scratch: Path, option: str) -> WeightSource:
    """A Stable Diffusion 1.x folder in the single-file layout (a temporary file), to merge with single files."""
    from difflab.engine.single_file import SINGLE_FILE_FAMILIES, save_single_file

    if not source.is_folder:
        return source
    if source.family not in SINGLE_FILE_FAMILIES:
        raise ValueError(f"{option}: a {source.family} folder cannot be merged with single-file checkpoints; "
                         "give every model as a folder (or every model as a file)")
    file = save_single_file(source.path, scratch / f"{option.strip('-')}.safetensors")
    return open_source(file, option)


def legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: SHA-256 of 64 KiB read at offset 1 MiB (``modules/hashes.py`` model_hash)."""
    with open(path, "rb") as handle:
        handle.seek(0x100000)
        return hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]


def _main_weights(source: WeightSource) -> Path:
    """The file that identifies a model: the single file, or a folder's U-Net (or transformer) weights."""
    if not source.is_folder:
        return source.path
    for component in ("unet", "transformer"):
        files = sorted({f for key, f in source.files.items() if key.startswith(component + "/")})
        if files:
            return files[0]
    return sorted(set(source.files.values()))[0]


def merge_metadata(recipe: MergeRecipe, sources: list[WeightSource]) -> dict[str, str]:
    """A1111's ``sd_merge_recipe`` and ``sd_merge_models`` (and difflab's own copy of the recipe)."""
    from difflab.io.hashing import file_sha256

    hashes = [file_sha256(_main_weights(source)) for source in sources]
    merge_recipe = {
        "type": "difflab", "primary_model_hash": hashes[0], "secondary_model_hash": hashes[1],
        "tertiary_model_hash": hashes[2] if len(hashes) > 2 else None,
        "interp_method": A1111_METHOD[recipe.mode], "multiplier": recipe.alpha, "save_as_half": False,
        "custom_name": "", "config_source": 0, "bake_in_vae": "", "discard_weights": "",
        "is_inpainting": False, "is_instruct_pix2pix": False,
    }
    models: dict[str, dict] = {}
    for source, sha in zip(sources, hashes):
        models[sha] = {"name": source.path.name, "legacy_hash": legacy_hash(_main_weights(source)),
                       "sd_merge_recipe": _json_or_none(source.metadata.get("sd_merge_recipe"))}
        models.update(_json_or_none(source.metadata.get("sd_merge_models")) or {})
    return {"sd_merge_recipe": json.dumps(merge_recipe), "sd_merge_models": json.dumps(models),
            "difflab.merge": json.dumps({"mode": recipe.mode, "alpha": recipe.alpha,
                                         "models": [source.path.name for source in sources]})}


def _json_or_none(text: Optional[str]):
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def check_compatible(sources: list[WeightSource]) -> list[str]:
    """The keys to merge; ValueError naming the model and tensor where the architectures differ."""
    a, names = sources[0], ("A", "B", "C")
    for name, other in zip(names[1:], sources[1:]):
        if other.family != a.family:
            raise ValueError(f"models: A is a {a.family} model and {name} a {other.family} model; "
                             "only models of one family merge")
        missing = [key for key in a.files if key not in other.files and not key.endswith(SKIP_SUFFIXES)]
        if missing:
            raise ValueError(f"models: {name} has no tensor {missing[0]!r} of A ({len(missing)} missing): "
                             "not the same architecture")
    for name, other in zip(names[1:], sources[1:]):  # shapes from the headers: nothing is loaded yet
        for key, shape in a.shapes.items():
            if key in other.shapes and other.shapes[key] != shape and not key.endswith(SKIP_SUFFIXES):
                raise ValueError(f"models: tensor {key!r} is {list(shape)} in A and {list(other.shapes[key])} "
                                 f"in {name}: not the same architecture")
    return list(a.files)


def merge_models(recipe: MergeRecipe, out: Path, on_tensor: Optional[Callable[[int, int], None]] = None) -> Path:
    """Merge ``recipe.models`` into ``out`` (a folder when the inputs are folders, else a ``.safetensors`` file),
    written beside its final name and renamed into place: a failed merge leaves nothing at ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists():
        raise ValueError(f"--out: {str(out)!r} already exists; merging never overwrites a model")
    options = ("A", "B", "C")
    with tempfile.TemporaryDirectory(prefix="difflab-merge-") as scratch_dir:
        scratch = Path(scratch_dir)
        sources = [open_source(path, option) for path, option in zip(recipe.models, options)]
        if any(not s.is_folder for s in sources) and any(s.is_folder for s in sources):
            sources = [as_single_file(s, scratch, option) for s, option in zip(sources, options)]
        folder_output = sources[0].is_folder
        if not folder_output and out.suffix.lower() != ".safetensors":
            raise ValueError(f"--out: merging single files writes one .safetensors file; got {str(out)!r}")
        keys = check_compatible(sources)
        metadata = merge_metadata(recipe, sources)
        merged: dict[Path, dict[str, torch.Tensor]] = {}  # A's file -> its merged tensors
        handles: list[dict] = [{} for _ in sources]
        for done, key in enumerate(keys, 1):
            a = sources[0].tensor(key, handles[0])
            if key.endswith(SKIP_SUFFIXES) or not a.is_floating_point():
                value = a
            else:
                b = sources[1].tensor(key, handles[1])
                c = sources[2].tensor(key, handles[2]) if len(sources) > 2 else None
                value = recipe.merge(a, b, c)
            name = key.split("/", 1)[1] if folder_output else key
            merged.setdefault(sources[0].files[key], {})[name] = value.contiguous()
            if on_tensor is not None:
                on_tensor(done, len(keys))
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=_parent(out)))
        try:
            if folder_output:
                _write_folder(sources[0].path, staging / out.name, merged, metadata)
            else:
                save_file(merged[sources[0].path], str(staging / out.name),
                          metadata={**sources[0].metadata, **metadata})
            (staging / out.name).replace(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _write_folder(primary: Path, target: Path, merged: dict[Path, dict[str, torch.Tensor]],
                  metadata: dict[str, str]) -> None:
    """A's folder with its merged weights: configs, tokenizers and scheduler copied, weight files replaced."""
    from safetensors.torch import save_file

    shutil.copytree(primary, target, symlinks=False,
                    ignore=lambda folder, names: [n for n in names if n.endswith((".safetensors", ".bin", ".ckpt"))])
    for file, tensors in merged.items():
        save_file(tensors, str(target / file.relative_to(primary)), metadata={"format": "pt", **metadata})
