"""create_app(config): the FastAPI application — the /v1 API, the A1111 endpoints, one worker, one queue.

State lives on ``app.state.server`` (a ServerState), created in the lifespan and passed to routes through the
request: no module globals, so two apps (two tests) in one process never share a queue.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from difflab.io.locks import ExclusiveFileLock, LockHeld
from difflab.serve.catalog import Catalog
from difflab.serve.config import ServeConfig
from difflab.serve.errors import error_response, install_error_handlers
from difflab.serve.queue import JobStore
from difflab.serve.retention import sweep
from difflab.serve.security import BodyTooLarge, SecurityMiddleware
from difflab.serve.waiters import JobWaiters
from difflab.serve.worker import Worker

log = logging.getLogger("difflab.serve")
DOCS_PATH = "/docs"
DOCS_STATIC_PATH = "/docs-static"  # Swagger UI's and ReDoc's files, from the fastapi-offline package


@dataclass
class ServerState:
    config: ServeConfig
    store: JobStore
    worker: Worker
    catalog: Catalog
    requeued_at_start: int = 0
    a1111_options: dict[str, Any] = field(default_factory=dict)  # what POST /sdapi/v1/options set
    waiters: JobWaiters = field(default_factory=JobWaiters)  # synchronous requests waiting for their job


def server_of(request: Request) -> ServerState:
    return request.app.state.server


class DataDirLocked(ValueError):
    """Another server holds this data folder."""


def _lock_data_dir(data_dir: Path) -> ExclusiveFileLock:
    """An exclusive lock on DATA_DIR/server.lock for the server's lifetime. Two servers on one queue would each
    re-queue the other's running job at startup and run it twice. The OS drops the lock when the process dies,
    even by kill -9, so a crash never leaves a stale lock (io.locks: the same on Windows)."""
    try:
        return ExclusiveFileLock(data_dir / "server.lock").acquire()
    except LockHeld:
        raise DataDirLocked(f"data_dir: {data_dir} is in use by another difflab server") from None


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
        policy = config.retention
        if cache is None:  # engine/backends: torch (its U-Net compiled with --compile) or OpenVINO copies
            from difflab.engine.backends import choose_backend, pipeline_cache

            worker_cache = pipeline_cache(choose_backend(config.backend, config.precision), compile=config.compile)
        else:
            worker_cache = cache
        worker = Worker(store, config.images_dir, cache=worker_cache, preview_every=config.preview_every,
                        preview_max_side=config.preview_max_side,
                        batch_max_images=config.batch_max_images if config.batch else 1,
                        housekeeping=partial(sweep, store, config.images_dir, config.inputs_dir, policy),
                        housekeeping_every_s=policy.every_s)
        catalog = Catalog(config.models_dir, config.inputs_dir, config.loras_dir or default_lora_dir())
        app.state.server = ServerState(config, store, worker, catalog, requeued,
                                       {"sd_model_checkpoint": config.default_model})
        store.add_finish_listener(app.state.server.waiters.job_finished)
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            store.close()
            if lock is not None:
                lock.release()

    app = _new_app(
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
    app.state.ui_path = None
    from difflab.serve.a1111_extras import router as a1111_extras_router  # the rest of /sdapi/v1 (issue 22)
    app.include_router(a1111_extras_router)
    from difflab.serve.a1111_controlnet import router as controlnet_router  # /controlnet/detect: the UI's map preview
    app.include_router(controlnet_router)
    if config.ui:
        from difflab.serve.ui import UI_PATH, gradio_available, mount_ui

        if gradio_available():
            app = mount_ui(app)
            app.state.ui_path = f"{UI_PATH}/"
        else:
            log.warning("the web UI needs Gradio (pip install 'difflab[ui]'); serving the API only")

    @app.get("/", include_in_schema=False)
    async def _root():
        """A browser pointed at the server lands on something useful: the UI when mounted, else the API docs."""
        return RedirectResponse(app.state.ui_path or DOCS_PATH)

    app.add_middleware(SecurityMiddleware, api_token=config.api_token, max_body_bytes=config.max_body_bytes)
    return app


def _new_app(**settings: Any) -> FastAPI:
    """FastAPI whose ``/docs`` (Swagger UI) and ``/redoc`` load their scripts and styles from the fastapi-offline
    package, served by this server, instead of from a CDN: the docs work on a machine with no network."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        log.warning("fastapi-offline is not installed, so /docs loads Swagger UI from a CDN "
                    "(pip install 'difflab[serve]')")
        return FastAPI(**settings)
    # validatorUrl None: Swagger UI would otherwise send the schema to validator.swagger.io for a badge
    return FastAPIOffline(docs_url=DOCS_PATH, static_url=DOCS_STATIC_PATH,
                          swagger_ui_parameters={"validatorUrl": None}, **settings)


def start_banner(config: ServeConfig, port: int, ui_path: Optional[str]) -> str:
    """What ``difflab serve`` prints once it listens: where the API, its docs and the UI are."""
    host = config.host
    if host in ("0.0.0.0", "::", ""):  # every interface: this machine's name works from elsewhere
        host, where = "localhost", f" (listening on all interfaces, {config.host})"
    else:
        where = ""
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    lines = [f"difflab serve is running{where}; Ctrl+C stops it",
             f"  API        {base}/v1   (A1111: {base}/sdapi/v1)",
             f"  API docs   {base}{DOCS_PATH}"]
    if ui_path:
        lines.append(f"  web UI     {base}{ui_path}")
    return "\n".join(lines)


def serve(config: ServeConfig, *, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted (``difflab serve``). A second server on the same data folder
    is refused here, as a one-line error, before uvicorn starts."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:  # listening now (after a bind failure there is nothing to announce)
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else config.port
                print(start_banner(config, port, app.state.ui_path), flush=True)

    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(config.data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(config, lock_data_dir=False)
        Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                              timeout_graceful_shutdown=10)).run()
    finally:
        lock.release()
