"""Every grid says what its rows and columns are: the forward process (schedules down, t across), the trajectory
(x_t and the x0 estimate down, steps across), the latent grid, and the guidance grid of ``difflab eval
guidance-sweep`` (scales down, seeds across). Checked on the pixels: text is drawn in each row's margin and above
each column, where an unlabelled grid (the old ones) has only background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

TEXT = 100  # a label pixel: the default font is drawn in black on the white background


def row_margin_has_text(grid: Image.Image, rows: int, tile: int, top: int = 14, padding: int = 2) -> list[bool]:
    """Whether the left margin beside each row holds label pixels."""
    pixels = np.asarray(grid.convert("L"))
    band = pixels[top + padding:top + padding + tile]
    first_tile_x = next(x for x in range(pixels.shape[1]) if (band[:, x] < 250).all())
    return [bool((pixels[top + padding + r * (tile + padding):top + padding + r * (tile + padding) + tile,
                          :first_tile_x - padding] < TEXT).any()) for r in range(rows)]


def column_strip_has_text(grid: Image.Image, top: int = 14) -> bool:
    return bool((np.asarray(grid.convert("L"))[:top - 1] < TEXT).any())


def test_forward_grid_names_schedules_and_steps() -> None:
    from difflab.viz.forward import forward_grid

    x_0 = torch.full((1, 3, 16, 16), 0.6)  # a light image: label pixels cannot be mistaken for it
    grid = forward_grid(x_0, ["linear", "cosine"], columns=3)
    assert row_margin_has_text(grid, rows=2, tile=16) == [True, True]
    assert column_strip_has_text(grid)


def test_trajectory_grid_names_its_two_rows(tiny_checkpoint: Path) -> None:
    from difflab.core.checkpoint import load_model
    from difflab.core.generate import SampleRequest, sample_steps
    from difflab.viz.trajectory import ROW_LABELS, trajectory_grid

    model = load_model(tiny_checkpoint)
    steps = list(sample_steps(model, SampleRequest(labels=(1,), sampler="euler", steps=3, seed=0)))
    grid = trajectory_grid(steps, columns=3, scale=2)
    margin = 6 * max(len(label) for label in ROW_LABELS) + 4
    assert grid.width == margin + 3 * (16 + 2) + 2  # the row-label margin is there
    pixels = np.asarray(grid.convert("L"))
    for row in range(2):
        band = pixels[14 + 2 + row * 18:14 + 2 + row * 18 + 16, :margin - 2]
        assert (band < TEXT).any(), row
    assert column_strip_has_text(grid)


def test_guidance_sweep_grid_is_labelled_like_an_xyz_plot() -> None:
    """difflab eval guidance-sweep's grid (t2i.sweep_grid), from a SweepResult: rows "CFG Scale", columns "Seed",
    the same layout as xyz's plot_grid."""
    from difflab.engine.xyz import KINDS, Axis, plot_grid
    from difflab.eval.t2i import SweepResult, sweep_grid

    colours = {1.0: (250, 200, 200), 7.5: (200, 250, 200)}
    images = {g: [[Image.new("RGB", (32, 32), c) for _ in range(2)]] for g, c in colours.items()}
    result = SweepResult(rows=[], prompts=["a red circle"], images=images)
    grid = sweep_grid(result, prompts_shown=1, seed=5)
    axes = (Axis(KINDS["seed"], (5, 6)), Axis(KINDS["guidance"], (1.0, 7.5)))
    tiles = {(i, j): images[g][0][i] for j, g in enumerate(colours) for i in range(2)}
    expected = plot_grid(type("Layout", (), {"axes": axes})(), tiles)
    assert np.array_equal(np.asarray(grid), np.asarray(expected))
    assert row_margin_has_text(grid, rows=2, tile=128) == [True, True] and column_strip_has_text(grid)
