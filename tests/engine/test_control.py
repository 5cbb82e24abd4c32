"""ControlNet: preprocessors against geometry, request validation, and generation on tiny random ControlNets of
the SD, SDXL and Flux families (the engine's code path for each; real output is the bench's job)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data.shapes import POSITION_CENTRES, SIZE_RADII, ShapeSpec, render
from difflab.engine.control import canny, parse_control, preprocess, scribble, softedge
from difflab.engine.request import RequestError, build_request

SIDE = 64


def _randomize_zero_convs(module: torch.nn.Module, seed: int = 0) -> None:
    """ControlNets start with zero output convolutions (step 0 = the base model); give them random weights so a
    tiny untrained one visibly changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if ("controlnet_" in name or "zero" in name or "x_embedder" in name) and not parameter.abs().sum():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


@pytest.fixture(scope="module")
def square_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("control") / "square.png"
    render(ShapeSpec("square", "red", "blue", "centre", "large")).save(path)
    return path


@pytest.fixture(scope="module")
def sd_controlnet(tiny_sd_folder: Path, tmp_path_factory) -> Path:
    from diffusers import UNet2DConditionModel

    from difflab.train.controlnet import new_controlnet

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_folder / "unet")
    torch.manual_seed(1)
    controlnet = new_controlnet(unet, vae_scale_factor=4)  # the tiny VAE has 3 levels: 64 px -> 16x16 latents
    _randomize_zero_convs(controlnet)
    folder = tmp_path_factory.mktemp("sd-controlnet") / "controlnet"
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


# ---- preprocessors ----

def _distance_to_square_outline(x: np.ndarray, y: np.ndarray, cx: float, cy: float, half: float) -> np.ndarray:
    """Distance from points to the boundary of the axis-aligned square [cx +- half] x [cy +- half]."""
    dx, dy = np.abs(x - cx) - half, np.abs(y - cy) - half
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    inside = np.minimum(np.maximum(dx, dy), 0)  # negative inside: distance to the nearest side
    return np.abs(outside + inside)


def test_canny_of_a_rendered_square_lies_on_its_outline():
    # the unjittered large centre square: circumradius mean(SIZE_RADII["large"]) * side, flat top, so its half side is
    # r / sqrt(2); pixel centres sit at integer coordinates + 0.5 in the fraction-of-side geometry of render()
    edges = np.asarray(canny(render(ShapeSpec("square", "red", "blue", "centre", "large")))).max(axis=2) > 0
    cx, cy = (c * SIDE for c in POSITION_CENTRES["centre"])
    half = np.mean(SIZE_RADII["large"]) * SIDE / np.sqrt(2)
    rows, columns = np.nonzero(edges)
    distance = _distance_to_square_outline(columns + 0.5, rows + 0.5, cx, cy, half)
    assert distance.max() <= 1.5  # every edge pixel is on the outline (canny marks one side of the step)
    # and the outline is covered: points every half pixel along it are within 1.5 px of an edge pixel
    t = np.arange(-half, half, 0.5)
    outline = np.concatenate([np.stack([cx + t, np.full_like(t, cy - half)], 1), np.stack([cx + t, np.full_like(t, cy + half)], 1),
                              np.stack([np.full_like(t, cx - half), cy + t], 1), np.stack([np.full_like(t, cx + half), cy + t], 1)])
    nearest = np.min(np.hypot(outline[:, None, 0] - (columns + 0.5), outline[:, None, 1] - (rows + 0.5)), axis=1)
    assert nearest.max() <= 1.5


