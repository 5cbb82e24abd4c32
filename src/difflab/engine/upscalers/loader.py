"""ESRGAN-family weight files -> networks. The key layouts met in the wild, all mapped onto ``rrdbnet.py``'s names:

- the original ESRGAN repository's (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ``model.3``, ...; "old" in A1111),
  where the convolutions after the trunk are numbered by position: the upsampling convs, then HR conv, then last;
- victorca25's modified layout (``conv_first``, ``RRDB_trunk.N.RDB1.conv1``, ``trunk_conv``, ``upconv1``, ``HRconv``);
- Real-ESRGAN / BasicSR's (``conv_first``, ``body.N.rdb1.conv1``, ``conv_body``, ``conv_up1``, ``conv_hr``), whose x2
  and x1 models pixel-unshuffle their input (``conv_first`` then sees 4x or 16x the channels);
- Real-ESRGAN's compact SRVGGNet (``body.N`` alternating conv and PReLU).

Sizes (features, blocks, growth, scale) are read off the tensors' shapes, as A1111 and spandrel do. ``.safetensors``
first; pickled ``.pth``/``.pt`` only when the user allows it (then read with ``weights_only=True``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Union

import torch

from difflab.engine.upscalers.rrdbnet import RRDBConfig, RRDBNet
from difflab.engine.upscalers.srvgg import SRVGGConfig, SRVGGNetCompact

Network = Union[RRDBNet, SRVGGNetCompact]
_OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_MOD_BLOCK = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_NEW_BLOCK = re.compile(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")


def read_state(path: Path, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    from difflab.core.checkpoint import PICKLE_SUFFIXES

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # SafetensorError, OSError: a corrupt or truncated file
            raise ValueError(f"upscaler {path.name!r}: not a valid safetensors file ({error})") from None
    if suffix in PICKLE_SUFFIXES:
        if not allow_unsafe_pickle:
            raise ValueError(f"upscaler {path.name!r} is a pickle ({suffix}), which can run code when loaded; "
                             "convert it to .safetensors, or pass --allow-unsafe-pickle if you trust its source")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for wrapper in ("params_ema", "params", "state_dict"):  # BasicSR and Lightning checkpoints nest the weights
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        return state
    raise ValueError(f"upscaler {path.name!r}: must be a .safetensors file (or a .pth with --allow-unsafe-pickle)")


def to_basicsr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any RRDBNet layout -> Real-ESRGAN / BasicSR names (``conv_up1`` ... ``conv_upK``, ``conv_hr``, ``conv_last``)."""
    if "conv_first.weight" in state and any(_NEW_BLOCK.match(k) for k in state):
        return dict(state)
    converted: dict[str, torch.Tensor] = {}
    if "conv_first.weight" in state:  # victorca25's modified names
        renames = {"trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_last": "conv_last", "conv_first": "conv_first"}
        for key, value in state.items():
            block = _MOD_BLOCK.match(key)
            if block:
                index, rdb, conv, kind = block.groups()
                converted[f"body.{index}.rdb{rdb}.conv{conv}.{kind}"] = value
                continue
            layer, _, kind = key.rpartition(".")
            upconv = re.fullmatch(r"upconv(\d)", layer)
            if upconv:
                converted[f"conv_up{upconv.group(1)}.{kind}"] = value
            elif layer in renames:
                converted[f"{renames[layer]}.{kind}"] = value
            else:
                raise ValueError(f"upscaler: unexpected tensor {key!r} in a modified-ESRGAN file")
        return converted
    if "model.0.weight" not in state:
        raise ValueError("upscaler: not an ESRGAN-family file (no conv_first / model.0 / body.0 weights)")
    blocks = [_OLD_BLOCK.match(k) for k in state]
    trunk_index = 1 + max(int(m.group(1)) for m in blocks if m)  # model.1.sub.<blocks> is the trunk conv
    tops = sorted({int(m.group(1)) for m in (_OLD_TOP.match(k) for k in state) if m and int(m.group(1)) > 1})
    names = [f"conv_up{k}" for k in range(1, len(tops) - 1)] + ["conv_hr", "conv_last"]  # by position
    if len(tops) < 2:
        raise ValueError("upscaler: an ESRGAN file needs at least an HR conv and a last conv after the trunk")
    position = {index: name for index, name in zip(tops, names)}
    for key, value in state.items():
        block = _OLD_BLOCK.match(key)
        top = _OLD_TOP.match(key)
        if block:
            index, rdb, conv, kind = block.groups()
            converted[f"body.{index}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{trunk_index}."):
            converted[f"conv_body.{key.rsplit('.', 1)[1]}"] = value
        elif top and top.group(1) == "0":
            converted[f"conv_first.{top.group(2)}"] = value
        elif top and int(top.group(1)) in position:
            converted[f"{position[int(top.group(1))]}.{top.group(2)}"] = value
        else:
            raise ValueError(f"upscaler: unexpected tensor {key!r} in an ESRGAN file")
    return converted


def rrdb_config(state: dict[str, torch.Tensor]) -> RRDBConfig:
    out_channels = state["conv_last.weight"].shape[0]
    first_in = state["conv_first.weight"].shape[1]
    unshuffle = math.isqrt(first_in // out_channels) if first_in != out_channels else 1
    if unshuffle * unshuffle * out_channels != first_in:
        raise ValueError(f"upscaler: conv_first takes {first_in} channels, which no pixel-unshuffle of "
                         f"{out_channels} gives")
    blocks = {int(m.group(1)) for m in (_NEW_BLOCK.match(k) for k in state) if m}
    upsamplings = sum(1 for k in state if re.fullmatch(r"conv_up\d\.weight", k))
    return RRDBConfig(in_channels=out_channels, out_channels=out_channels, features=state["conv_first.weight"].shape[0],
                      blocks=len(blocks), growth=state["body.0.rdb1.conv1.weight"].shape[0], upsamplings=upsamplings,
                      unshuffle=unshuffle)


def srvgg_config(state: dict[str, torch.Tensor]) -> SRVGGConfig:
    indices = sorted(int(k.split(".")[1]) for k in state if k.startswith("body.") and k.endswith(".weight"))
    last = state[f"body.{indices[-1]}.weight"]
    in_channels, features = state["body.0.weight"].shape[1], state["body.0.weight"].shape[0]
    scale = math.isqrt(last.shape[0] // in_channels)
    if scale * scale * in_channels != last.shape[0]:
        raise ValueError(f"upscaler: the last conv gives {last.shape[0]} channels, not {in_channels} x a square scale")
    return SRVGGConfig(in_channels=in_channels, out_channels=in_channels, features=features,
                       convolutions=(indices[-1] - 2) // 2, scale=scale)


def is_srvgg(state: dict[str, torch.Tensor]) -> bool:
    return "body.0.weight" in state and "body.1.weight" in state and state["body.1.weight"].dim() == 1


def load_network(path: Path, allow_unsafe_pickle: bool = False) -> Network:
    """The network in ``path`` (eval mode, float32, CPU); ValueError naming the upscaler for anything else."""
    state = read_state(path, allow_unsafe_pickle)
    try:
        if is_srvgg(state):
            network: Network = SRVGGNetCompact(srvgg_config(state))
        else:
            state = to_basicsr(state)
            network = RRDBNet(rrdb_config(state))
        network.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (KeyError, RuntimeError, ValueError, IndexError) as error:
        message = str(error).removeprefix("upscaler: ").splitlines()[0][:240]
        raise ValueError(f"upscaler {path.name!r}: not a loadable ESRGAN / Real-ESRGAN file ({message})") from None
    return network.eval()
