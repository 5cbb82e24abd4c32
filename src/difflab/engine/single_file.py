"""Single-file Stable Diffusion checkpoints: write one in the original (LDM / A1111) key layout, and load one offline.

Writing is the inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint`` (diffusers/loaders/single_file_utils.py), following the logic of diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py`` but computed from the model's config instead of
SD1.5's fixed block counts, so any UNet2DConditionModel / AutoencoderKL shape converts (the tiny test models, the
bundled model, SD1.x). The keys are what A1111, ComfyUI and ``from_single_file`` read:
``model.diffusion_model.*`` (U-Net), ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*`` (CLIP).

Loading: ``from_single_file`` needs the diffusers configs of the pipeline the weights belong to (layer counts,
tokenizer, scheduler); without the network it cannot fetch them. difflab looks, in order, for (1) the configs
embedded in the file's safetensors metadata (``difflab.configs``, written by :func:`save_single_file`; a JSON
map of relative path -> text, a few kB, ignored by other tools), (2) the family's base model in the local
Hugging Face cache (``sd15``), and otherwise says how to get them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Optional

import torch

from difflab.core.checkpoint import PICKLE_SUFFIXES

CONFIG_METADATA_KEY = "difflab.configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# the family's base model, whose cached configs serve checkpoints that carry none
BASE_CONFIG_PRESET = {"sd": "sd15"}
SINGLE_FILE_FAMILIES = tuple(BASE_CONFIG_PRESET)

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Diffusers U-Net keys -> LDM keys (without the ``model.diffusion_model.`` prefix)."""
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    renames: dict[str, str] = dict(_UNET_TOP)
    # down path: input_blocks.0 is conv_in, then per level `per_level` (resnet, attention) pairs and a downsampler
    for level in range(levels):
        for j in range(per_level):
            ldm = 1 + level * (per_level + 1) + j
            renames[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{ldm}.0"
            renames[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{ldm}.1"
        renames[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{(level + 1) * (per_level + 1)}.0.op"
    renames["mid_block.resnets.0"] = "middle_block.0"
    renames["mid_block.attentions.0"] = "middle_block.1"
    renames["mid_block.resnets.1"] = "middle_block.2"
    # up path: per level `per_level + 1` blocks; the upsampler sits after the attention where there is one
    for level in range(levels):
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
        for j in range(per_level + 1):
            ldm = level * (per_level + 1) + j
            renames[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{ldm}.0"
            renames[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{ldm}.1"
        last = level * (per_level + 1) + per_level
        renames[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if has_attention else 1}.conv"
    converted = {}
    for key, value in state.items():
        converted[_rename(key, renames, _UNET_RESNET if ".resnets." in key else {})] = value
    return converted


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL keys -> LDM keys (without ``first_stage_model.``); attention weights become 1x1
    convolutions again, as in the original VAE."""
    levels = len(config["block_out_channels"])
    renames: dict[str, str] = {}
    for side in ("encoder", "decoder"):
        renames.update({f"{side}.{k}": f"{side}.{v}" for k, v in _VAE_TOP.items()})
        renames[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        renames[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        renames[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
    for level in range(levels):
        renames[f"encoder.down_blocks.{level}.resnets"] = f"encoder.down.{level}.block"
        renames[f"encoder.down_blocks.{level}.downsamplers.0"] = f"encoder.down.{level}.downsample"
        # the decoder's up blocks are numbered from the bottom in LDM, from the top in diffusers
        renames[f"decoder.up_blocks.{level}.resnets"] = f"decoder.up.{levels - 1 - level}.block"
        renames[f"decoder.up_blocks.{level}.upsamplers.0"] = f"decoder.up.{levels - 1 - level}.upsample"
    converted = {}
    for key, value in state.items():
        inner = _VAE_ATTENTION if ".attentions." in key else {"conv_shortcut": "nin_shortcut"}
        new_key = _rename(key, renames, inner)
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # (out, in) linear -> (out, in, 1, 1) convolution
        converted[new_key] = value
    return converted


def clip_to_ldm(key: str) -> str:
    """CLIP keys as the original checkpoints hold them (``text_model.*``); transformers >= 5.6 saves
    CLIPTextModel flattened, without the ``text_model.`` level."""
    return key if key.startswith(("text_model.", "text_projection")) else "text_model." + key


def _rename(key: str, renames: dict[str, str], inner: dict[str, str]) -> str:
    """Replace the longest matching module prefix, then the layer name inside it."""
    for prefix in sorted(renames, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            head, rest = renames[prefix], key[len(prefix) + 1:]
            for old in sorted(inner, key=len, reverse=True):
                if rest == old or rest.startswith(old + "."):
                    rest = inner[old] + rest[len(old):]
                    break
            return f"{head}.{rest}" if rest else head
    return key


def _configs_of(folder: Path) -> dict[str, str]:
    """The small text files of a diffusers folder (configs, tokenizer): what ``from_single_file`` needs."""
    texts = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".txt") and path.stat().st_size < 4_000_000:
            texts[str(path.relative_to(folder))] = path.read_text()
    return texts


def save_single_file(pipeline_folder: str | Path, out: str | Path, *, embed_configs: bool = True) -> Path:
    """Write a Stable Diffusion diffusers folder as one LDM-layout ``.safetensors`` file (atomically)."""
    from safetensors.torch import load_file, save_file

    folder, out = Path(pipeline_folder), Path(out)
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "StableDiffusionPipeline":
        raise ValueError(f"model: single-file export supports StableDiffusionPipeline folders; "
                         f"{folder} holds {index.get('_class_name')}")

    def component(name: str) -> tuple[dict, dict]:
        weights = load_file(str(folder / name / _weights_name(folder / name)))
        return weights, json.loads((folder / name / "config.json").read_text())

    unet, unet_config = component("unet")
    vae, vae_config = component("vae")
    text_encoder, _ = component("text_encoder")
    tensors = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet, unet_config).items()}
    tensors.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae, vae_config).items()})
    tensors.update({CLIP_PREFIX + clip_to_ldm(k): v for k, v in text_encoder.items()})
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt"}
    if embed_configs:
        metadata[CONFIG_METADATA_KEY] = json.dumps(_configs_of(folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(out)
    return out


def _weights_name(component_folder: Path) -> str:
    found = sorted(p.name for p in component_folder.glob("*.safetensors"))
    if not found:
        raise ValueError(f"model: {component_folder} has no .safetensors weights")
    return found[0]


def read_header(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """(tensor names, metadata) of a safetensors file, reading the header only; ValueError naming the model if
    the file is not valid safetensors (truncated, corrupt, or another format)."""
    shapes, metadata = read_header_shapes(path)
    return list(shapes), metadata


def read_header_shapes(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({tensor name: shape}, metadata) from the header only; errors as :func:`read_header`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            return shapes, dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own SafetensorError, OSError, or ValueError
        raise ValueError(f"model: {str(path)!r} is not a valid safetensors file ({error})") from None


def family_of_checkpoint(keys: list[str]) -> str:
    """The model family from the tensor names of an original-layout checkpoint."""
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "flux"
    if any(k.startswith(("joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in keys):
        return "sd3"
    if any(k.startswith(UNET_PREFIX + "input_blocks.") for k in keys):
        return "sd"
    raise ValueError("model: the file is not a Stable Diffusion checkpoint in the original layout "
                     "(no model.diffusion_model.* U-Net weights)")


def check_loadable(path: Path, allow_unsafe_pickle: bool) -> None:
    """Refuse pickle checkpoints unless the user opted in: unpickling runs whatever code the file contains."""
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_unsafe_pickle:
        raise ValueError(f"model {str(path)!r} is a pickle checkpoint, which can run arbitrary code when loaded; "
                         "convert it to .safetensors, or pass --allow-unsafe-pickle if you trust its source")


def config_folder(path: Path, family: str, metadata: Optional[dict[str, str]] = None) -> Path:
    """A local diffusers folder with the configs for a single-file checkpoint (see the module docstring)."""
    if metadata is None:
        metadata = {} if path.suffix.lower() in PICKLE_SUFFIXES else read_header(path)[1]
    if CONFIG_METADATA_KEY in metadata:
        texts = json.loads(metadata[CONFIG_METADATA_KEY])
        digest = hashlib.sha256(metadata[CONFIG_METADATA_KEY].encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / "difflab-single-file-configs" / digest
        if not (folder / "model_index.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            # written beside the final name and renamed, so a half-written folder is never used
            staging = Path(tempfile.mkdtemp(prefix=f"{digest}-", dir=folder.parent))
            for relative, text in texts.items():
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            try:
                staging.replace(folder)
            except OSError:  # another process wrote the same configs first
                pass
        return folder
    from difflab.engine.registry import ModelNotAvailable, resolve_model

    preset = BASE_CONFIG_PRESET.get(family)
    if preset is None:
        raise ValueError(f"model {str(path)!r}: single-file {family} checkpoints are not supported; "
                         f"use a diffusers folder (supported single-file families: {', '.join(SINGLE_FILE_FAMILIES)})")
    try:
        return resolve_model(preset).path
    except ModelNotAvailable:
        raise ModelNotAvailable(
            f"model {str(path)!r}: a single-file {family} checkpoint needs the configs of {preset!r}, which are not "
            f"in the local Hugging Face cache; on a machine with network run `difflab pull {preset}` and copy the "
            "cache here"
        ) from None


def load_single_file_pipeline(path: Path, family: str, dtype: torch.dtype, allow_unsafe_pickle: bool = False):
    """A StableDiffusionPipeline from one checkpoint file, offline (configs as :func:`config_folder` finds them)."""
    import diffusers

    check_loadable(path, allow_unsafe_pickle)
    configs = config_folder(path, family)
    return diffusers.StableDiffusionPipeline.from_single_file(
        str(path), config=str(configs), torch_dtype=dtype, local_files_only=True
    )
