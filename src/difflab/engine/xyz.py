"""X/Y/Z plots, as A1111's ``scripts/xyz_grid.py``: one base request, two or three axes of values, one cell per
combination, one labelled grid.

An axis is ``FIELD:V1,V2,...``. Numeric axes also take A1111's ranges, ``1-5`` (1, 2, 3, 4, 5), ``1-9 (+2)``
(1, 3, 5, 7, 9) and ``0.5-1.5 [3]`` (three evenly spaced values). ``prompt-sr`` is A1111's "Prompt S/R": the
first value is searched for in the prompt and negative prompt and each value replaces it in turn (the first cell
keeps the prompt as it is). Every cell is a full GenerationRequest with one image, validated before anything is
drawn, so a value a field cannot take is named before any work.

Cells are PNGs in ``OUT/cells/`` named by their position, each with its own metadata (replay regenerates it);
``OUT/plot.json`` is the plan. A run into a folder holding the same plan draws only the cells that are missing
(resume); a folder holding another plan is refused. ``OUT/grid.png`` tiles the cells, columns x, rows y, and
one grid per z value side by side; its ``difflab-xyz`` text chunk holds the axes and every cell's request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

PLAN_FILE = "plot.json"
GRID_FILE = "grid.png"
GRID_KEY = "difflab-xyz"
MAX_CELLS = 512


@dataclass(frozen=True)
class AxisKind:
    name: str
    field: str  # the GenerationRequest field it sets ("" for the special axes)
    kind: type
    label: str  # how the grid names it (A1111's axis names)


KINDS = {kind.name: kind for kind in (
    AxisKind("seed", "seed", int, "Seed"),
    AxisKind("steps", "steps", int, "Steps"),
    AxisKind("guidance", "guidance", float, "CFG Scale"),
    AxisKind("guidance-end", "guidance_end", float, "Guidance end"),
    AxisKind("sampler", "scheduler", str, "Sampler"),
    AxisKind("prompt-sr", "", str, "Prompt S/R"),
    AxisKind("negative", "negative_prompt", str, "Negative prompt"),
    AxisKind("model", "model", str, "Checkpoint name"),
    AxisKind("lora-weight", "", float, "LoRA weight"),
    AxisKind("control-scale", "", float, "ControlNet weight"),
    AxisKind("strength", "strength", float, "Denoising"),
    AxisKind("width", "width", int, "Width"),
    AxisKind("height", "height", int, "Height"),
    AxisKind("hires-scale", "hires_scale", float, "Hires upscale"),
    AxisKind("hires-strength", "hires_strength", float, "Hires denoising"),
    AxisKind("clip-skip", "clip_skip", int, "Clip skip"),
)}
_RANGE = re.compile(r"^\s*(-?[\d.]+)\s*-\s*(-?[\d.]+)\s*(?:\(\s*([+-]?[\d.]+)\s*\)|\[\s*(\d+)\s*\])?\s*$")


@dataclass(frozen=True)
class Axis:
    kind: AxisKind
    values: tuple[Any, ...]

    def label(self, value: Any) -> str:
        return f"{self.kind.label}: {value:g}" if isinstance(value, float) else f"{self.kind.label}: {value}"

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.kind.name, "values": list(self.values)}


def parse_axis(text: str, option: str) -> Axis:
    """``FIELD:V1,V2`` -> Axis; ValueError naming ``option`` and the allowed fields or the bad value."""
    name, _, values_text = text.partition(":")
    kind = KINDS.get(name.strip())
    if kind is None:
        raise ValueError(f"{option}: axis must be FIELD:V1,V2,... with FIELD one of {', '.join(KINDS)}; got {text!r}")
    if kind.kind is str:
        values = [part.strip() for part in values_text.split(",")]
        if kind.name != "prompt-sr":
            values = [v for v in values if v]
    else:
        values = []
        for part in (p for p in values_text.split(",") if p.strip()):
            values.extend(_numbers(part, kind, option))
    if not values or (kind.name == "prompt-sr" and not values[0]):
        raise ValueError(f"{option}: {kind.name} needs at least one value; got {text!r}")
    if len(set(map(str, values))) != len(values):
        raise ValueError(f"{option}: {kind.name} lists a value twice; got {text!r}")
    return Axis(kind, tuple(values))


def _numbers(part: str, kind: AxisKind, option: str) -> list[Any]:
    match = _RANGE.match(part) if not part.strip().startswith("-") or part.count("-") > 1 else None
    try:
        if match is None:
            return [kind.kind(float(part)) if kind.kind is int and float(part).is_integer() else kind.kind(part)]
        start, end = float(match.group(1)), float(match.group(2))
        if match.group(4):  # [count]: evenly spaced, ends included
            count = int(match.group(4))
            values = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
        else:
            step = float(match.group(3) or (1 if end >= start else -1))
            if step == 0 or (end - start) * step < 0:
                raise ValueError
            count = int(abs(end - start) / abs(step) + 1e-9) + 1
            values = [start + i * step for i in range(count)]
        if kind.kind is int:
            return [int(round(v)) for v in values]
        return [round(v, 6) for v in values]
    except (ValueError, OverflowError):
        kind_name = "whole number" if kind.kind is int else "number"
        raise ValueError(f"{option}: {kind.name} takes {kind_name}s or ranges like 1-5, 1-9 (+2), 0.5-1.5 [3]; "
                         f"got {part.strip()!r}") from None


def cell_fields(base: dict[str, Any], axes: Sequence[Axis], position: Sequence[int]) -> dict[str, Any]:
    """The request fields of the cell at ``position`` (an index per axis)."""
    fields = dict(base)
    for axis, index in zip(axes, position):
        value, name = axis.values[index], axis.kind.name
        if name == "prompt-sr":
            search = axis.values[0]
            fields["prompt"] = fields["prompt"].replace(search, value)
            fields["negative_prompt"] = fields.get("negative_prompt", "").replace(search, value)
        elif name == "lora-weight":
            loras = list(fields.get("loras") or ())
            if len(loras) != 1:
                raise ValueError("lora-weight: the axis sets the weight of the one --lora given; "
                                 f"give exactly one (got {len(loras)})")
            from difflab.engine.lora import parse_lora_spec

            source = parse_lora_spec(loras[0]).source
            fields["loras"] = [f"{source}:{value:g}"] if value != 0 else []  # weight 0: drawn without it
        elif name == "control-scale":
            controls = list(fields.get("controls") or ())
            if not controls:
                raise ValueError("control-scale: the axis sets the scale of the --control units; give one")
            fields["controls"] = [{**_control_dict(c), "scale": value} for c in controls]
        else:
            fields[axis.kind.field] = value
    fields["n"] = 1
    return fields


def _control_dict(control: Any) -> dict[str, Any]:
    if isinstance(control, str):
        from difflab.engine.control import parse_control

        control = parse_control(control)
    return control.model_dump() if hasattr(control, "model_dump") else dict(control)


@dataclass(frozen=True)
class Plot:
    axes: tuple[Axis, ...]  # x, y[, z]
    cells: tuple[tuple[tuple[int, ...], Any], ...]  # (position, GenerationRequest), x fastest

    def plan(self) -> dict[str, Any]:
        return {"axes": [axis.to_json() for axis in self.axes],
                "cells": [{"position": list(position), "request": request.model_dump(mode="json")}
                          for position, request in self.cells]}


def plan_plot(base: dict[str, Any], axes: Sequence[Axis]) -> Plot:
    """Every cell's validated request; ValueError naming the axis and value of the first cell that fails."""
    from itertools import product

    from difflab.engine.request import build_request

    if not 2 <= len(axes) <= 3:
        raise ValueError("axes: an X/Y/Z plot takes --x and --y, and optionally --z")
    names = [axis.kind.name for axis in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"axes: each axis must set a different field; got {', '.join(names)}")
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_CELLS:
        raise ValueError(f"axes: {count} cells is more than {MAX_CELLS}; use fewer values")
    options = ("--x", "--y", "--z")
    cells = []
    for reversed_position in product(*(range(len(axis.values)) for axis in reversed(axes))):
        position = tuple(reversed(reversed_position))
        try:
            request = build_request(**cell_fields(base, axes, position))
        except ValueError as error:
            where = ", ".join(f"{options[i]} {axes[i].kind.name}={axes[i].values[p]!r}" for i, p in enumerate(position))
            raise ValueError(f"{error} (cell {where})") from None
        cells.append((position, request))
    return Plot(tuple(axes), tuple(cells))


