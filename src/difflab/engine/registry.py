"""Which model a name means: bundled models, presets of the families people run, hub ids, local folders.

A preset carries the family's defaults (size, steps, guidance) so ``difflab generate --model sdxl "..."`` does
the right thing without flags. Nothing here downloads: a hub model must already be in the local Hugging Face cache
(``difflab pull NAME`` on a connected machine puts it there), and otherwise the error says so and how.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from difflab.core.checkpoint import PICKLE_SUFFIXES

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # hub id, or a folder name under difflab/models for bundled models
    family: str  # sd, sdxl, sdxl-refiner, flux, sd3
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: Optional[str] = None  # A1111 name; None keeps the model's own
    bundled: bool = False
    notes: str = ""
    guidance_end: float = 1.0  # fraction of the steps with CFG (engine/guidance_interval.py)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("tiny-shapes", "tiny-shapes", "sd", 64, 64, 20, 7.5, "DPM++ 2M", bundled=True,
           notes="difflab's own 64x64 shapes model (offline default)", guidance_end=0.7),
    Preset("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd", 512, 512, 30, 7.5, "DPM++ 2M Karras"),
    Preset("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024, 1024, 30, 7.0, "DPM++ 2M Karras"),
    Preset("sdxl-refiner", "stabilityai/stable-diffusion-xl-refiner-1.0", "sdxl-refiner", 1024, 1024, 30, 7.0),
    Preset("sdxl-turbo", "stabilityai/sdxl-turbo", "sdxl", 512, 512, 1, 0.0, "Euler a",
           notes="adversarially distilled: 1-4 steps, no CFG"),
    Preset("flux-schnell", "black-forest-labs/FLUX.1-schnell", "flux", 1024, 1024, 4, 0.0,
           notes="timestep-distilled: 4 steps, no CFG"),
    Preset("flux-dev", "black-forest-labs/FLUX.1-dev", "flux", 1024, 1024, 50, 3.5,
           notes="guidance-distilled: guidance is an input, not CFG"),
    Preset("sd3.5-medium", "stabilityai/stable-diffusion-3.5-medium", "sd3", 1024, 1024, 40, 4.5),
)}

# model_index.json's _class_name -> family, for folders and hub ids that are not presets
FAMILY_OF_PIPELINE = {
    "StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl-refiner",
    "FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3",
}
FAMILY_DEFAULTS = {  # width/height, steps, guidance for models that are not presets
    "sd": (512, 512, 30, 7.5), "sdxl": (1024, 1024, 30, 7.0), "sdxl-refiner": (1024, 1024, 30, 7.0),
    "flux": (1024, 1024, 28, 3.5), "sd3": (1024, 1024, 28, 5.0),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on this machine: where its files are and how to drive it."""

    name: str
    path: Path  # a diffusers folder or a single-file checkpoint
    family: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: Optional[str] = None
    single_file: bool = False
    extra: dict = field(default_factory=dict)
    guidance_end: float = 1.0


class ModelNotAvailable(ValueError):
    """The model is known but its weights are not on this machine."""


def resolve_model(name: str, allow_unsafe_pickle: bool = False) -> ResolvedModel:
    """A preset name, a local diffusers folder, a single-file .safetensors checkpoint, or a cached hub id.
    Pickle checkpoints (.ckpt, .pt, .bin, ...) only with ``allow_unsafe_pickle``: unpickling can run code."""
    preset = PRESETS.get(name)
    if preset is not None:
        if preset.bundled:
            path = BUNDLED_DIR / preset.source
        else:
            path = hub_snapshot(preset.source, f"model {name!r} ({preset.source})", pull_name=name)
        if preset.bundled and not (path / "model_index.json").is_file():
            raise ModelNotAvailable(f"model {name!r}: the bundled weights are missing from {path}")
        return ResolvedModel(name, path, preset.family, preset.width, preset.height, preset.steps, preset.guidance,
                             preset.scheduler, guidance_end=preset.guidance_end)
    path = Path(name).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES or (path.is_file() and path.suffix.lower() == ".safetensors"):
        return _resolve_single_file(name, path, allow_unsafe_pickle)
    if path.is_dir():
        return _with_family_defaults(name, path, _family_of_folder(path))
    if not path.exists() and (path.suffix.lower() in WEIGHT_FILE_SUFFIXES or _looks_like_a_path(name)):
        # a file or folder that is not there, not a hub id: the hub's own "Repo id must use alphanumeric
        # chars" would only confuse
        what = "file" if path.suffix.lower() in WEIGHT_FILE_SUFFIXES else "folder"
        raise ValueError(f"model {name!r}: no such {what} ({path.resolve()})")
    if "/" in name and not path.exists() and name.count("/") == 1:
        snapshot = hub_snapshot(name, f"model {name!r} ({name})")
        return _with_family_defaults(name, snapshot, _family_of_folder(snapshot))
    choices = ", ".join(PRESETS)
    raise ValueError(f"model must be a preset ({choices}), a hub id, a diffusers folder or a .safetensors file; got {name!r}")


WEIGHT_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def _looks_like_a_path(name: str) -> bool:
    """A name a hub id can never be: relative (./, ../), absolute, home (~), or with a backslash or drive."""
    return (name.startswith((".", "/", "~")) or "\\" in name or Path(name).is_absolute()
            or (len(name) > 1 and name[1] == ":"))


