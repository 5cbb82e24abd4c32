"""What engine/compile.py's choice of dynamic shapes costs: torch.compile of tiny-shapes' U-Net with
``dynamic=True`` (difflab's), ``None`` (torch's default, "automatic dynamic": static first, then a recompile that
marks the dimension that changed) or ``False`` (static: a compile per shape), in a fresh process with its own empty
Inductor cache. Prints one JSON line: eager and compiled first image, the median of 3 later images each, then what
a server meets next: n=2 (batch 4 with CFG) twice, a new size (48x32) twice, n=3; and the largest pixel difference.

    DIFFLAB_COMPILE_CACHE=$(mktemp -d) PYTHONPATH=src OMP_NUM_THREADS=1 \
        .venv/bin/python bench/compile_dynamic.py true 1 >> results.jsonl

Results: bench/results/compile.md ("dynamic=True or torch's automatic dynamic shapes").
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from difflab.engine import compile as engine_compile
from difflab.engine.pipeline import PipelineCache, run
from difflab.engine.request import build_request


def request(seed: int, **fields):
    return build_request(prompt="a red circle on a blue background", seed=seed, **fields)


def timed(cache, one_request):
    began = time.perf_counter()
    result = run(one_request, cache)
    return time.perf_counter() - began, result


def main() -> None:
    mode = sys.argv[1]
    dynamic = {"true": True, "none": None, "false": False}[mode]
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)

    def compile_pipeline(pipeline):  # engine_compile.compile_pipeline with the mode under test
        engine_compile.enable_disk_caches()
        pipeline.unet.compile(dynamic=dynamic)
        return pipeline

    engine_compile.compile_pipeline = compile_pipeline
    eager, compiled = PipelineCache(), PipelineCache(compile=True)
    rows = {}
    rows["eager_first"], eager_image = timed(eager, request(0))
    rows["compiled_first"], compiled_image = timed(compiled, request(0))
    pairs = [(timed(eager, request(i))[0], timed(compiled, request(i))[0]) for i in range(1, 4)]
    rows["eager_later"] = float(np.median([pair[0] for pair in pairs]))
    rows["compiled_later"] = float(np.median([pair[1] for pair in pairs]))
    # what a server meets next: n=2 (batch 4 with CFG), another size, n=3
    for name, seed, fields in (("compiled_n2", 7, dict(n=2)), ("compiled_n2_again", 8, dict(n=2)),
                               ("compiled_48x32", 9, dict(width=48, height=32)),
                               ("compiled_48x32_again", 10, dict(width=48, height=32)),
                               ("compiled_n3", 11, dict(n=3))):
        rows[name], _ = timed(compiled, request(seed, **fields))
    first_eager = np.asarray(eager_image.images[0], dtype=np.int16)
    first_compiled = np.asarray(compiled_image.images[0], dtype=np.int16)
    rows["max_diff"] = int(np.abs(first_eager - first_compiled).max())
    print(json.dumps({"mode": mode, **{k: round(v, 2) if isinstance(v, float) else v for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
