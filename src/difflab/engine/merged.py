"""Several compatible requests drawn as one pipeline call: how the server batches its queued jobs.

Two requests are compatible when they differ only in ``prompt``, ``negative_prompt``, ``seed`` and ``n``
(``merge_key``): same model, size, steps, scheduler, guidance, LoRAs, init image, strength, memory knobs. The merged
call passes one prompt (and negative prompt) per image and one CPU generator per image, seeded ``seed + j`` for
image j of each request, exactly the generators the request gets alone; so each request gets the images it would
get alone, up to the kernels' batch-size dependence (on CPU a merged image differs from its request drawn alone
by at most 1/255 per channel, measured in tests/engine/test_merged.py; the engine's "alone vs in a batch" bound).

Only txt2img and img2img merge. ControlNets, the SDXL refiner and the hires fix have passes built per request;
diffusers' inpainting pipeline VAE-encodes the init image once, sampling with the first image's generator, so
in a merged call every request would get the first request's encoding noise (measured: up to 255/255 apart from
the same request alone), where img2img encodes it once per image with that image's generator. Prompts the
pipeline encodes itself are passed as lists; a group in which any prompt needs difflab's own encoding (A1111
weights or over 75 tokens) raises ``NotMergeable`` before any step, and the caller runs those requests one by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from difflab.engine.request import GenerationRequest

FREE_FIELDS = ("prompt", "negative_prompt", "seed", "n")  # what may differ between merged requests


class NotMergeable(ValueError):
    """These requests cannot share one pipeline call; run them one by one."""


@dataclass(frozen=True)
class MergedBatch:
    """Where a request's images sat in the merged call, recorded in each image's JSON metadata."""

    requests: int  # requests in the call
    images: int  # images in the call
    first_image: int  # the position of this request's image 0 in the call

    def to_json(self) -> dict[str, int]:
        return {"requests": self.requests, "images": self.images, "first_image": self.first_image}


def merge_key(request: Union["GenerationRequest", Mapping[str, Any]]) -> Optional[str]:
    """Equal for requests that may be drawn in one call; None for a request that never merges. Takes a request
    or its ``model_dump(mode="json")`` (what the server's queue stores)."""
    fields = dict(request) if isinstance(request, Mapping) else request.model_dump(mode="json")
    if fields.get("controls") or fields.get("refiner") is not None or fields.get("hires_scale") is not None:
        return None  # passes built per request
    if fields.get("mask") is not None:
        return None  # diffusers' inpainting encodes the init image once, with the first image's generator
    return json.dumps({name: value for name, value in fields.items() if name not in FREE_FIELDS}, sort_keys=True)


def check_mergeable(requests: Sequence["GenerationRequest"]) -> None:
    if not requests:
        raise NotMergeable("no requests")
    keys = {merge_key(request) for request in requests}
    if None in keys or len(keys) > 1:
        raise NotMergeable("the requests differ in more than prompt, negative_prompt, seed and n, or use "
                           "ControlNets, a refiner or the hires fix")


def layout(requests: Sequence["GenerationRequest"]) -> list[MergedBatch]:
    """Each request's place in the merged call."""
    total, first, places = sum(request.n for request in requests), 0, []
    for request in requests:
        places.append(MergedBatch(len(requests), total, first))
        first += request.n
    return places


def merged_prompt_arguments(pipe, family: str, requests: Sequence["GenerationRequest"]) -> dict[str, Any]:
    """The prompt keyword arguments of the merged call: one prompt (and negative prompt) per image."""
    from difflab.engine.prompt_weighting import prompt_arguments

    arguments = [prompt_arguments(pipe, family, request) for request in requests]
    if any(set(one) - {"prompt", "negative_prompt"} for one in arguments):
        raise NotMergeable("a prompt with A1111 weights or over the token limit is encoded per request")
    merged: dict[str, Any] = {"prompt": [one["prompt"] for one, request in zip(arguments, requests)
                                         for _ in range(request.n)]}
    if "negative_prompt" in arguments[0]:
        negatives = [one["negative_prompt"] for one, request in zip(arguments, requests) for _ in range(request.n)]
        if all(negative is None for negative in negatives):
            merged["negative_prompt"] = None
        elif any(negative is None for negative in negatives) and getattr(pipe.config, "force_zeros_for_empty_prompt",
                                                                         False):
            # SDXL uses zeros, not the encoding of "", for an empty negative prompt: a list cannot say both
            raise NotMergeable("empty and non-empty negative prompts mix on a model that zeroes empty ones")
        else:
            merged["negative_prompt"] = [negative or "" for negative in negatives]  # None encodes as "" here
    return merged