def _resolve_single_file(name: str, path: Path, allow_unsafe_pickle: bool) -> ResolvedModel:
    """A one-file checkpoint: its family from its tensor names (pickles, whose names cannot be read without
    unpickling, are taken as SD1.x, the format's common case)."""
    from difflab.engine.single_file import check_loadable, family_of_checkpoint, read_header

    check_loadable(path, allow_unsafe_pickle)
    if not path.is_file():
        raise ValueError(f"model {name!r}: no such file")
    family = "sd" if path.suffix.lower() in PICKLE_SUFFIXES else family_of_checkpoint(read_header(path)[0])
    return _with_family_defaults(name, path, family, single_file=True)


# flow-matching models (Flux, SD3) are sampled by FlowMatchEulerDiscreteScheduler; the A1111 samplers are built
# for noise-prediction models and would silently draw garbage (or fail deep inside) on them, so only 'Euler',
# which is what the flow-matching scheduler is, is accepted there
FLOW_MATCHING_FAMILIES = ("flux", "sd3")
FLOW_MATCHING_SAMPLERS = ("Euler",)


def check_scheduler_fits(model: ResolvedModel, scheduler: Optional[str]) -> None:
    """ValueError naming the scheduler field when an A1111 sampler cannot drive this model's family."""
    if scheduler is not None and model.family in FLOW_MATCHING_FAMILIES and scheduler not in FLOW_MATCHING_SAMPLERS:
        raise ValueError(
            f"scheduler: {scheduler!r} is a sampler for noise-prediction models; the {model.family} family is a "
            f"flow-matching model sampled by FlowMatchEulerDiscreteScheduler: use "
            f"{' or '.join(map(repr, FLOW_MATCHING_SAMPLERS))}, or leave scheduler unset for the model's own")


def _with_family_defaults(name: str, path: Path, family: str, single_file: bool = False) -> ResolvedModel:
    width, height, steps, guidance = FAMILY_DEFAULTS[family]
    native = None if single_file else _native_size(path)
    if native is not None:
        width = height = native
    return ResolvedModel(name, path, family, width, height, steps, guidance, single_file=single_file)


def _native_size(folder: Path) -> Optional[int]:
    """The image side a U-Net folder was trained at (U-Net sample_size x the VAE's downsampling), as diffusers'
    pipelines compute their default: a 64x64 model asked for the family's 512x512 would draw 64 times the pixels
    of what it knows, slowly and badly."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    sample_size, levels = unet.get("sample_size"), len(vae.get("block_out_channels") or ())
    if not isinstance(sample_size, int) or not levels:
        return None
    return sample_size * 2 ** (levels - 1)


def _family_of_folder(path: Path) -> str:
    index = path / "model_index.json"
    if not index.is_file():
        raise ValueError(f"model folder {str(path)!r} has no model_index.json (not a diffusers pipeline folder)")
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except json.JSONDecodeError:
        raise ValueError(f"model folder {str(path)!r}: model_index.json is not valid JSON") from None
    if class_name not in FAMILY_OF_PIPELINE:
        raise ValueError(f"model folder {str(path)!r} holds a {class_name or 'unknown'} pipeline; "
                         f"supported: {', '.join(FAMILY_OF_PIPELINE)}")
    return FAMILY_OF_PIPELINE[class_name]


def hub_snapshot(repo_id: str, wanted: str, pull_name: Optional[str] = None) -> Path:
    """The local snapshot of a hub repository, without touching the network: models, ControlNets and the
    preprocessors' models all come from here. When it is not cached, a ModelNotAvailable that starts with
    ``wanted`` (what was looked for) and says how to fetch it (``difflab pull`` of ``pull_name``, or the id)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        raise ModelNotAvailable(
            f"{wanted} is not in the local Hugging Face cache; on a machine with network run "
            f"`difflab pull {pull_name or repo_id}` (or `hf download {repo_id}`) and copy its Hugging Face cache "
            f"({_hub_cache()}) here"
        ) from None


# what `pull` fetches: configs, tokenizers and safetensors weights; never pickles (*.bin, *.ckpt, *.pt)
PULL_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model", "tokenizer*/*", "*.md"]


def pull(name: str) -> Path:
    """Download a preset or hub id into the normal Hugging Face cache (needs network and, for gated models such
    as FLUX.1-dev, an accepted licence and HF_TOKEN). Later runs find it there offline."""
    preset = PRESETS.get(name)
    if preset is not None and preset.bundled:
        raise ValueError(f"model {name!r} is bundled with difflab; there is nothing to pull")
    repo_id = preset.source if preset is not None else name
    if preset is None and name.count("/") != 1:
        raise ValueError(f"model must be a preset ({', '.join(PRESETS)}) or a hub id like 'owner/name'; got {name!r}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=PULL_PATTERNS))
    except GatedRepoError:
        raise ModelNotAvailable(f"model {name!r} ({repo_id}) is gated: accept its licence on the hub with your account "
                                "and set HF_TOKEN, then pull again") from None
    except RepositoryNotFoundError:
        raise ValueError(f"model {name!r}: no repository {repo_id!r} on the Hugging Face hub (or it is private: set "
                         "HF_TOKEN)") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        # offline, DNS, proxy, TLS: snapshot_download says "Got: ConnectError ..." in a paragraph; one line here
        raise HubUnreachable(
            f"pull {name!r}: the Hugging Face hub cannot be reached ({_first_line(error)}). To bring the weights "
            f"in offline: on a machine with network run `difflab pull {name}` (or `hf download {repo_id}`), then "
            f"copy its Hugging Face cache ({_hub_cache()}) to the same place here") from None


class HubUnreachable(OSError):
    """No network path to the hub: the machine, not the input (exit 1, one line)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
