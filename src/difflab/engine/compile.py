"""``--compile``: torch.compile of a cached pipeline's U-Net, once per pipeline, for long-lived work (serve, batch).

What it costs and what it buys (bench/compile.py, bench/results/compile.md, tiny-shapes on 2 CPU cores): the
first image of a process waits for Inductor to compile the U-Net; afterwards each image is faster. Inductor keeps
what it compiled on disk (its FX graph cache and the AOTAutograd cache), here in a difflab cache folder, so a
second process with the same model, torch and CPU loads the compiled code instead of compiling it again.

Only the U-Net is compiled: it runs ``steps`` (x2 with CFG) times an image, the VAE decoder once, the text encoder
once. Compiling the decoder would add its own compile time for at most its share of an image's time (measured in
the bench), so it does not pay.

Dynamic shapes: the U-Net is compiled with ``dynamic=True`` (batch, height and width symbolic). One image already
calls the U-Net at two batch sizes (CFG doubles the batch, and tiny-shapes' guidance interval stops doubling after
70% of the steps), ``-n`` and the server's merged batches change the batch, and requests change the size. With
static shapes every new (batch, height, width) would be a compile of its own (a minute each here), and past
torch's recompile limit (8) the U-Net silently runs eager; symbolic shapes compile one graph for every batch >= 2
(checked) and one for batch 1 (torch specialises sizes 0 and 1); that new sizes reuse them is not yet confirmed. Open question (bench/results/compile.md): a
dynamic compile looked much slower than issue 25's static 68 s on the loaded machine; a quiet re-run of
bench/compile.py decides whether per-size static compiles are cheaper for a server that sees one or two sizes.

Pixels: Inductor fuses and reorders float operations, so images may differ from eager by rounding, within 1/255
(tests/engine/test_compile.py; 0/255 and 1/255 measured, bench/results/compile.md); the PNG's JSON record says
``compile`` so replay can tell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CACHE_ENV = "DIFFLAB_COMPILE_CACHE"  # where compiled artefacts go; else $XDG_CACHE_HOME/difflab/torch-compile
# what the first image of a process costs beyond an eager one with an empty cache: 68 s for tiny-shapes (64x64,
# 20 steps) on 2 idle CPU cores (issue 25's measurement, torch.compile(pipe.unet)). bench/compile.py measures it
# again with empty and warm caches (bench/results/compile.md: on a loaded machine it took far longer)
FIRST_IMAGE_EXTRA_S = 70


def cache_dir() -> Path:
    """Where torch keeps compiled artefacts for difflab: $DIFFLAB_COMPILE_CACHE, else a TORCHINDUCTOR_CACHE_DIR the
    user set, else ~/.cache/difflab/torch-compile (under $XDG_CACHE_HOME when set)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "difflab" / "torch-compile"


def enable_disk_caches() -> Path:
    """Point Inductor's on-disk caches at ``cache_dir()`` and turn them on; returns the folder.

    Must run before the first compile of the process: Inductor reads TORCHINDUCTOR_CACHE_DIR when it first
    needs the folder."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    inductor_config.fx_graph_cache = True  # compiled graphs, keyed by graph, inputs, torch version and CPU
    functorch_config.enable_autograd_cache = True  # the AOTAutograd layer above them (training graphs)
    return folder


def is_warm(folder: Path) -> bool:
    """True when the folder already holds compiled graphs (a previous process compiled something)."""
    graphs = folder / "fxgraph"
    return graphs.is_dir() and any(graphs.iterdir())


def notice(folder: Path) -> str:
    """The one line ``--compile`` prints at start: what compiling costs and where its cache is."""
    if is_warm(folder):
        cost = "compiled graphs found in the cache: the first image reuses what they cover"
    else:
        cost = (f"first image takes ~{FIRST_IMAGE_EXTRA_S} s longer (tiny-shapes on 2 idle CPU cores; larger models "
                "and busy machines longer)")
    return f"compiling the U-Net: {cost}; cache at {folder}"


def compile_pipeline(pipeline: Any) -> Any:
    """Compile ``pipeline.unet`` in place (``nn.Module.compile``: the module keeps its class, config and
    attributes, which diffusers, LoRA loading and the engine read). Compiling happens at its first call."""
    enable_disk_caches()
    pipeline.unet.compile(dynamic=True)
    return pipeline


def is_compiled(module: Any) -> bool:
    """True for a module compiled in place by ``compile_pipeline``."""
    return getattr(module, "_compiled_call_impl", None) is not None
