"""create_app(config): the FastAPI application — the /v1 API, the A1111 endpoints, one worker, one queue.

State lives on ``app.state.server`` (a ServerState), created in the lifespan and passed to routes through the
request: no module globals, so two apps (two tests) in one process never share a queue.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from difflab.serve.catalog import Catalog
from difflab.serve.config import ServeConfig
from difflab.serve.errors import error_response, install_error_handlers
from difflab.serve.queue import JobStore
from difflab.serve.security import BodyTooLarge, SecurityMiddleware
from difflab.serve.worker import Worker

log = logging.getLogger("difflab.serve")


@dataclass
class ServerState:
    config: ServeConfig
    store: JobStore
    worker: Worker
    catalog: Catalog
    requeued_at_start: int = 0
    a1111_options: dict[str, Any] = field(default_factory=dict)  # what POST /sdapi/v1/options set


def server_of(request: Request) -> ServerState:
    return request.app.state.server


class DataDirLocked(ValueError):
    """Another server holds this data folder."""


def _lock_data_dir(data_dir: Path):
    """An exclusive lock on DATA_DIR/server.lock for the server's lifetime. Two servers on one queue would each
    re-queue the other's running job at startup and run it twice. The OS drops the lock when the process dies,
    even by kill -9, so a crash never leaves a stale lock."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one server per data folder is then the user's job
        return None
    handle = open(data_dir / "server.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise DataDirLocked(f"data_dir: {data_dir} is in use by another difflab server") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def default_lora_dir() -> Path:
    try:
        from difflab.engine.lora import lora_dir
    except ImportError:  # an engine without LoRA support
        return Path("loras")
    return lora_dir()


def create_app(config: ServeConfig, *, cache=None, lock_data_dir: bool = True) -> FastAPI:
    """The application for ``config``. ``cache``: a PipelineCache to share (tests); a new one by default.
    ``lock_data_dir=False`` when the caller already holds the data folder's lock (``serve``)."""
    from difflab import __version__
    from difflab.serve import a1111, a1111_img2img, routes

    config.data_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        lock = _lock_data_dir(config.data_dir) if lock_data_dir else None
        store = JobStore(config.database)
        requeued = store.recover()  # before the worker starts: nothing is really running yet
        if requeued:
            log.warning("re-queued %d job(s) that were running when the server last stopped", requeued)
        worker = Worker(store, config.images_dir, cache=cache, preview_every=config.preview_every,
                        preview_max_side=config.preview_max_side,
                        batch_max_images=config.batch_max_images if config.batch else 1)
        catalog = Catalog(config.models_dir, config.data_dir / "inputs", config.loras_dir or default_lora_dir())
        app.state.server = ServerState(config, store, worker, catalog, requeued,
                                       {"sd_model_checkpoint": config.default_model})
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            store.close()
            if lock is not None:
                lock.close()

    app = FastAPI(
        title="difflab", version=__version__, lifespan=lifespan,
        description="Text-to-image generation over difflab's engine: a persistent job queue (`/v1`) and "
                    "AUTOMATIC1111-compatible endpoints (`/sdapi/v1`). Request bodies are difflab's "
                    "GenerationRequest, the same as `difflab generate`'s options.",
    )
    install_error_handlers(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, error: BodyTooLarge):
        return error_response(413, "too_large", f"the request body is larger than the server's limit of "
                                                f"{config.max_body_bytes} bytes")

    app.include_router(routes.router)
    app.include_router(a1111.router)
    app.include_router(a1111_img2img.router)
    from difflab.serve.a1111_extras import router as a1111_extras_router  # the rest of /sdapi/v1 (issue 22)
    app.include_router(a1111_extras_router)
    if config.ui:
        from difflab.serve.ui import gradio_available, mount_ui

        if gradio_available():
            app = mount_ui(app)
        else:
            log.warning("the web UI needs Gradio (pip install 'difflab[ui]'); serving the API only")
    app.add_middleware(SecurityMiddleware, api_token=config.api_token, max_body_bytes=config.max_body_bytes)
    return app


def serve(config: ServeConfig, *, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (``difflab serve``). A second server on the same data folder
    is refused here, as a one-line error, before uvicorn starts."""
    import uvicorn

    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(config.data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        uvicorn.run(create_app(config, lock_data_dir=False), host=config.host, port=config.port,
                    log_level=log_level, timeout_graceful_shutdown=10)
    finally:
        if lock is not None:
            lock.close()