def cell_path(out: Path, position: Sequence[int]) -> Path:
    return out / "cells" / ("-".join(f"{axis}{index:03d}" for axis, index in zip("xyz", position)) + ".png")


def check_plan(out: Path, plot: Plot) -> None:
    """Refuse a folder that holds another plot (its cells would be mixed into this grid)."""
    plan_file = out / PLAN_FILE
    if plan_file.is_file():
        try:
            existing = json.loads(plan_file.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing != json.loads(json.dumps(plot.plan())):
            raise ValueError(f"--out: {str(out)!r} holds another X/Y/Z plot ({PLAN_FILE} differs); "
                             "use a new folder, or delete it to start over")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out: {str(out)!r} exists and is not an empty folder or an X/Y/Z plot of this plan")


def draw_plot(plot: Plot, out: Path, cache: Any = None, *, placement: Any = None,
              on_cell: Optional[Callable[[int, int, bool], None]] = None) -> Path:
    """Draw the missing cells (each written atomically as it finishes) and the grid; returns the grid's path.
    ``on_cell(done, total, drawn)``: ``drawn`` is False for a cell already in the folder."""
    from PIL import Image

    from difflab.core.checkpoint import atomic_write_bytes
    from difflab.engine.outputs import image_png
    from difflab.engine.pipeline import PipelineCache, run

    out = Path(out)
    check_plan(out, plot)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / PLAN_FILE, json.dumps(plot.plan(), indent=1).encode())
    cache = cache if cache is not None else PipelineCache()
    images = {}
    for done, (position, request) in enumerate(plot.cells, 1):
        path = cell_path(out, position)
        drawn = not path.is_file()
        if drawn:
            result = run(request, cache)
            atomic_write_bytes(path, image_png(result, 0, placement or getattr(cache, "placement", None)))
        with Image.open(path) as image:
            images[position] = image.convert("RGB")
        if on_cell is not None:
            on_cell(done, len(plot.cells), drawn)
    grid = plot_grid(plot, images)
    atomic_write_bytes(out / GRID_FILE, grid_png(plot, grid, out))
    return out / GRID_FILE


