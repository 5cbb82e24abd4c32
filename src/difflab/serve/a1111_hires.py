"""A1111's txt2img hires fix (``enable_hr`` and its ``hr_*`` fields) as GenerationRequest's hires fields.

The semantics are those of A1111's ``StableDiffusionProcessingTxt2Img`` (``modules/processing.py``):

- the target size: ``int(width * hr_scale)`` x ``int(height * hr_scale)``, unless ``hr_resize_x`` / ``hr_resize_y``
  are set, which override ``hr_scale`` (``calculate_target_resolution``); one of them alone keeps the aspect ratio.
  Both with another aspect ratio make A1111 upscale to cover and crop the latents, which difflab's hires fix does
  not do: refused, naming ``hr_resize_y``. difflab sizes are multiples of 8 (the VAE's factor), so a resize to
  another size is refused too.
- ``denoising_strength`` is the second pass's strength, 0.75 when omitted (the processing class's default).
- ``hr_second_pass_steps``: A1111's second pass runs exactly ``hr_second_pass_steps or steps`` denoising steps
  (``setup_img2img_steps`` with ``steps`` given: a schedule of ``int(steps / strength)`` steps of which the last
  ``steps`` run). difflab's ``hires_steps`` is diffusers' img2img count, of which ``int(hires_steps * strength)``
  run, so it gets the smallest count that runs as many steps as A1111 does.
- ``hr_upscaler``: difflab's hires fix upscales the decoded image (Lanczos, Nearest, "None" = a plain Lanczos
  resize as in A1111, or an ESRGAN-family file); A1111's "Latent" modes interpolate the latents instead, and are
  A1111's default when the field is omitted: refused, naming ``hr_upscaler``.
- the second pass with another checkpoint, sampler, scheduler or prompt is not implemented: those fields are
  accepted only at "the same as the first pass". ``firstphase_width/height`` (the pre-1.0 API) only at 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from difflab.serve.catalog import FieldError

A1111_DEFAULT_SCALE = 2.0
A1111_DEFAULT_STRENGTH = 0.75  # StableDiffusionProcessingTxt2Img.denoising_strength
HIRES_FIELDS = ("enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
                "denoising_strength", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                "hr_negative_prompt", "hr_additional_modules", "firstphase_width", "firstphase_height")
# what each "same as the first pass" field may be: A1111's UI sends these words, clients None or ""
_SAME_AS_FIRST_PASS = {
    "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "hr_sampler_name": (None, "", "Use same sampler"),
    "hr_scheduler": (None, "", "Use same scheduler"),
    "hr_additional_modules": (None, [], ["Use same choices"]),
}


def pop_hires_fields(extra: dict[str, Any]) -> dict[str, Any]:
    """The hires fields of a body's extra fields, taken out of ``extra``."""
    return {name: extra.pop(name) for name in HIRES_FIELDS if name in extra}


def hires_request_fields(fields: dict[str, Any], *, prompt: str, negative_prompt: str, sampler: Optional[str],
                         width: int, height: int, steps: Callable[[], Optional[int]]) -> dict[str, Any]:
    """GenerationRequest's ``hires_*`` fields for A1111's hires fields (``{}`` when ``enable_hr`` is off, where
    A1111 ignores the others too); FieldError naming the A1111 field otherwise. ``width``/``height``: the first
    pass's size; ``steps()``: its step count (the model's default when the body has none; None if unknown)."""
    enabled = fields.get("enable_hr")
    if enabled in (None, False):
        return {}
    if enabled is not True:
        raise FieldError("enable_hr", f"must be true or false; got {enabled!r}")
    _check_same_as_first_pass(fields, prompt, negative_prompt, sampler)
    for name in ("firstphase_width", "firstphase_height"):
        if fields.get(name) not in (None, 0):
            raise FieldError(name, "the pre-1.0 hires API is not supported: send 0 and set width/height to the "
                                   "first pass's size, hr_scale or hr_resize_x/y to the final one")
    upscaler = _upscaler(fields.get("hr_upscaler"))
    strength = _number(fields, "denoising_strength", A1111_DEFAULT_STRENGTH)
    if not 0 < strength <= 1:
        raise FieldError("denoising_strength", f"must be in (0, 1] for the hires pass; got {strength!r}")
    scale = _target_scale(fields, width, height)
    result: dict[str, Any] = {"hires_scale": scale, "hires_strength": strength, "hires_upscaler": upscaler}
    second_pass = _integer(fields, "hr_second_pass_steps", 0)
    if second_pass < 0:
        raise FieldError("hr_second_pass_steps", f"must be 0 (the same as steps) or more; got {second_pass}")
    wanted = second_pass or steps()
    if wanted is not None:
        result["hires_steps"] = img2img_steps_running(wanted, strength)
    return result


