"""Every AUTOMATIC1111 field difflab receives is honoured, accepted because it cannot change the picture here, or
refused with 422 naming it: nothing is silently ignored (issue 19).

Field names and defaults follow A1111's ``StableDiffusionTxt2ImgProcessingAPI`` / ``...Img2ImgProcessingAPI``
(``modules/api/models.py`` and ``modules/processing.py``) and what webuiapi 0.9.17, the common Python client,
sends by default. The honoured fields are declared on the request models in ``a1111.py``; this module decides
about the rest (a body's ``model_extra``) and about ``override_settings``. The README lists the accepted ones.
"""

from __future__ import annotations

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
# Fields that act only together with a field difflab refuses unless it is off (enable_hr, subseed_strength,
# script_name, refiner_checkpoint): inert here, as they are in A1111 while that field is off.
INERT = {name: "enable_hr" for name in (
    "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
    "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_additional_modules",
    "firstphase_width", "firstphase_height", "denoising_strength")}
INERT.update({"subseed": "subseed_strength", "script_args": "script_name", "refiner_switch_at": "refiner_checkpoint"})
# Fields that change the picture in ways difflab does not implement: accepted only at the value that changes nothing.
AT_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "restore_faces": ((None, False), "send false or leave it out"),
    "tiling": ((None, False), "send false or leave it out"),
    "subseed_strength": ((None, 0), "difflab has no variation seeds; send 0 or leave it out"),
    "seed_resize_from_w": ((None, -1, 0), "send -1 or leave it out"),
    "seed_resize_from_h": ((None, -1, 0), "send -1 or leave it out"),
    "enable_hr": ((None, False), "A1111's hires fix is not mapped (use hires_scale on /v1/generate); send false"),
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
# override_settings: sd_model_checkpoint is honoured; these are accepted at the value that changes nothing
OVERRIDE_SETTINGS_AT_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "CLIP_stop_at_last_layers": ((1,), "difflab uses the text encoder's last layer (A1111's 1); send 1 or "
                                       "leave it out"),
    "eta_noise_seed_delta": ((0,), "send 0 or leave it out"),
    "sd_vae": (("Automatic", "None", None), "difflab uses the model's own VAE; send 'Automatic' or leave it out"),
}


def check_fields(extra: dict[str, Any], *, img2img: bool = False) -> None:
    """FieldError for the first field of ``extra`` (the body's fields the request model does not declare) that
    difflab neither honours nor may ignore."""
    at_default = {**AT_DEFAULT, **(IMG2IMG_AT_DEFAULT if img2img else {})}
    inert = {**INERT, **(IMG2IMG_INERT if img2img else {})}
    if img2img:
        inert.pop("denoising_strength")  # declared on img2img's model: honoured there
    for name, value in extra.items():
        if name in at_default:
            accepted, advice = at_default[name]
            if not _among(value, accepted):
                raise FieldError(name, f"{_short(value)} is not supported by difflab: {advice}")
        elif name not in UI_ONLY and name not in inert:
            raise FieldError(name, "is not an A1111 field difflab supports (see the README's list of accepted "
                                   "fields)")


def check_override_settings(settings: dict[str, Any]) -> Optional[str]:
    """The checkpoint ``override_settings`` names (None when it names none); FieldError for settings difflab
    cannot honour."""
    for name, value in settings.items():
        field = f"override_settings.{name}"
        if name == "sd_model_checkpoint":
            if value is not None and not isinstance(value, str):
                raise FieldError(field, f"must be a model name (a string); got {type(value).__name__}")
        elif name in OVERRIDE_SETTINGS_AT_DEFAULT:
            accepted, advice = OVERRIDE_SETTINGS_AT_DEFAULT[name]
            if not _among(value, accepted):
                raise FieldError(field, f"{_short(value)} is not supported by difflab: {advice}")
        else:
            raise FieldError(field, "is not a setting difflab supports (it honours sd_model_checkpoint)")
    return settings.get("sd_model_checkpoint") or None


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