def draw_images(plot: Plot, cache: Any = None, *,
                on_cells: Optional[Callable[[int], None]] = None) -> dict[tuple[int, ...], Any]:
    """Every cell's image in memory (no folder), drawn in as few pipeline calls as give the same images: cells
    equal but for consecutive seeds are one request with ``n`` images (image i seeded ``seed + i``, as alone), and
    such requests that differ only in prompt merge into one call (engine.merged: within its 1/255 batch bound of
    the cell drawn alone). What the grids of ``difflab viz`` and ``difflab explain`` are drawn with; the ``difflab
    xyz`` command keeps :func:`draw_plot` (one call per cell, resumable). ``on_cells(k)``: k more cells done."""
    from difflab.engine.merged import NotMergeable, merge_key
    from difflab.engine.pipeline import PipelineCache, run, run_merged

    cache = cache if cache is not None else PipelineCache()
    runs: list[tuple[Any, list[tuple[int, ...]]]] = []  # (request with n images, the positions it draws)
    for position, request in plot.cells:
        if runs:
            last, positions = runs[-1]
            if request.model_copy(update={"seed": last.seed}) == last.model_copy(update={"n": 1}) \
                    and request.seed == last.seed + last.n:
                runs[-1] = (last.model_copy(update={"n": last.n + 1}), positions + [position])
                continue
        runs.append((request, [position]))
    groups: dict[Any, list[tuple[Any, list[tuple[int, ...]]]]] = {}
    for one in runs:  # merge_key None (ControlNets, hires, refiner): a group of its own
        key = merge_key(one[0])
        groups.setdefault(key if key is not None else id(one), []).append(one)
    images: dict[tuple[int, ...], Any] = {}
    for group in groups.values():
        requests = [request for request, _ in group]
        try:
            results = run_merged(requests, cache) if len(requests) > 1 else [run(requests[0], cache)]
        except NotMergeable:  # e.g. a prompt with A1111 weights: difflab encodes it per request
            results = [run(request, cache) for request in requests]
        for (_, positions), result in zip(group, results):
            images.update(zip(positions, (image.convert("RGB") for image in result.images)))
            if on_cells is not None:
                on_cells(len(positions))
    return images


def plot_grid(plot: Plot, images: dict[tuple[int, ...], Any]):
    """Columns x, rows y; with z, one such grid per z value, side by side under the z labels."""
    from difflab.viz.grid import make_grid

    x, y = plot.axes[0], plot.axes[1]
    z_values = range(len(plot.axes[2].values)) if len(plot.axes) > 2 else [None]
    grids = []
    for k in z_values:
        tiles = [images[(i, j) if k is None else (i, j, k)] for j in range(len(y.values)) for i in range(len(x.values))]
        scale = max(1, 128 // tiles[0].width)  # small models' images: large enough to read beside the labels
        grids.append(make_grid(tiles, columns=len(x.values), scale=scale, labels=[x.label(v) for v in x.values],
                               row_labels=[y.label(v) for v in y.values]))
    if len(grids) == 1:
        return grids[0]
    z = plot.axes[2]
    return make_grid(grids, columns=len(grids), padding=8, labels=[z.label(v) for v in z.values])


def grid_png(plot: Plot, grid, out: Path) -> bytes:
    """The grid with the first cell's A1111 parameters (what A1111 writes on its grids) and every cell's request."""
    from PIL import PngImagePlugin

    from difflab.engine.metadata import PARAMETERS_KEY, read_png_metadata
    from difflab.viz.grid import png_bytes

    parameters, _ = read_png_metadata(cell_path(out, plot.cells[0][0]))
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(GRID_KEY, json.dumps(plot.plan(), sort_keys=True))
    return png_bytes(grid, pnginfo=info)
