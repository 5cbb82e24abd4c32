"""What a converted component was made from: the identity that names its cache entry (openvino_cache.py).

Two conversions with equal identities are interchangeable, so everything that changes the converted weights or
graph is in it: the hashes of the component's weight and config files (difflab.io.hashing, remembered per path,
modification time and size), the LoRAs fused into it with their weights, textual inversion embeddings added to a
text encoder, a swapped VAE, the input size, the precision, and the versions of the libraries that trace and
convert. The precision does not change the IR today (it is chosen when compiling, INFERENCE_PRECISION_HINT); it
is in the identity so an entry is never shared across precisions if a conversion path for bf16 (a bf16 module:
half the peak memory, what an SDXL U-Net needs on 24 GB) ever makes them differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

# the pipeline attribute each converted component comes from
SOURCE_ATTRIBUTE = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2",
                    "vae_decoder": "vae", "vae_encoder": "vae"}


def _folder_hashes(folder: Path) -> dict[str, str]:
    from difflab.io.hashing import cached_file_sha256

    files = sorted([*folder.glob("*.safetensors"), *folder.glob("config.json")])
    return {file.name: cached_file_sha256(file) for file in files}


def weights_identity(model, attribute: str, vae=None) -> dict[str, Any]:
    """Hashes of the files ``attribute`` (unet, text_encoder, text_encoder_2, vae) of ``model`` (a
    registry.ResolvedModel) was loaded from; a swapped VAE (engine.vae.ResolvedVae) adds its own file."""
    from difflab.io.hashing import cached_file_sha256

    if model.single_file:
        identity: dict[str, Any] = {"checkpoint": cached_file_sha256(model.path)}
    else:
        identity = {"files": _folder_hashes(Path(model.path) / attribute)}
        if not identity["files"]:
            raise ValueError(f"model: {str(model.path)!r} has no weights in {attribute}/ to convert for OpenVINO")
    if attribute == "vae" and vae is not None:
        identity["vae"] = cached_file_sha256(vae.weights)
    return identity


def component_identity(model, component: str, precision: str, *, loras: Sequence = (), vae=None,
                       embeddings: Sequence = ()) -> dict[str, Any]:
    """The identity of ``component`` of ``model`` as a request uses it, without the input size (the wrapper adds
    it on the first call at each size)."""
    import diffusers
    import openvino
    import torch
    import transformers

    attribute = SOURCE_ATTRIBUTE[component]
    identity: dict[str, Any] = {
        "component": component, "family": model.family, "precision": precision,
        "weights": weights_identity(model, attribute, vae),
        "versions": {"openvino": openvino.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__},
    }
    if attribute in ("unet", "text_encoder", "text_encoder_2") and loras:
        from difflab.engine.lora import lora_hash

        identity["loras"] = [{"hash": lora_hash(lora.file), "weight": lora.weight} for lora in loras]
    if attribute.startswith("text_encoder") and embeddings:
        identity["embeddings"] = [{"sha256": embedding.sha256, "token": embedding.token} for embedding in embeddings]
    return identity


def with_size(identity: dict[str, Any], size: Optional[tuple[int, ...]]) -> dict[str, Any]:
    return identity if size is None else {**identity, "size": "x".join(str(side) for side in size)}
