"""Flux LoRA weights in kohya-ss/sd-scripts' format, the one Forge and ComfyUI read (``lora_unet_double_blocks_0_...``).

kohya names Black Forest Labs' layers, and BFL fuses what diffusers keeps apart: a double block's
``img_attn.qkv`` is diffusers' ``attn.to_q``, ``to_k`` and ``to_v`` stacked on the output axis, and a single block's
``linear1`` is ``to_q``, ``to_k``, ``to_v`` and ``proj_mlp``. One LoRA of rank r per diffusers layer becomes one
LoRA of rank n x r on the fused layer, exactly: the down matrices stacked, the up matrices on the block diagonal,
alpha n times as large so that alpha / rank stays the same. sd-scripts writes its split-qkv LoRAs the same way,
and diffusers' kohya converter recognises the block-diagonal form and splits it back into the original adapters
(``_convert_kohya_flux_lora_to_diffusers``). A fused part the LoRA does not adapt (``proj_mlp`` under the
``attention`` network) is a block of zeros.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

# diffusers layer (under transformer_blocks.{i}) -> kohya name (under lora_unet_double_blocks_{i}_)
DOUBLE_BLOCK_LAYERS = {
    "attn.to_out.0": "img_attn_proj",
    "ff.net.0.proj": "img_mlp_0",
    "ff.net.2": "img_mlp_2",
    "norm1.linear": "img_mod_lin",
    "attn.to_add_out": "txt_attn_proj",
    "ff_context.net.0.proj": "txt_mlp_0",
    "ff_context.net.2": "txt_mlp_2",
    "norm1_context.linear": "txt_mod_lin",
}
# fused kohya layer -> its diffusers parts, in BFL's order on the output axis
DOUBLE_BLOCK_FUSED = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_BLOCK_LAYERS = {"proj_out": "linear2", "norm.linear": "modulation_lin"}
SINGLE_BLOCK_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def fused_layers(transformer) -> dict[str, tuple[str, ...]]:
    """kohya name of every fused BFL layer in ``transformer`` -> the diffusers layers (full names) it stacks."""
    fused = {}
    for i in range(len(transformer.transformer_blocks)):
        for kohya, parts in DOUBLE_BLOCK_FUSED.items():
            fused[f"lora_unet_double_blocks_{i}_{kohya}"] = tuple(f"transformer_blocks.{i}.{p}" for p in parts)
    for i in range(len(transformer.single_transformer_blocks)):
        for kohya, parts in SINGLE_BLOCK_FUSED.items():
            fused[f"lora_unet_single_blocks_{i}_{kohya}"] = tuple(f"single_transformer_blocks.{i}.{p}" for p in parts)
    return fused


def _kohya_name(layer: str) -> tuple[str, Optional[str]]:
    """(kohya name, None) for a layer kohya names on its own; (fused kohya name, layer) for a part of a fused one."""
    match = _BLOCK.match(layer)
    if match:
        kind, index, rest = match.groups()
        double = kind == "transformer_blocks"
        prefix = f"lora_unet_{'double' if double else 'single'}_blocks_{index}_"
        for kohya, parts in (DOUBLE_BLOCK_FUSED if double else SINGLE_BLOCK_FUSED).items():
            if rest in parts:
                return prefix + kohya, layer
        name = (DOUBLE_BLOCK_LAYERS if double else SINGLE_BLOCK_LAYERS).get(rest)
        if name:
            return prefix + name, None
    raise ValueError(f"no kohya Flux name for the LoRA layer {layer!r} (kohya names BFL's block layers only)")


def flux_to_kohya(transformer_lora: dict[str, torch.Tensor], transformer, alpha: float,
                  text_encoder_lora: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """peft LoRA weights of a FluxTransformer2DModel (``transformer_blocks.0.attn.to_q.lora_A.weight``) and of
    its CLIP text encoder -> kohya tensors: ``lora_unet_{double,single}_blocks_*`` (``.lora_down.weight``,
    ``.lora_up.weight``, ``.alpha``), CLIP as ``lora_te1_text_model_encoder_layers_*`` as sd-scripts names it.
    ``transformer`` gives the fused layers' part sizes (a part the LoRA skips is zeros of its width)."""
    from difflab.train.lora import to_kohya

    layers: dict[str, dict[str, torch.Tensor]] = {}  # diffusers layer -> {"A": (r, in), "B": (out, r)}
    for key, value in transformer_lora.items():
        for suffix, part in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if key.endswith(suffix):
                layers.setdefault(key[: -len(suffix)], {})[part] = value
                break
        else:
            raise ValueError(f"unexpected LoRA weight {key!r} (DoRA and LoRA biases have no kohya export)")

    tensors: dict[str, torch.Tensor] = {}
    fused_done: set[str] = set()
    fused = fused_layers(transformer)
    widths = {name: m.out_features for name, m in transformer.named_modules() if hasattr(m, "out_features")}
    for layer, weights in layers.items():
        name, part = _kohya_name(layer)
        if part is None:
            tensors[f"{name}.lora_down.weight"] = weights["A"].contiguous()
            tensors[f"{name}.lora_up.weight"] = weights["B"].contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
        elif name not in fused_done:
            fused_done.add(name)
            tensors.update(_fuse(name, fused[name], layers, widths, alpha))
    if text_encoder_lora:
        tensors.update(to_kohya({}, {"text_encoder": text_encoder_lora}, alpha, numbered=True))
    return tensors


def _fuse(name: str, parts: tuple[str, ...], layers: dict[str, dict[str, torch.Tensor]], widths: dict[str, int],
          alpha: float) -> dict[str, torch.Tensor]:
    """One fused kohya LoRA from the parts' LoRAs: down stacked, up block-diagonal, rank and alpha x len(parts);
    ``widths`` gives each part's output size."""
    present = [layers[p] for p in parts if p in layers]
    rank = present[0]["A"].shape[0]
    in_features = present[0]["A"].shape[1]
    if any(w["A"].shape[0] != rank for w in present):
        raise ValueError(f"the parts of {name} have LoRAs of different ranks; kohya's fused layer needs one")
    downs, ups = [], []
    for k, part in enumerate(parts):
        out_features = widths[part]
        weights = layers.get(part)
        downs.append(weights["A"] if weights else torch.zeros(rank, in_features))
        up = torch.zeros(out_features, rank * len(parts))
        if weights:
            up[:, k * rank:(k + 1) * rank] = weights["B"]
        ups.append(up)
    return {f"{name}.lora_down.weight": torch.cat(downs).contiguous(),
            f"{name}.lora_up.weight": torch.cat(ups).contiguous(),
            f"{name}.alpha": torch.tensor(float(alpha) * len(parts))}
