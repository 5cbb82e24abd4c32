"""Every AUTOMATIC1111 field difflab receives is honoured, accepted because it cannot change the picture here, or
refused with 422 naming it: nothing is silently ignored (issue 19).

Field names and defaults follow A1111's ``StableDiffusionTxt2ImgProcessingAPI`` / ``...Img2ImgProcessingAPI``
(``modules/api/models.py`` and ``modules/processing.py``) and what webuiapi 0.9.17, the common Python client,
sends by default. The honoured fields are declared on the request models in ``a1111.py``; this module decides
about the rest (a body's ``model_extra``) and about ``override_settings``. The README lists the accepted ones.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from difflab.serve.catalog import FieldError

# Fields that steer A1111's own storage, UI or task bookkeeping: they never change the pixels, so any value is fine.
UI_ONLY = {
    "do_not_save_samples": "difflab always keeps the images in its data folder",
    "do_not_save_grid": "difflab makes no grids",
    "override_settings_restore_afterwards": "override_settings apply to their own request only anyway",
    "force_task_id": "A1111's progress bookkeeping; follow a difflab job through /v1/jobs instead",
    "comments": "free text A1111 writes into its own logs",
    "disable_extra_networks": "difflab never reads <lora:...> tags from the prompt (use loras on /v1)",
}
# Fields that act only together with a field difflab refuses unless it is off (subseed_strength, script_name,
# refiner_checkpoint): inert here, as they are in A1111 while that field is off. The hires fix's fields are
# a1111_hires's (honoured with enable_hr, inert without it).
INERT = {"subseed": "subseed_strength", "script_args": "script_name", "refiner_switch_at": "refiner_checkpoint"}
# Fields that change the picture in ways difflab does not implement: accepted only at the value that changes nothing.
AT_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "restore_faces": ((None, False), "send false or leave it out"),
    "tiling": ((None, False), "send false or leave it out"),
    "subseed_strength": ((None, 0), "difflab has no variation seeds; send 0 or leave it out"),
    "seed_resize_from_w": ((None, -1, 0), "send -1 or leave it out"),
    "seed_resize_from_h": ((None, -1, 0), "send -1 or leave it out"),
    "refiner_checkpoint": ((None, "", "None"), "use refiner on /v1/generate; leave it out"),
    "script_name": ((None, "", "None"), "difflab runs no A1111 scripts; leave it out"),
    "alwayson_scripts": ((None, {}), "difflab runs no A1111 extensions; send {} or leave it out"),
    "styles": ((None, []), "difflab has no saved styles; put the text into the prompt"),
    "s_min_uncond": ((None, 0), "send 0 or leave it out"),
    "s_churn": ((None, 0), "send 0 or leave it out"),
    "s_tmin": ((None, 0), "send 0 or leave it out"),
    "s_tmax": ((None, 0), "send 0 (A1111's 'infinite') or leave it out"),
    "s_noise": ((None, 1), "send 1 or leave it out"),
    "firstpass_image": ((None, ""), "leave it out"),
    "infotext": ((None, ""), "difflab does not parse infotexts into settings; send the fields themselves"),
}
# img2img only (its mask fields are checked in a1111_img2img, as they matter only with a mask)
IMG2IMG_INERT = {
    "image_cfg_scale": "acts only on instruct-pix2pix models, which difflab does not run",
    "inpaint_full_res_padding": "acts only with inpaint_full_res, which difflab refuses",
    "mask_blur": "mask", "mask_blur_x": "mask", "mask_blur_y": "mask", "inpainting_fill": "mask",
    "inpaint_full_res": "mask",  # without a mask A1111 ignores these; with one a1111_img2img checks them
    "resize_mode": "checked in a1111_img2img", "initial_noise_multiplier": "checked in a1111_img2img",
}
IMG2IMG_AT_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "mask_round": ((None, True), "difflab binarizes masks at 50% (A1111's true); send true or leave it out"),
    "latent_mask": ((None, ""), "leave it out"),
}
# override_settings (and POST /options): these three are honoured (check_setting); these are accepted at the value
# that changes nothing
HONOURED_SETTINGS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
DEFAULT_SETTINGS = {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1}  # A1111's defaults
OWN_VAE = ("Automatic", "None")  # A1111: a VAE named like the checkpoint, else its own / its own: here its own
OVERRIDE_SETTINGS_AT_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "eta_noise_seed_delta": ((0,), "send 0 or leave it out"),
}


def check_fields(extra: dict[str, Any], *, img2img: bool = False) -> None:
    """FieldError for the first field of ``extra`` (the body's fields the request model does not declare) that
    difflab neither honours nor may ignore."""
    at_default = {**AT_DEFAULT, **(IMG2IMG_AT_DEFAULT if img2img else {})}
    inert = {**INERT, **(IMG2IMG_INERT if img2img else {})}
    for name, value in extra.items():
        if name in at_default:
            accepted, advice = at_default[name]
            if not _among(value, accepted):
                raise FieldError(name, f"{_short(value)} is not supported by difflab: {advice}")
        elif name not in UI_ONLY and name not in inert:
            raise FieldError(name, "is not an A1111 field difflab supports (see the README's list of accepted "
                                   "fields)")


def check_override_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The honoured settings ``override_settings`` gives, checked (see check_setting); FieldError for settings
    difflab cannot honour."""
    honoured = {}
    for name, value in settings.items():
        field = f"override_settings.{name}"
        if name in HONOURED_SETTINGS:
            if value is not None:  # null: "not overridden", as an omitted key
                honoured[name] = check_setting(field, name, value)
        elif name in OVERRIDE_SETTINGS_AT_DEFAULT:
            accepted, advice = OVERRIDE_SETTINGS_AT_DEFAULT[name]
            if not _among(value, accepted):
                raise FieldError(field, f"{_short(value)} is not supported by difflab: {advice}")
        else:
            raise FieldError(field, "is not a setting difflab supports (it honours "
                                    f"{', '.join(HONOURED_SETTINGS)})")
    return honoured


def check_setting(field: str, name: str, value: Any) -> Any:
    """One honoured A1111 setting, checked and in difflab's terms; FieldError naming ``field``:

    - ``sd_model_checkpoint``: a model title (``name`` or ``name [hash]``); the catalog checks the name.
    - ``sd_vae``: "Automatic" or "None" (the model's own VAE) or a VAE of the server's VAE folder by name, as
      /sdapi/v1/sd-vae lists them (A1111's file name, with ``.safetensors``, is accepted too).
    - ``CLIP_stop_at_last_layers``: A1111's clip skip, an integer 1..12 (1 = the last layer, difflab's default).
    """
    if name == "sd_model_checkpoint":
        if not isinstance(value, str):
            raise FieldError(field, f"must be a model name (a string); got {type(value).__name__}")
        return value
    if name == "sd_vae":
        from difflab.engine.vae import vae_names

        if not isinstance(value, str):
            raise FieldError(field, f"must be a VAE name (a string); got {type(value).__name__}")
        if value in OWN_VAE:
            return value
        names = vae_names()
        bare = value.removesuffix(".safetensors").removesuffix(".vae")
        if bare not in names or any(c in value for c in "/\\") or value.startswith((".", "~")):
            choices = ", ".join([*OWN_VAE, *names])
            raise FieldError(field, f"must be one of {choices} (the server's VAE folder, /sdapi/v1/sd-vae); "
                                    f"got {_short(value)}")
        return bare
    if name == "CLIP_stop_at_last_layers":
        from difflab.engine.request import MAX_CLIP_SKIP

        if not (_number(value) and math.isfinite(value) and float(value).is_integer() and 1 <= value <= MAX_CLIP_SKIP):
            raise FieldError(field, f"must be an integer from 1 (the last layer) to {MAX_CLIP_SKIP}; "
                                    f"got {_short(value)}")
        return int(value)
    raise FieldError(field, "is not a setting difflab supports")


def check_eta(eta: Any, sampler: Optional[str]) -> None:
    """``eta`` scales the fresh noise of the samplers that add some: A1111's default is 1 for ancestral and SDE
    samplers and 0 for DDIM, which is what difflab's diffusers schedulers do; other samplers ignore it, in A1111
    too. FieldError for any other combination."""
    if eta is None:
        return
    if sampler is None:
        raise FieldError("eta", "needs sampler_name (what eta means depends on the sampler)")
    from difflab.engine.schedulers import resolve_sampler

    try:
        name = resolve_sampler(sampler).name
    except ValueError:
        return  # the sampler field reports its own error
    default = 0 if name == "DDIM" else 1 if (" a" in name or "SDE" in name) else None
    if default is not None and not _among(eta, (default,)):
        raise FieldError("eta", f"{_short(eta)} is not supported with {name!r}: difflab samples it with eta "
                                f"{default} (A1111's default); send {default} or leave it out")


def _among(value: Any, accepted: tuple[Any, ...]) -> bool:
    # bool is an int in Python: True must not pass for 1, nor 1 for True
    return any(type(value) is type(item) or (_number(value) and _number(item)) for item in accepted
               if value == item)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
