"""`difflab viz lora-weights` and `difflab viz control-scale` on tiny random models: the rows are X/Y/Z plots
(difflab.engine.xyz) whose cells are what the engine draws for each weight or scale on its own (within the
engine's 1/255 "alone vs in a batch" bound where prompts share a call), weight 0 / scale 0 is the plain model,
the grids label rows and columns, and bad input is refused before anything is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from difflab.cli import app
from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the fixture, re-exported for this folder)
from tests.engine.test_control import sd_controlnet, square_png  # noqa: F401  (fixtures only)

runner = CliRunner()
SIZE = {"steps": 2}


@pytest.fixture(scope="module")
def tiny_lora(tiny_sd_folder, tmp_path_factory) -> Path:  # noqa: F811
    from difflab.data.captioned_folder import write_shape_set
    from difflab.train.lora import train_lora
    from difflab.train.lora_config import LoraTrainConfig

    root = tmp_path_factory.mktemp("sweep-lora")
    write_shape_set(root / "data", "hexagon", n=4, seed=0)
    config = LoraTrainConfig(base=str(tiny_sd_folder), data=str(root / "data"), trigger="hexagon", rank=2,
                             steps=3, batch_size=2, learning_rate=5e-2, warmup_steps=1, checkpoint_every=3)
    list(train_lora(config, root / "lora", device="cpu"))
    return root / "lora"


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB"), dtype=np.int16) for image in images]


def _same(row, reference, bound: int = 1) -> bool:
    """Equal up to ``bound``/255 per channel (engine.merged: a merged image against the same request alone)."""
    return all(np.abs(a - b).max() <= bound for a, b in zip(_pixels(row), _pixels(reference)))


def test_lora_weight_rows_are_the_engine_at_each_weight(tiny_sd_folder, tiny_lora):  # noqa: F811
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request
    from difflab.viz.lora_weights import lora_weight_sweep

    cache = PipelineCache()
    prompts = ["a red hexagon on white", "a blue hexagon"]
    sweep = lora_weight_sweep(str(tiny_sd_folder), str(tiny_lora), prompts, (0.0, 1.0), seeds=2, cache=cache, **SIZE)
    assert len(sweep.images) == 2 and all(len(row) == 4 for row in sweep.images)

    def direct(loras):
        return [image for p in prompts
                for image in run(build_request(prompt=p, model=str(tiny_sd_folder), n=2, seed=0, loras=loras,
                                               **SIZE), cache).images]

    plain, full = direct([]), direct([f"{tiny_lora}:1"])
    assert _same(sweep.images[0], plain) and _same(sweep.images[1], full)  # weight 0 = no LoRA
    assert max(np.abs(a - b).max() for a, b in zip(_pixels(plain), _pixels(full))) > 1  # the LoRA does something
    # shapes-world prompts are read back: one table row per weight
    assert all(report is not None and report.n_images == 4 for report in sweep.reports)
    assert sweep.table().splitlines()[2].startswith("| 0 | ") and len(sweep.table().splitlines()) == 4
    # the grid is the xyz plot of these cells: rows "LoRA weight", columns "Seed", a block per prompt
    from difflab.engine.xyz import plot_grid

    plot = sweep.plot.plot
    assert [axis.kind.name for axis in plot.axes] == ["seed", "lora-weight", "prompt-sr"]
    assert [axis.label(v) for axis in plot.axes[1:2] for v in axis.values] == ["LoRA weight: 0", "LoRA weight: 1"]
    assert np.array_equal(np.asarray(sweep.grid()), np.asarray(plot_grid(plot, sweep.plot.images)))
    # other prompts are drawn but not scored
    other = lora_weight_sweep(str(tiny_sd_folder), str(tiny_lora), ["a photo of a cat"], (1.0,), seeds=1,
                              cache=cache, **SIZE)
    assert other.reports == (None,) and "| 1 | - | - |" in other.table()
    with pytest.raises(ValueError, match="without ':WEIGHT'"):
        lora_weight_sweep(str(tiny_sd_folder), f"{tiny_lora}:0.5", prompts, cache=cache, **SIZE)
    with pytest.raises(ValueError, match="loras: the sweep draws the one"):
        lora_weight_sweep(str(tiny_sd_folder), str(tiny_lora), prompts, cache=cache, loras=["other"], **SIZE)


def test_control_scale_rows_measure_edges_and_scale_zero_is_the_plain_model(tiny_sd_folder, sd_controlnet,  # noqa: F811
                                                                            square_png):
    from PIL import Image

    from difflab.engine.control import canny
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request
    from difflab.viz.control_scale import control_scale_sweep

    cache = PipelineCache()
    sweep = control_scale_sweep(str(tiny_sd_folder), str(square_png), "a red square", (0.0, 1.0), seeds=2,
                                controlnet=str(sd_controlnet), cache=cache, **SIZE)
    plain = run(build_request(prompt="a red square", model=str(tiny_sd_folder), n=2, seed=0, **SIZE), cache).images
    assert _same(sweep.images[0], plain, bound=0)  # ControlNet cells are never merged: the same calls, bit for bit
    assert max(np.abs(a - b).max() for a, b in zip(_pixels(sweep.images[0]), _pixels(sweep.images[1]))) > 10
    with Image.open(square_png) as picture:  # the picture is at the output size: the map is its canny edges
        assert np.array_equal(np.asarray(sweep.control_map), np.asarray(canny(picture.convert("RGB"))))
    assert all(f1 is not None and 0 <= f1 <= 1 for f1 in sweep.f1)
    assert len(sweep.table().splitlines()) == 4
    plot = sweep.plot.plot
    assert [axis.kind.name for axis in plot.axes] == ["seed", "control-scale"]
    assert [plot.axes[1].label(v) for v in plot.axes[1].values] == ["ControlNet weight: 0", "ControlNet weight: 1"]
    grid = sweep.grid()  # the control map panel, then the xyz grid of 2 rows of 128-px tiles under the labels
    assert grid.height == 14 + 2 * (128 + 2) + 2


def test_cli_writes_the_grid_and_table(tiny_sd_folder, tiny_lora, sd_controlnet, square_png, tmp_path):  # noqa: F811
    result = runner.invoke(app, ["viz", "lora-weights", str(tiny_lora), "-p", "a red hexagon", "--weights", "0,1",
                                 "--seeds", "1", "--model", str(tiny_sd_folder), "--steps", "2",
                                 "-o", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(tmp_path / "w" / "grid.png")
    assert "| LoRA weight |" in (tmp_path / "w" / "table.md").read_text()
    result = runner.invoke(app, ["viz", "control-scale", str(square_png), "-p", "a red square", "--scales", "0,1",
                                 "--seeds", "1", "--controlnet", str(sd_controlnet), "--model", str(tiny_sd_folder),
                                 "--steps", "2", "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "grid.png").is_file() and "edge F1" in (tmp_path / "c" / "table.md").read_text()


@pytest.mark.parametrize("arguments, message", [
    (["lora-weights", "{lora}", "-p", "x", "--weights", "1,x"], "weights must be comma-separated numbers"),
    (["lora-weights", "{lora}", "-p", "x", "--weights", "11"], "weights must be comma-separated numbers in [-10, 10]"),
    (["lora-weights", "{lora}:0.5", "-p", "x"], "without ':WEIGHT'"),
    (["lora-weights", "no-such-lora", "-p", "x"], "not found in the LoRA folder"),
    (["control-scale", "missing.png", "-p", "x"], "picture 'missing.png' is not a file"),
    (["control-scale", "{picture}", "-p", "x", "--scales", "3"], "scales must be comma-separated numbers in [0, 2]"),
    (["guidance", "--guidances", "1,x"], "guidances must be comma-separated numbers"),  # = eval guidance-sweep
])
def test_cli_bad_input_is_refused_before_drawing(arguments, message, tiny_lora, square_png, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    arguments = [a.format(lora=tiny_lora, picture=square_png) for a in arguments]
    result = runner.invoke(app, ["viz", *arguments, "-o", str(out)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()
