"""``difflab xyz``: A1111's X/Y/Z plot. Cells are the images the same requests give alone, laid out x across, y
down, z side by side; axes parse A1111's ranges; a re-run draws only missing cells; bad axes are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difflab.cli import app
from difflab.engine.xyz import Axis, KINDS, cell_fields, cell_path, draw_plot, parse_axis, plan_plot, plot_grid

runner = CliRunner()


def test_axes_take_lists_and_a1111_ranges() -> None:
    assert parse_axis("steps:10,20,30", "--x").values == (10, 20, 30)
    assert parse_axis("steps:1-5", "--x").values == (1, 2, 3, 4, 5)
    assert parse_axis("seed:1-9 (+2)", "--x").values == (1, 3, 5, 7, 9)
    assert parse_axis("guidance:0.5-1.5 [3]", "--x").values == (0.5, 1.0, 1.5)
    assert parse_axis("guidance:7,-1e-3", "--x").values == (7.0, -0.001)
    assert parse_axis("sampler:Euler a, DDIM", "--y").values == ("Euler a", "DDIM")
    assert parse_axis("prompt-sr:red,green,", "--y").values == ("red", "green", "")
    for text, message in (("colour:1,2", "--x: axis must be FIELD:V1,V2"), ("steps:ten", "--x: steps takes whole"),
                          ("steps:7.5", "--x: steps takes whole"), ("steps:", "--x: steps needs at least one"),
                          ("seed:1,1", "lists a value twice"), ("seed:5-1 (+1)", "--x: seed takes")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_axis(text, "--x")


def test_cells_set_their_fields() -> None:
    base = {"prompt": "a red circle", "negative_prompt": "red blur", "loras": ["style:0.8"],
            "controls": ["canny:map.png:1"]}
    prompt_sr = parse_axis("prompt-sr:red,green", "--x")
    fields = cell_fields(base, [prompt_sr, parse_axis("lora-weight:0,0.5", "--y")], (1, 1))
    assert fields["prompt"] == "a green circle" and fields["negative_prompt"] == "green blur"
    assert fields["loras"] == ["style:0.5"] and fields["n"] == 1
    assert cell_fields(base, [prompt_sr, parse_axis("lora-weight:0,0.5", "--y")], (0, 0))["loras"] == []
    scaled = cell_fields(base, [parse_axis("control-scale:0.3", "--x"), parse_axis("seed:4", "--y")], (0, 0))
    assert [c["scale"] for c in scaled["controls"]] == [0.3] and scaled["seed"] == 4
    with pytest.raises(ValueError, match="lora-weight: .* exactly one"):
        cell_fields({**base, "loras": []}, [parse_axis("lora-weight:1", "--x")], (0,))


def test_grid_puts_x_across_y_down_and_z_side_by_side() -> None:
    axes = (Axis(KINDS["steps"], (1, 2, 3)), Axis(KINDS["seed"], (0, 1)), Axis(KINDS["guidance"], (1.0, 2.0)))
    colours = {}
    for i in range(3):
        for j in range(2):
            for k in range(2):
                colours[(i, j, k)] = (40 * i + 20, 100 * j + 30, 120 * k + 10)
    plot = type("P", (), {"axes": axes})()
    grid = np.asarray(plot_grid(plot, {p: Image.new("RGB", (16, 16), c) for p, c in colours.items()}))
    centres = {}
    for position, colour in colours.items():
        ys, xs = np.nonzero((grid == colour).all(axis=-1))
        assert len(xs) == 128 * 128, position  # each tile once, scaled to 128 px
        centres[position] = (xs.mean(), ys.mean())
    for (i, j, k), (cx, cy) in centres.items():
        if i:
            assert cx > centres[(i - 1, j, k)][0] and cy == centres[(i - 1, j, k)][1]
        if j:
            assert cy > centres[(i, j - 1, k)][1] and cx == centres[(i, j - 1, k)][0]
        if k:
            assert cx > centres[(2, j, k - 1)][0]  # the whole z=1 grid is right of the z=0 grid


def test_cells_are_the_requests_drawn_alone_and_a_rerun_draws_only_missing_ones(tiny_sd_folder: Path,
                                                                                  tmp_path: Path) -> None:
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.request import build_request

    base = {"prompt": "a red circle", "model": str(tiny_sd_folder), "width": 32, "height": 32, "guidance": 3.0}
    plot = plan_plot(base, [parse_axis("steps:1,2", "--x"), parse_axis("prompt-sr:circle,square", "--y")])
    cache, drawn = PipelineCache(), []
    grid = draw_plot(plot, tmp_path / "plot", cache, on_cell=lambda done, total, new: drawn.append(new))
    assert drawn == [True] * 4
    for (i, j), steps, prompt in (((0, 0), 1, "a red circle"), ((1, 0), 2, "a red circle"),
                                  ((0, 1), 1, "a red square"), ((1, 1), 2, "a red square")):
        alone = run(build_request(**{**base, "prompt": prompt, "steps": steps}), cache).images[0]
        with Image.open(cell_path(tmp_path / "plot", (i, j))) as cell:
            assert np.array_equal(np.asarray(cell.convert("RGB")), np.asarray(alone.convert("RGB"))), (i, j)
    with Image.open(grid) as image:
        recorded = __import__("json").loads(image.text["difflab-xyz"])
        assert image.text["parameters"].startswith("a red circle")
    assert [cell["request"]["steps"] for cell in recorded["cells"]] == [1, 2, 1, 2]
    first_grid = grid.read_bytes()
    kept = cell_path(tmp_path / "plot", (0, 0)).stat().st_mtime_ns
    cell_path(tmp_path / "plot", (1, 1)).unlink()
    drawn.clear()
    draw_plot(plot, tmp_path / "plot", cache, on_cell=lambda done, total, new: drawn.append(new))
    assert drawn == [False, False, False, True]  # x fastest: (0,0), (1,0), (0,1), (1,1)
    assert cell_path(tmp_path / "plot", (0, 0)).stat().st_mtime_ns == kept and grid.read_bytes() == first_grid
    other = plan_plot(base, [parse_axis("steps:1,3", "--x"), parse_axis("prompt-sr:circle,square", "--y")])
    with pytest.raises(ValueError, match="--out: .* holds another X/Y/Z plot"):
        draw_plot(other, tmp_path / "plot", cache)


def test_the_cli_names_bad_axes_and_cells_before_drawing(tmp_path: Path) -> None:
    out = tmp_path / "plot"
    cases = [(["--x", "steps:0,2", "--y", "seed:0,1"], "steps: Input should be greater than or equal to 1 (cell --x "
              "steps=0, --y seed=0)"),
             (["--x", "steps:1", "--y", "steps:2"], "axes: each axis must set a different field"),
             (["--x", "sampler:warp", "--y", "seed:0"], "scheduler must be one of"),
             (["--x", "colour:1", "--y", "seed:0"], "--x: axis must be FIELD")]
    for arguments, message in cases:
        result = runner.invoke(app, ["xyz", "a red circle", *arguments, "-o", str(out)])
        assert result.exit_code == 2 and message in result.output, (arguments, result.output)
        assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    result = runner.invoke(app, ["xyz", "a red circle", "--x", "steps:1", "--y", "seed:0", "-o", str(out)])
    assert result.exit_code == 2 and "--out" in result.output and (out / "mine.txt").read_text() == "a user's file"
