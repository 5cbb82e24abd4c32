"""Which ControlNet a control uses: a registry per base model and family, local folders, cached hub ids.

A control names a preprocessor kind (canny, depth, ...); unless it names a ControlNet itself, the registry picks
the one trained for that kind and the request's base model: the bundled canny ControlNet for tiny-shapes, the
lllyasviel v1.1 ControlNets for SD1.5, the diffusers/xinsir ones for SDXL, InstantX/Shakker-Labs' for Flux.
Nothing here downloads: hub ControlNets come from the local cache (``difflab pull ID``), and the error says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from difflab.engine.registry import BUNDLED_DIR, PRESETS, ResolvedModel, hub_snapshot

# (base preset name or family, kind) -> bundled folder name under difflab/models, or a hub id
CONTROLNETS: dict[tuple[str, str], str] = {
    ("tiny-shapes", "canny"): "tiny-shapes-controlnet-canny",
    ("sd", "canny"): "lllyasviel/control_v11p_sd15_canny",
    ("sd", "scribble"): "lllyasviel/control_v11p_sd15_scribble",
    ("sd", "softedge"): "lllyasviel/control_v11p_sd15_softedge",
    ("sd", "depth"): "lllyasviel/control_v11f1p_sd15_depth",
    ("sd", "pose"): "lllyasviel/control_v11p_sd15_openpose",
    ("sdxl", "canny"): "diffusers/controlnet-canny-sdxl-1.0",
    ("sdxl", "depth"): "diffusers/controlnet-depth-sdxl-1.0",
    ("sdxl", "scribble"): "xinsir/controlnet-scribble-sdxl-1.0",
    ("sdxl", "pose"): "thibaud/controlnet-openpose-sdxl-1.0",
    ("flux", "canny"): "InstantX/FLUX.1-dev-Controlnet-Canny",
    ("flux", "depth"): "Shakker-Labs/FLUX.1-dev-ControlNet-Depth",
}
CONTROL_FAMILIES = ("sd", "sdxl", "flux")
# config.json's _class_name -> the base families it can steer
CONTROLNET_CLASSES = {"ControlNetModel": ("sd", "sdxl"), "FluxControlNetModel": ("flux",)}


@dataclass(frozen=True)
class ResolvedControlNet:
    name: str  # what the user (or the registry) called it
    path: Path  # a diffusers ControlNet folder (config.json + diffusion_pytorch_model.safetensors)
    class_name: str


def base_key(model: ResolvedModel) -> str:
    """The preset name of a bundled base (also when given as its folder), else the model's name."""
    for preset in PRESETS.values():
        if preset.bundled and model.path.resolve() == (BUNDLED_DIR / preset.source).resolve():
            return preset.name
    return model.name


def registry_source(model: ResolvedModel, kind: str) -> Optional[str]:
    return CONTROLNETS.get((base_key(model), kind)) or CONTROLNETS.get((model.family, kind))


def resolve_controlnet(name: Optional[str], kind: str, model: ResolvedModel, field: str) -> ResolvedControlNet:
    """The ControlNet for a control of ``kind`` on ``model``; ValueErrors name ``field``."""
    from difflab.engine.control import KINDS

    if model.family not in CONTROL_FAMILIES:
        raise ValueError(f"controls: ControlNet is supported for the {', '.join(CONTROL_FAMILIES)} families; "
                         f"{model.name!r} is {model.family}")
    wanted = kind if name is None else name
    if wanted in KINDS:  # a kind: the registry's ControlNet for it (model=canny with kind none: a ready edge map)
        source = registry_source(model, wanted) if wanted != "none" else None
        if source is None:
            hint = "give its model" if wanted == "none" else f"no registered {wanted} ControlNet; give its model"
            raise ValueError(f"{field}: {hint} (a diffusers ControlNet folder or a cached hub id)")
        label = source
        if "/" in source:
            path = hub_snapshot(source, f"{field}: the ControlNet {source!r}")
        else:
            path = BUNDLED_DIR / source
        if "/" not in source and not (path / "config.json").is_file():
            raise ValueError(f"{field}: the bundled ControlNet {source!r} is missing from {path}")
    else:
        label, path = wanted, Path(wanted).expanduser()
        if not path.is_dir():
            if wanted.count("/") == 1 and not path.exists():
                path = hub_snapshot(wanted, f"{field}: the ControlNet {wanted!r}")
            else:
                raise ValueError(f"{field}: {wanted!r} is not a ControlNet folder, a registry kind ({', '.join(KINDS)}) "
                                 "or a hub id")
    class_name = _class_of(path, field)
    if model.family not in CONTROLNET_CLASSES[class_name]:
        raise ValueError(f"{field}: {label!r} is a {class_name}, which steers {'/'.join(CONTROLNET_CLASSES[class_name])} "
                         f"models; {model.name!r} is {model.family}")
    return ResolvedControlNet(label, path, class_name)


def _class_of(path: Path, field: str) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{field}: {str(path)!r} has no config.json (not a diffusers ControlNet folder)")
    try:
        class_name = json.loads(config.read_text()).get("_class_name", "")
    except json.JSONDecodeError:
        raise ValueError(f"{field}: {str(config)!r} is not valid JSON") from None
    if class_name not in CONTROLNET_CLASSES:
        raise ValueError(f"{field}: {str(path)!r} holds a {class_name or 'unknown'} model; ControlNets are "
                         f"{', '.join(CONTROLNET_CLASSES)}")
    if not sorted(path.glob("*.safetensors")):
        raise ValueError(f"{field}: {str(path)!r} has no .safetensors weights (pickled weights are not loaded)")
    return class_name


def load_controlnet(controlnet: ResolvedControlNet, device: str, dtype):
    """The ControlNet module, safetensors only, on the device and in the dtype of the base pipeline."""
    import diffusers

    model_class = getattr(diffusers, controlnet.class_name)
    module = model_class.from_pretrained(str(controlnet.path), torch_dtype=dtype, use_safetensors=True,
                                         local_files_only=True)
    return module.to(device).eval()


def check_fits(controlnet_module, pipeline, field: str) -> None:
    """A ControlNet made for another base fails deep in a matmul; say which and why here instead."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    for key in ("cross_attention_dim", "joint_attention_dim", "in_channels"):
        mine, theirs = controlnet_module.config.get(key), denoiser.config.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"{field}: the ControlNet has {key}={mine} but the model's denoiser has {theirs}; it "
                             "was trained for another base model")


def controlnet_hash(path: Path) -> str:
    """A1111's short hash: the first 10 hex digits of the SHA-256 of the weights file."""
    from difflab.engine.outputs import weights_hash

    weights = sorted(path.glob("*.safetensors"))
    return weights_hash(weights[0]) if weights else ""