def img2img_steps_running(wanted: int, strength: float) -> int:
    """The smallest diffusers img2img step count that runs ``wanted`` denoising steps at ``strength`` (diffusers
    runs ``int(steps * strength)`` of them, as engine.modes.denoising_steps counts)."""
    from difflab.engine.modes import denoising_steps

    count = max(wanted, math.floor(wanted / strength))
    while denoising_steps(count, strength) < wanted:
        count += 1
    return count


def _target_scale(fields: dict[str, Any], width: int, height: int) -> float:
    """hr_scale, or the scale hr_resize_x/y ask for (A1111's calculate_target_resolution)."""
    from difflab.engine.modes import hires_size

    resize_x, resize_y = _integer(fields, "hr_resize_x", 0), _integer(fields, "hr_resize_y", 0)
    for name, value in (("hr_resize_x", resize_x), ("hr_resize_y", resize_y)):
        if value < 0 or value % 8:
            raise FieldError(name, f"must be 0 (use hr_scale) or a positive multiple of 8; got {value}")
    if resize_x == 0 and resize_y == 0:
        return _number(fields, "hr_scale", A1111_DEFAULT_SCALE)
    if resize_y == 0:
        target, field = (resize_x, resize_x * height // width), "hr_resize_x"
    elif resize_x == 0:
        target, field = (resize_y * width // height, resize_y), "hr_resize_y"
    else:
        if resize_x * height != resize_y * width:
            raise FieldError("hr_resize_y", f"{resize_x}x{resize_y} has another aspect ratio than {width}x{height}: "
                                            "A1111 would crop the upscaled image, which difflab's hires fix does not; "
                                            "send only hr_resize_x or only hr_resize_y (0 for the other)")
        target, field = (resize_x, resize_y), "hr_resize_x"
    scale = target[0] / width if target[0] != width else target[1] / height
    if hires_size(width, height, scale) != target:
        raise FieldError(field, f"{target[0]}x{target[1]} is not {width}x{height} scaled to a size difflab can "
                                "draw (multiples of 8 on both sides)")
    return scale


def _upscaler(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, str) and value.lower().startswith("latent")):
        shown = "omitted (A1111's default is 'Latent')" if value is None else repr(value)
        raise FieldError("hr_upscaler", f"{shown}: difflab's hires fix upscales the image, not the latents; send "
                                        "'Lanczos', 'Nearest', 'None' or a name from /sdapi/v1/upscalers")
    if not isinstance(value, str):
        raise FieldError("hr_upscaler", f"must be an upscaler name; got {type(value).__name__}")
    return value  # GenerationRequest checks the name (and the server that it is a name, not a path)


def _check_same_as_first_pass(fields: dict[str, Any], prompt: str, negative_prompt: str,
                              sampler: Optional[str]) -> None:
    for name, accepted in _SAME_AS_FIRST_PASS.items():
        value = fields.get(name)
        if value in accepted or (name == "hr_sampler_name" and sampler and value == sampler):
            continue
        raise FieldError(name, f"{value!r}: difflab's hires pass uses the first pass's model, sampler and "
                               "schedule; leave it out")
    for name, first in (("hr_prompt", prompt), ("hr_negative_prompt", negative_prompt)):
        if fields.get(name) not in (None, "", first):
            raise FieldError(name, "difflab's hires pass uses the first pass's prompts; send \"\" or leave it out")


def _number(fields: dict[str, Any], name: str, default: float) -> float:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(name, f"must be a number; got {value!r}")
    return float(value)


def _integer(fields: dict[str, Any], name: str, default: int) -> int:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                          and not value.is_integer()):
        raise FieldError(name, f"must be an integer; got {value!r}")
    return int(value)
