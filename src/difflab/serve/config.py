"""ServeConfig: everything a server instance needs, passed in (no globals), validated once."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from difflab.serve.retention import DEFAULT_EVERY_S, DEFAULT_KEEP_DAYS, DEFAULT_KEEP_GB, RetentionPolicy

LOOPBACK_NAMES = ("localhost",)
UI_PREVIEW_EVERY = 4  # with --ui: a preview every 4 steps, five or so over a 20-step job
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # a GenerationRequest is < 100 kB; 8 MB leaves room for base64 init images


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': addresses no other machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as public


@dataclass(frozen=True)
class ServeConfig:
    data_dir: Path  # queue.sqlite3 and images/ live here; the queue survives restarts because this folder does
    host: str = "127.0.0.1"
    port: int = 7860
    max_queue: int = 100  # queued (not yet running) jobs; one more gets HTTP 429 with Retry-After
    api_token: Optional[str] = None  # required (as "Authorization: Bearer ...") on every route when set
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    models_dir: Optional[Path] = None  # diffusers folders here are offered by their folder name
    loras_dir: Optional[Path] = None  # LoRAs here are offered by name; default $DIFFLAB_LORA_DIR or ./loras
    default_model: str = "tiny-shapes"  # what A1111 clients get when they name no checkpoint
    ui: bool = False  # mount the Gradio web UI at /ui (needs Gradio; opt-in: `difflab serve --ui`)
    sync_timeout_s: float = 600.0  # a synchronous request waits this long, then answers 202 with the job
    # step previews in the progress events: every N denoising steps a VAE decode of the current x0 estimate of the
    # job's first image. 0 = off, the API's default: each preview costs a full VAE decode, which on a large model is
    # a sizeable fraction of a step. None = the default: UI_PREVIEW_EVERY with the web UI (its live preview), else 0
    preview_every: Optional[int] = None
    preview_max_side: int = 256  # previews are shrunk to fit in this many pixels on each side
    # batching: compatible queued jobs (equal in all but prompt, negative prompt, seed and n; engine.merged) run
    # as one pipeline call of at most batch_max_images images. Off by default: a merged image equals the same
    # request drawn alone only up to the kernels' batch-size dependence (1/255 measured on CPU), so replaying it
    # from its metadata is no longer bit-identical; it pays where a bigger batch is nearly free (a GPU)
    batch: bool = False
    batch_max_images: int = 8
    # retention (serve.retention): finished jobs older than keep_days go with their images, then the oldest while
    # the images take more than keep_gb; inputs no job uses go once older than keep_days. 0 turns a rule off
    keep_days: float = DEFAULT_KEEP_DAYS
    keep_gb: float = DEFAULT_KEEP_GB
    retention_every_s: float = DEFAULT_EVERY_S  # how often the worker sweeps (and once at start)
    # engine/backends: torch, or openvino (f32 or bf16) for every job of this server; recorded in each image
    backend: str = "torch"
    precision: str = "f32"
    # torch.compile each model's U-Net once (engine/compile.py): slower first image, faster later ones; pays for a
    # server that draws many images (bench/results/compile.md). Off by default
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("models_dir", "loras_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if not 1 <= self.max_queue <= 100_000:
            raise ValueError(f"max_queue: must be between 1 and 100000; got {self.max_queue}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be between 0 and 65535; got {self.port}")
        if self.preview_every is None:
            object.__setattr__(self, "preview_every", UI_PREVIEW_EVERY if self.ui else 0)
        if self.preview_every < 0:
            raise ValueError(f"preview_every: must be >= 0 (0 = no previews); got {self.preview_every}")
        if not 8 <= self.preview_max_side <= 4096:
            raise ValueError(f"preview_max_side: must be between 8 and 4096; got {self.preview_max_side}")
        if not 1 <= self.batch_max_images <= 64:
            raise ValueError(f"batch_max_images: must be between 1 and 64; got {self.batch_max_images}")
        self.retention  # validates keep_days / keep_gb (ValueError naming the field)
        from difflab.engine.backends import check_compile, choose_backend

        # openvino installed, bf16 native, --compile with torch only: ValueError naming the field
        check_compile(choose_backend(self.backend, self.precision), self.compile)
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be at least 1024; got {self.max_body_bytes}")
        if self.api_token is not None and len(self.api_token) < 16:
            raise ValueError("api_token: must be at least 16 characters (e.g. `python -c 'import secrets; "
                             "print(secrets.token_urlsafe())'`)")
        if not is_loopback(self.host) and not self.api_token:
            # anyone who can reach the port could otherwise fill the queue and read every image
            raise ValueError(f"host: binding to {self.host!r} (beyond loopback) requires --api-token "
                             "(or DIFFLAB_API_TOKEN)")

    @property
    def retention(self) -> RetentionPolicy:
        return RetentionPolicy(keep_days=self.keep_days, keep_bytes=int(self.keep_gb * 1024**3),
                               every_s=self.retention_every_s)

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    @property
    def database(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"
