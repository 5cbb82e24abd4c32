"""Backends: ways to run the same pipeline modules (DESIGN.md, "Scale and speed"; issue 20).

``torch`` runs the diffusers pipeline as loaded. ``openvino`` runs the same pipeline with its U-Net, text encoders
and VAE swapped, for the duration of a draw, for OpenVINO-compiled copies (openvino_modules.py), converted once
and cached on disk (openvino_cache.py). The backend is chosen per run (``--backend``, ``--precision``), never per
request field; it is held by the run's ``PipelineCache`` and recorded in every image's metadata, and ``replay``
uses the recorded one.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

BACKENDS = ("torch", "openvino")
PRECISIONS = ("f32", "bf16")
OPENVINO_FAMILIES = ("sd", "sdxl", "sdxl-refiner")  # CLIP text encoders, a UNet2DConditionModel, an AutoencoderKL
EXTRA_HINT = "pip install 'difflab[openvino]' (or scripts/setup.sh openvino)"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Backend:
    """A run's backend and precision. ``state`` holds the run's OpenVINO runtime (compiled models), made on
    first use; it is not part of the backend's value."""

    name: str = "torch"
    precision: str = "f32"
    state: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}; got {self.name!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")

    @property
    def is_torch(self) -> bool:
        return self.name == "torch"

    def describe(self) -> str:
        """What the infotext's "Backend" says: ``openvino f32``."""
        return self.name if self.is_torch else f"{self.name} {self.precision}"

    def record(self) -> dict[str, Any]:
        """The JSON record's ``backend``; replay reads it back with :func:`from_record`."""
        values: dict[str, Any] = {"name": self.name, "precision": self.precision}
        if not self.is_torch:
            import openvino

            values["openvino"] = openvino.__version__
        return values

    def runtime(self):
        """The run's OpenVinoRuntime, made on first use."""
        from difflab.engine.backends.openvino_modules import OpenVinoRuntime

        if "runtime" not in self.state:
            self.state["runtime"] = OpenVinoRuntime(self.precision)
        return self.state["runtime"]


def choose_backend(name: str = "torch", precision: str = "f32") -> Backend:
    """The backend asked for, checked on this machine: ValueError naming the field when it cannot run here."""
    backend = Backend(name, precision)
    if backend.is_torch:
        if precision != "f32":
            raise ValueError(f"precision: {precision} is an OpenVINO precision (--backend openvino); the torch "
                             "backend computes in the device's dtype (float32 on the CPU)")
        return backend
    require_openvino()
    if precision == "bf16" and not cpu_has_native_bf16():
        raise ValueError(f"precision: bf16 needs a CPU with native bf16 ({' or '.join(BF16_FLAGS)} in "
                         "/proc/cpuinfo); this CPU has neither, and emulated bf16 is slower than f32: use f32")
    return backend


def require_openvino() -> None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise ValueError(f"backend: openvino needs the openvino extra, which is not installed: {EXTRA_HINT}") from None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags list avx512_bf16 or amx_bf16 (Linux); False where /proc/cpuinfo is absent."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in BF16_FLAGS)


def pipeline_cache(backend: Backend, compile: bool = False):
    """A PipelineCache for ``backend``: OpenVINO runs on the CPU, where the PyTorch modules it converts live.
    ``compile``: torch.compile each U-Net (engine/compile.py), a torch-backend option only."""
    from difflab.engine.device import choose_placement
    from difflab.engine.pipeline import PipelineCache

    placement = choose_placement("cpu" if not backend.is_torch else "auto")
    check_compile(backend, compile)
    return PipelineCache(placement=placement, backend=backend, compile=compile)


def check_compile(backend: Backend, compile: bool) -> None:
    """ValueError naming the field when ``compile`` (torch.compile of the PyTorch U-Net) meets another backend."""
    if compile and not backend.is_torch:
        raise ValueError("compile: --compile is for the torch backend; OpenVINO compiles its own models")


def from_record(record: Optional[dict]) -> Backend:
    """The backend an image's JSON record names (torch for records written before backends existed)."""
    values = (record or {}).get("backend") or {}
    return Backend(values.get("name", "torch"), values.get("precision", "f32"))


def check_request(backend: Backend, settings, controls: Sequence = ()) -> None:
    """Combinations the OpenVINO backend refuses, by field name, before any weights load."""
    if backend.is_torch:
        return
    request, family = settings.request, settings.model.family
    if family not in OPENVINO_FAMILIES:
        raise ValueError(f"model: the openvino backend runs Stable Diffusion 1.x and SDXL ({', '.join(OPENVINO_FAMILIES)}); "
                         f"{request.model!r} is of the {family} family: use --backend torch")
    if controls or request.controls:
        raise ValueError("controls: ControlNet is not converted by the openvino backend; use --backend torch")
    if request.memory:
        raise ValueError("memory: the memory knobs act on PyTorch modules; the openvino backend runs none of them "
                         "(leave --memory out, or use --backend torch)")
    if request.refiner is not None:
        from difflab.engine.registry import resolve_model

        refiner_family = resolve_model(request.refiner).family
        if refiner_family not in OPENVINO_FAMILIES:
            raise ValueError(f"refiner: the openvino backend runs SDXL refiners; {request.refiner!r} is of the "
                             f"{refiner_family} family")


def check_request_fits(backend: Backend, request) -> None:
    """``check_request`` for a request whose model is not loaded yet: entry points call it before any output."""
    if backend.is_torch:
        return
    from difflab.engine.pipeline import Settings
    from difflab.engine.registry import resolve_model

    check_request(backend, Settings.of(request, resolve_model(request.model, request.allow_unsafe_pickle)))


@contextlib.contextmanager
def backend_modules(pipeline, backend: Backend, model, *, loras: Sequence = (), vae=None,
                    embeddings: Sequence = ()) -> Iterator[None]:
    """Run ``pipeline`` (of ``model``, a registry.ResolvedModel) through ``backend`` for the block: nothing for
    torch; OpenVINO stand-ins for its U-Net, text encoders and VAE otherwise. ``loras`` must already be fused into
    the PyTorch modules (they are converted as they are), ``vae`` is a swapped VAE (engine.vae.ResolvedVae) and
    ``embeddings`` the textual inversions applied: each is part of the converted modules' cache key."""
    if backend.is_torch:
        yield
        return
    from difflab.engine.backends.openvino_identity import component_identity
    from difflab.engine.backends.openvino_modules import swapped

    sources = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2",
               "vae": "vae_decoder"}
    identities = {name: component_identity(model, component, backend.precision, loras=loras, vae=vae,
                                           embeddings=embeddings)
                  for name, component in sources.items() if getattr(pipeline, name, None) is not None}
    with swapped(pipeline, backend.runtime(), identities):
        yield


def replay_backend(image, name: Optional[str], precision: Optional[str]) -> tuple[Backend, list[str]]:
    """The backend to replay ``image`` with: the one its record names, or the one asked for (with a warning when
    it differs: bit-identity holds only on the same backend and precision, and the same machine)."""
    from difflab.engine.metadata import read_png_metadata

    recorded = from_record(read_png_metadata(image)[1])
    chosen = Backend(name or recorded.name, precision or (recorded.precision if (name or recorded.name) ==
                                                          recorded.name else "f32"))
    warnings = []
    if (chosen.name, chosen.precision) != (recorded.name, recorded.precision):
        warnings.append(f"backend: recorded {recorded.describe()}, replaying with {chosen.describe()}; "
                        "bit-identity is not expected")
    return choose_backend(chosen.name, chosen.precision), warnings
