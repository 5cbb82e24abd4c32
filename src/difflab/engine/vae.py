"""VAE swap (A1111's ``sd_vae`` setting, "VAE: name" and "VAE hash" in its infotext): another AutoencoderKL decodes
(and, for img2img, inpainting and the hires pass, encodes) instead of the model's own.

A VAE is a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) or one
``.safetensors`` file in the original (LDM / A1111) layout, the format VAEs are shared in; a name is looked up in
``$DIFFLAB_VAE_DIR`` (default ``./vae``) as ``NAME``, ``NAME.safetensors`` or ``NAME.vae.safetensors`` (A1111's
convention), and can never reach outside that folder. A single file has no config: it is read with the model's own
VAE config, so it must have the model's shapes. A VAE whose latent channels or scaling factor differ from the
model's would hand the U-Net latents of another scale: it is refused, naming ``vae``. Pickled VAEs (``.pt``,
``.ckpt``) are refused.

The swap lasts one request (``applied_vae``): the cached pipeline gets its own VAE back afterwards, even when drawing
fails, so a VAE never leaks into the next request.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

VAE_DIR_ENV = "DIFFLAB_VAE_DIR"
DEFAULT_VAE_DIR = Path("vae")
_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class ResolvedVae:
    name: str  # what A1111 writes as "VAE: name": the file or folder name without .safetensors
    path: Path  # the folder or the file
    weights: Path  # the safetensors file (hashed for "VAE hash")

    @property
    def is_single_file(self) -> bool:
        return self.path.is_file()


def vae_dir() -> Path:
    return Path(os.environ.get(VAE_DIR_ENV) or DEFAULT_VAE_DIR)


def resolve_vae(source: str, folder: Optional[Path] = None, *, allow_paths: bool = True) -> ResolvedVae:
    """A VAE folder or file by path (``allow_paths``: the command line, not a network API) or by name in the VAE
    folder; ValueError naming ``vae`` otherwise."""
    from difflab.core.checkpoint import PICKLE_SUFFIXES
    from difflab.io.paths import available_hint, looks_like_path, within

    folder = vae_dir() if folder is None else Path(folder)
    path = Path(source).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"vae {source!r}: {path.suffix} files are pickles (they can run code); use .safetensors")
    if looks_like_path(source):
        if not allow_paths:
            raise ValueError(f"vae {source!r}: give a name from the VAE folder, not a path")
        if not path.exists():
            raise ValueError(f"vae {source!r}: no such file or folder")
        return _resolved(path, source)
    for candidate in (folder / source, folder / f"{source}.safetensors", folder / f"{source}.vae.safetensors"):
        if candidate.exists():
            if not within(candidate, folder):
                raise ValueError(f"vae {source!r}: resolves outside the VAE folder {str(folder)!r}")
            return _resolved(candidate, source)
    raise ValueError(f"vae {source!r}: not found in the VAE folder {str(folder)!r}"
                     f"{available_hint(vae_names(folder), folder)}")


def vae_names(folder: Optional[Path] = None) -> list[str]:
    """The VAEs in a VAE folder, by the names requests give."""
    folder = vae_dir() if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    names = [p.name.removesuffix(".safetensors").removesuffix(".vae") for p in folder.iterdir()
             if (p.is_file() and p.suffix == ".safetensors") or (p.is_dir() and (p / "config.json").is_file())]
    return sorted(names)


def _resolved(path: Path, source: str) -> ResolvedVae:
    name = path.name.removesuffix(".safetensors").removesuffix(".vae")
    if path.is_dir():
        weights = path / _WEIGHTS
        if not (path / "config.json").is_file() or not weights.is_file():
            raise ValueError(f"vae {source!r}: a VAE folder holds config.json and {_WEIGHTS}")
        return ResolvedVae(name, path, weights)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"vae {source!r}: must be a .safetensors file or a diffusers AutoencoderKL folder")
    return ResolvedVae(name, path, path)


def load_vae(vae: ResolvedVae, model_vae_config: dict, device, dtype):
    """The AutoencoderKL (a single file is read with ``model_vae_config``); PipelineCache.get_vae checks that it
    fits the model, for a fresh load and a cached one alike."""
    import diffusers

    if vae.is_single_file:
        config_dir = _config_folder(model_vae_config)
        try:
            module = diffusers.AutoencoderKL.from_single_file(str(vae.path), config=str(config_dir), torch_dtype=dtype,
                                                              local_files_only=True)
        except Exception as error:  # a file of another shape or format: diffusers raises many kinds
            raise ValueError(f"vae {vae.name!r}: cannot be read as this model's VAE ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:200]})") from None
    else:
        module = diffusers.AutoencoderKL.from_pretrained(str(vae.path), torch_dtype=dtype, use_safetensors=True,
                                                         local_files_only=True)
    return module.to(device)


def check_fits(name: str, config: dict, model_config: dict) -> None:
    for key, label in (("latent_channels", "latent channels"), ("scaling_factor", "scaling factor"),
                       ("shift_factor", "shift factor")):
        ours, theirs = config.get(key), model_config.get(key)
        if ours != theirs and not (ours is None and theirs is None):
            raise ValueError(f"vae {name!r}: its {label} ({ours}) do not fit the model's VAE ({theirs}); "
                             "it was made for another model family")


def _config_folder(model_vae_config: dict) -> Path:
    """The model's VAE config as a folder, for ``from_single_file`` (which reads a config folder, never the hub)."""
    import hashlib
    import tempfile

    text = json.dumps({k: v for k, v in model_vae_config.items() if not k.startswith("_") or k == "_class_name"},
                      sort_keys=True, default=str)
    folder = Path(tempfile.gettempdir()) / "difflab-vae-configs" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".config.json.{os.getpid()}.tmp"
        staging.write_text(text)
        staging.replace(folder / "config.json")
    return folder


@contextmanager
def applied_vae(pipeline, module) -> Iterator[None]:
    """``pipeline`` decodes and encodes with ``module`` inside the block (None: no change); its own VAE after."""
    if module is None:
        yield
        return
    original = pipeline.vae
    pipeline.vae = module
    try:
        yield
    finally:
        pipeline.vae = original