def test_scribble_and_softedge_mark_the_outline_and_leave_flat_images_black():
    shape = render(ShapeSpec("circle", "yellow", "black", "centre", "large"))
    flat = Image.new("RGB", (SIDE, SIDE), (30, 90, 200))
    rim = np.mean(SIZE_RADII["large"]) * SIDE  # the unjittered circle's radius, 16 px

    def marked_radii(control_map: Image.Image) -> np.ndarray:
        values = np.asarray(control_map)[..., 0].astype(float)
        rows, columns = np.nonzero(values >= values.max() * 0.5)
        return np.hypot(columns + 0.5 - SIDE / 2, rows + 0.5 - SIDE / 2)

    for make in (scribble, softedge):
        assert np.asarray(make(flat)).max() == 0
    # soft edges peak on the rim itself
    assert np.median(marked_radii(softedge(shape))) == pytest.approx(rim, abs=1.5)
    # scribble (XDoG) strokes are bold and lie on the dark side of the rim: from the rim outwards here...
    outside = marked_radii(scribble(shape))
    assert outside.min() == pytest.approx(rim, abs=1) and outside.max() < rim + 8
    # ...and from the rim inwards for a dark circle on a light background
    inside = marked_radii(scribble(render(ShapeSpec("circle", "black", "yellow", "centre", "large"))))
    assert inside.max() == pytest.approx(rim, abs=1) and inside.min() > rim - 10


def test_canny_thresholds_are_used():
    shape = render(ShapeSpec("circle", "yellow", "black", "centre", "large"))
    assert np.asarray(preprocess("canny", shape, 100, 200)).any()
    assert not np.asarray(preprocess("canny", shape, 2000, 2048)).any()  # above any gradient: no edges


def test_depth_offline_names_the_model_and_pull(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"depth-anything/Depth-Anything-V2-Small-hf.*difflab pull"):
        preprocess("depth", Image.new("RGB", (8, 8)))


def test_pose_without_controlnet_aux_is_a_clear_error():
    # controlnet-aux is not a dependency; where it is installed, the weights check applies instead
    try:
        import controlnet_aux  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install controlnet-aux"):
            preprocess("pose", Image.new("RGB", (8, 8)))


@pytest.mark.parametrize("text, expected", [
    ("canny:a.png", {"kind": "canny", "image": "a.png"}),
    ("canny:a.png:0.5", {"kind": "canny", "image": "a.png", "scale": 0.5}),
    ("image:C:/maps/a.png", {"kind": "image", "image": "C:/maps/a.png"}),
    ("none:C:/maps/a.png:1.5", {"kind": "none", "image": "C:/maps/a.png", "scale": 1.5}),
])
def test_parse_control(text, expected):
    assert parse_control(text) == expected


# ---- the request edge ----

