"""The sweeps' X/Y/Z plots: xyz's draw_images draws a plot in as few pipeline calls as give the same images
(consecutive seeds as one request, prompts merged into one call), each cell within the engine's 1/255 bound of
the same request drawn alone, and the grid labels rows and columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.engine.conftest import tiny_sd_folder  # noqa: F401  (the fixture, re-exported for this folder)

SIZE = {"steps": 2, "width": 32, "height": 32}


def test_a_guidance_plot_is_one_call_per_row_and_each_cell_is_its_request(tiny_sd_folder: Path) -> None:  # noqa: F811
    from difflab.engine.pipeline import PipelineCache, run
    from difflab.engine.registry import resolve_model
    from difflab.viz.sweep_plot import sweep_plot

    cache = PipelineCache()
    unet = cache.get(resolve_model(str(tiny_sd_folder)))[0].unet
    calls = []
    hook = unet.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    try:
        drawn = sweep_plot({**SIZE, "model": str(tiny_sd_folder)}, "guidance", [1.0, 4.0],
                           ["a red circle", "a blue star"], seeds=2, seed=3, cache=cache)
    finally:
        hook.remove()
    # 2 rows x 2 steps: each row's 4 images (2 prompts x 2 seeds) in one pipeline call, one U-Net call a step
    # (diffusers batches both guidance branches); cell by cell it would be 8 calls per row
    assert len(calls) == 2 * SIZE["steps"]
    assert [axis.kind.name for axis in drawn.plot.axes] == ["seed", "guidance", "prompt-sr"]
    for (i, j, k), request in drawn.plot.cells:
        assert (request.seed, request.guidance, request.prompt) == (3 + i, [1.0, 4.0][j], ["a red circle",
                                                                                         "a blue star"][k])
        alone = np.asarray(run(request, cache).images[0].convert("RGB"), dtype=np.int16)
        assert np.abs(np.asarray(drawn.images[(i, j, k)], dtype=np.int16) - alone).max() <= 1
    assert drawn.row(1)[2] is drawn.images[(0, 1, 1)]  # prompt-major, seed-minor
    grid = drawn.grid()
    assert grid.width > 2 * 2 * 128 and grid.height > 2 * 128  # 32-px cells at 4x, under labels


def test_clip_skip_is_an_xyz_axis() -> None:
    from difflab.engine.xyz import cell_fields, parse_axis

    axis = parse_axis("clip-skip:1-3", "--y")
    assert axis.values == (1, 2, 3) and axis.label(2) == "Clip skip: 2"
    assert cell_fields({"prompt": "a red circle"}, [parse_axis("seed:0", "--x"), axis], (0, 2))["clip_skip"] == 3
