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
70% of the steps), ``-n`` and the server's merged batches change the batch, and requests change the size. Measured
on tiny-shapes, one thread, fresh empty caches (bench/compile_dynamic.py, bench/results/compile.md): with
``dynamic=True`` the first image cost 448 s, a first n=2 request nothing more (1.15 s), a first 48x32 request 340 s
(a new size compiles again: 6x4 latents halve to odd sizes); with torch's default (automatic dynamic: static first,
recompiled on a change) the first image cost 201 s, then n=2 134 s and 48x32 604 s. A server meets every batch
size, so ``dynamic=True`` compiles less in all (788 s against 939 s) and never at a batch change.

Pixels: Inductor fuses and reorders float operations, so images may differ from eager by rounding, within 1/255
(tests/engine/test_compile.py; 0/255 and 1/255 measured, bench/results/compile.md); the PNG's JSON record says
``compile`` so replay can tell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CACHE_ENV = "DIFFLAB_COMPILE_CACHE"  # where compiled artefacts go; else $XDG_CACHE_HOME/difflab/torch-compile
# what the first image of a process costs beyond an eager one with an empty cache: 443 s for tiny-shapes (64x64,
# 20 steps, dynamic=True) at one thread on the 2-core machine with one other job (bench/compile_dynamic.py;
# issue 25's 68 s was a static compile). bench/compile.py measures empty and warm caches (bench/results/compile.md)
FIRST_IMAGE_EXTRA_S = 450


def cache_dir() -> Path:
    """Where torch keeps compiled artefacts for difflab: $DIFFLAB_COMPILE_CACHE, else a TORCHINDUCTOR_CACHE_DIR the
    user set, else ~/.cache/difflab/torch-compile (under $XDG_CACHE_HOME when set).

    Torch writes its own default (/tmp/torchinductor_USER) into TORCHINDUCTOR_CACHE_DIR the first time anything asks
    Inductor for its folder, and importing diffusers' pipelines does: that value is torch's, not the user's, and
    would put difflab's cache in /tmp (emptied at reboot), so it counts as unset."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != _torch_default_folder():
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "difflab" / "torch-compile"


def _torch_default_folder() -> str:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(default_cache_dir())


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
        cost = (f"first image takes ~{FIRST_IMAGE_EXTRA_S} s longer (tiny-shapes at one CPU thread; larger models "
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