@pytest.mark.parametrize("fields, message", [
    ({"controls": ["cany:{square}"]}, "controls.0.kind: must be one of canny"),
    ({"controls": ["canny:missing.png"]}, "controls.0.image: file 'missing.png' does not exist"),
    ({"controls": ["canny:{square}:2.5"]}, "controls.0.scale"),
    ({"controls": ["canny"]}, "controls: must be KIND:IMAGE"),
    ({"control_start": 0.3}, "control_start: needs controls"),
    ({"controls": ["canny:{square}"], "control_start": 0.6, "control_end": 0.5}, "control_start: 0.6 must be below"),
    ({"controls": ["canny:{square}"], "control_end": 1.5}, "control_end"),
    ({"controls": [{"kind": "softedge", "image": "{square}", "low": 5}]}, "low: only canny and scribble"),
    ({"controls": [{"kind": "canny", "image": "{square}", "low": 300, "high": 200}]}, "low: the canny low threshold"),
    ({"controls": ["canny:{square}"] * 5}, "controls: Tuple should have at most 4"),
    ({"controls": ["canny:{square}"], "init_image": "{square}"}, "controls: ControlNet runs with text-to-image only"),
    ({"controls": ["canny:{text}"]}, "controls.0.image: .* is not a readable image"),
])
def test_bad_controls_are_refused_naming_the_field(fields, message, square_png, tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")

    def fill(value):
        if isinstance(value, str):
            return value.format(square=square_png, text=text_file)
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return value

    with pytest.raises(RequestError, match=message):
        build_request(prompt="a red square", **{key: fill(value) for key, value in fields.items()})


# ---- SD generation on a tiny random ControlNet ----

def _request(folder: Path, controls, **fields):
    return build_request(prompt="a red square", model=str(folder), steps=4, n=2, seed=3, width=SIDE, height=SIDE,
                         controls=controls, **fields)


def test_scale_zero_is_txt2img_and_scale_one_is_not(tiny_sd_folder, sd_controlnet, square_png):
    from difflab.engine.pipeline import PipelineCache, run

    cache = PipelineCache()
    plain = run(_request(tiny_sd_folder, ()), cache).images
    control = {"kind": "canny", "image": str(square_png), "model": str(sd_controlnet)}
    off = run(_request(tiny_sd_folder, [{**control, "scale": 0.0}]), cache).images
    on = run(_request(tiny_sd_folder, [{**control, "scale": 1.0}]), cache).images
    for a, b, c in zip(plain, off, on):
        a, b, c = (np.asarray(image, dtype=np.int16) for image in (a, b, c))
        # scale 0 adds 0 * residuals to the U-Net's skip connections: the same numbers, so the same pixels, bit for
        # bit (the ControlNet pipeline batches the CFG halves and draws the latents as StableDiffusionPipeline)
        assert np.array_equal(a, b)
        assert np.abs(a - c).max() > 10


def test_multi_controlnet_and_start_end_schedule(tiny_sd_folder, sd_controlnet, square_png):
    from difflab.engine.pipeline import PipelineCache, run

    cache = PipelineCache()
    one = {"kind": "canny", "image": str(square_png), "model": str(sd_controlnet), "scale": 0.8}
    two = {"kind": "softedge", "image": str(square_png), "model": str(sd_controlnet), "scale": 0.5}
    single = run(_request(tiny_sd_folder, [one]), cache)
    module = next(iter(cache._controlnets.values()))
    seen: list[float] = []
    forward = module.forward

    def spy(*args, **kwargs):
        seen.append(float(kwargs["conditioning_scale"]))
        return forward(*args, **kwargs)

    module.forward = spy
    try:
        multi = run(_request(tiny_sd_folder, [one, two], control_start=0.25, control_end=0.75), cache)
    finally:
        del module.forward
    assert len(multi.images) == 2 and multi.images[0].size == (SIDE, SIDE)
    assert not np.array_equal(np.asarray(single.images[0]), np.asarray(multi.images[0]))
    # 4 steps, two ControlNets (the same module twice): step i is controlled when 0.25 <= i/4 and (i+1)/4 <= 0.75
    keep = [0.0, 1.0, 1.0, 0.0]
    assert seen == [k * scale for k in keep for scale in (0.8, 0.5)]


def test_cli_preprocess_and_generate_write_maps_and_controlnet_metadata(tiny_sd_folder, sd_controlnet, square_png,
                                                                         tmp_path):
    from typer.testing import CliRunner

    from difflab.cli import app
    from difflab.engine.metadata import parse_parameters, read_png_metadata

    runner = CliRunner()
    edges = tmp_path / "edges.png"
    result = runner.invoke(app, ["control", "preprocess", "canny", str(square_png), "-o", str(edges), "--low", "50"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(edges)), np.asarray(canny(Image.open(square_png), 50, 200)))
    out = tmp_path / "out"
    result = runner.invoke(app, ["generate", "a red square", "--model", str(tiny_sd_folder), "--steps", "2",
                                 "--width", "64", "--height", "64", "--control", f"none:{edges}:0.7", "--control-model", str(sd_controlnet),
                                 "--control-end", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text, record = read_png_metadata(next(out.glob("*.png")))
    settings = parse_parameters(text)[2]
    assert settings["ControlNet 0"].startswith("Module: none, Model: controlnet [")
    assert "Weight: 0.7" in settings["ControlNet 0"] and "Guidance End: 0.5" in settings["ControlNet 0"]
    assert record["request"]["controls"][0]["scale"] == 0.7
    assert record["controls"][0]["model"]["path"] == str(sd_controlnet)
    # bad input: exit 2, one line naming the field, nothing written
    for bad, field in ((["--control", f"canny:{tmp_path / 'nope.png'}"], "controls.0.image"),
                       (["--control", f"canny:{square_png}", "--width", "128", "--height", "64",
                         "--control-model", str(sd_controlnet)], "controls.0.image: its size 64x64"),
                       (["--control", f"canny:{square_png}", "--control-model", str(tmp_path)], "controls.0.model")):
        empty = tmp_path / "empty"
        size = [] if "--width" in bad else ["--width", "64", "--height", "64"]
        result = runner.invoke(app, ["generate", "x", "--model", str(tiny_sd_folder), "--steps", "1", "-o",
                                     str(empty), *size, *bad])
        assert result.exit_code == 2 and field in result.output, result.output
        assert not empty.exists()


# ---- SDXL and Flux: the families' ControlNet pipelines run over the cached modules ----

def _family_folders(family: str, root: Path) -> tuple[Path, Path]:
    from diffusers import ControlNetModel, FluxControlNetModel

    from tests.engine.family_fixtures import BUILDERS

    pipeline = BUILDERS[family](root)
    pipeline.save_pretrained(root / "pipeline", safe_serialization=True)
    torch.manual_seed(2)
    if family == "flux":
        controlnet = FluxControlNetModel.from_transformer(pipeline.transformer, num_layers=1, num_single_layers=1,
                                                          attention_head_dim=16, num_attention_heads=2)
    else:
        controlnet = ControlNetModel.from_unet(pipeline.unet)
    _randomize_zero_convs(controlnet)
    controlnet.save_pretrained(root / "controlnet", safe_serialization=True)
    return root / "pipeline", root / "controlnet"


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_sdxl_and_flux_controlnet_paths_run(family, tmp_path, square_png):
    from difflab.engine.pipeline import PipelineCache, run

    pipeline, controlnet = _family_folders(family, tmp_path)
    cache = PipelineCache()
    control = {"kind": "canny", "image": str(square_png), "model": str(controlnet)}
    fields = {"prompt": "a red square", "model": str(pipeline), "steps": 2, "width": SIDE, "height": SIDE, "seed": 1}
    off = run(build_request(**fields, controls=[{**control, "scale": 0.0}]), cache).images[0]
    on = run(build_request(**fields, controls=[control, {**control, "kind": "scribble"}]), cache).images[0]
    assert on.size == (SIDE, SIDE)
    assert np.abs(np.asarray(on, dtype=np.int16) - np.asarray(off, dtype=np.int16)).max() > 0


def test_a_controlnet_of_another_family_is_refused(tiny_sd_folder, tmp_path, square_png):
    from difflab.engine.pipeline import PipelineCache, run

    config = tmp_path / "flux-controlnet"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"_class_name": "FluxControlNetModel"}))
    (config / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    request = _request(tiny_sd_folder, [{"kind": "canny", "image": str(square_png), "model": str(config)}])
    with pytest.raises(ValueError, match="controls.0.model: .* is a FluxControlNetModel, which steers flux models"):
        run(request, PipelineCache())


def test_registry_picks_the_bundled_controlnet_for_tiny_shapes_and_names_pull_for_hub_ones(monkeypatch, tmp_path):
    from difflab.engine import control_models
    from difflab.engine.registry import ResolvedModel

    bundled = tmp_path / "models"
    (bundled / "tiny-shapes").mkdir(parents=True)
    folder = bundled / "tiny-shapes-controlnet-canny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    monkeypatch.setattr(control_models, "BUNDLED_DIR", bundled)
    tiny = ResolvedModel("tiny-shapes", bundled / "tiny-shapes", "sd", 64, 64, 20, 7.5)
    assert control_models.resolve_controlnet(None, "canny", tiny, "controls.0.model").path == folder
    # model=canny with kind none: a ready-made edge map through the registry's canny ControlNet
    assert control_models.resolve_controlnet("canny", "none", tiny, "controls.0.model").path == folder
    with pytest.raises(ValueError, match="controls.0.model: give its model"):
        control_models.resolve_controlnet(None, "none", tiny, "controls.0.model")
    # another SD model: the hub ControlNet, which offline must be pulled first
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    other = ResolvedModel("my-sd", tmp_path, "sd", 512, 512, 30, 7.5)
    with pytest.raises(ValueError, match=r"lllyasviel/control_v11p_sd15_canny.*difflab pull"):
        control_models.resolve_controlnet(None, "canny", other, "controls.0.model")
    sd3 = ResolvedModel("sd3", tmp_path, "sd3", 1024, 1024, 28, 5.0)
    with pytest.raises(ValueError, match="controls: ControlNet is supported for the sd, sdxl, flux families"):
        control_models.resolve_controlnet(None, "canny", sd3, "controls.0.model")
