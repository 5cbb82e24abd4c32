"""The ``/v1`` API: submit GenerationRequests, follow and cancel jobs, fetch PNGs (with their metadata)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from difflab.engine.request import GenerationRequest
from difflab.serve.app import ServerState, server_of
from difflab.serve.catalog import FieldError, without_server_paths
from difflab.serve.errors import error_response, field_errors
from difflab.serve.idempotency import DESCRIPTION as IDEMPOTENCY_KEY_DESCRIPTION
from difflab.serve.idempotency import HEADER as IDEMPOTENCY_HEADER
from difflab.serve.idempotency import IdempotencyKey, idempotency_key, key_reused
from difflab.serve.queue import Job, KeyReused

router = APIRouter()
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_IMAGE_ID = re.compile(r"^([0-9a-f]{32})-(\d{1,3})$")
_POLL_S = 0.05


def _inlined(schema: Any, definitions: Optional[dict] = None) -> Any:
    """A JSON schema with its ``$defs`` written in place of their ``$ref``s: the OpenAPI document has no
    components of those names, so a ``$ref`` to one dangles and schema-driven clients (and fuzzers) cannot
    build a body from it."""
    if definitions is None and isinstance(schema, dict):
        definitions = schema.get("$defs", {})
        schema = {key: value for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
        return {key: _inlined(value, definitions) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


_REQUEST_SCHEMA = _inlined(GenerationRequest.model_json_schema())


# ---- shared by /v1 and /sdapi/v1 ------------------------------------------------------------------------------

def validated_request(server: ServerState, body: Any) -> GenerationRequest:
    """Client body -> GenerationRequest whose names point only into the server's folders (catalog.rewrite),
    with its model found on this machine. Raises FieldError / ValidationError (both answered as 422)."""
    from difflab.engine.registry import resolve_model

    request = GenerationRequest.model_validate(server.catalog.rewrite(body))
    for field in ("model", "refiner"):
        name = getattr(request, field, None)
        if name is not None:
            try:
                resolve_model(name)
            except ValueError as error:
                raise FieldError(field, str(error).removeprefix(f"{field} ")) from None
    return request


async def submit(server: ServerState, body: Any, source: str, idempotency: Optional[IdempotencyKey] = None) -> Job:
    """Validate and queue ``body``; with an idempotency key seen before, the job the first request made."""
    try:
        if idempotency is not None and (earlier := server.store.job_for_key(*idempotency.as_tuple())) is not None:
            return earlier
        request = await run_in_threadpool(validated_request, server, body)  # may touch files: off the event loop
        return server.store.submit(request.model_dump(mode="json"), max_queue=server.config.max_queue,
                                   source=source, idempotency=idempotency and idempotency.as_tuple())
    except KeyReused:
        raise key_reused(idempotency) from None


async def wait_until_finished(server: ServerState, job: Job) -> Job:
    """Wait until the job ends (woken by the store: serve.waiters) or the sync timeout passes (then the job is
    returned unfinished)."""
    from difflab.serve.waiters import FALLBACK_POLL_S

    deadline = time.monotonic() + server.config.sync_timeout_s
    with server.waiters.watch(job.id) as ended:  # registered before the read below: no end can slip between
        while True:
            job = server.store.get(job.id) or job
            remaining = deadline - time.monotonic()
            if job.is_finished or remaining <= 0:
                return job
            try:
                await asyncio.wait_for(ended.wait(), min(remaining, FALLBACK_POLL_S))
            except asyncio.TimeoutError:
                pass


def job_json(server: ServerState, job: Job) -> dict[str, Any]:
    fraction = job.step / job.steps if job.steps else (1.0 if job.state == "done" else 0.0)
    return {
        "id": job.id, "state": job.state, "position": server.store.position(job),
        "progress": {"step": job.step, "steps": job.steps, "fraction": round(fraction, 4)},
        "created": job.created, "started": job.started, "finished": job.finished, "attempts": job.attempts,
        # the stored request names the server's files; the client sees its own names (catalog.client_view)
        "cancel_requested": job.cancel_requested, "error": without_server_paths(job.error),
        "request": server.catalog.client_view(job.request),
        "images": [{"id": f"{job.id}-{image['index']}", "url": f"/v1/images/{job.id}-{image['index']}",
                    "seed": image["seed"], "index": image["index"]} for image in job.images],
        "links": {"self": f"/v1/jobs/{job.id}", "events": f"/v1/jobs/{job.id}/events"},
    }


def failed_job_response(server: ServerState, job: Job) -> JSONResponse:
    """A job that did not finish well, as the error JSON with the job inside."""
    if job.state == "cancelled":
        response = error_response(409, "cancelled", "the job was cancelled")
    elif job.state == "failed" and not (job.error or "").startswith("internal error"):
        # the engine's ValueErrors name the field ("negative_prompt: the flux family has no negative prompt")
        fields = field_errors([{"loc": (), "msg": part} for part in (job.error or "").split("; ")])
        response = error_response(422, "invalid_request", job.error or "", fields)
    elif job.state == "failed":
        response = error_response(500, "job_failed", job.error or "internal error")
    else:  # still queued or running after the sync timeout
        response = JSONResponse(job_json(server, job), status_code=202)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return response
    body = json.loads(response.body)
    body["job"] = job_json(server, job)
    return JSONResponse(body, status_code=response.status_code)


def get_job_or_404(server: ServerState, job_id: str) -> Job:
    job = server.store.get(job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


# ---- routes ---------------------------------------------------------------------------------------------------

@router.post(
    "/v1/generate", tags=["jobs"], status_code=200,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}},
    responses={202: {"description": "queued (async=true, or the sync wait timed out)"},
               422: {"description": "a field is invalid; the error names it"},
               429: {"description": "the queue is full; see Retry-After"}},
)
async def generate(request: Request, body: dict[str, Any] = Body(...),
                   async_: bool = Query(False, alias="async", description="return the job at once (202)"),
                   key: Optional[str] = Header(None, alias=IDEMPOTENCY_HEADER,
                                               description=IDEMPOTENCY_KEY_DESCRIPTION)):
    """Queue a GenerationRequest. By default waits and returns the finished job with its image URLs."""
    server = server_of(request)
    job = await submit(server, body, "v1", idempotency_key(key, "/v1/generate", body))
    if async_:
        return JSONResponse(job_json(server, job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})
    job = await wait_until_finished(server, job)
    if job.state == "done":
        return job_json(server, job)
    return failed_job_response(server, job)


@router.get("/v1/jobs", tags=["jobs"])
async def list_jobs(request: Request, state: Optional[str] = Query(None, pattern="^(queued|running|done|failed|cancelled)$"),
                    limit: int = Query(50, ge=1, le=1000)):
    """Jobs, newest first."""
    server = server_of(request)
    return {"jobs": [job_json(server, job) for job in server.store.jobs(state=state, limit=limit)],
            "counts": server.store.counts()}


@router.get("/v1/jobs/{job_id}", tags=["jobs"])
async def get_job(request: Request, job_id: str):
    server = server_of(request)
    return job_json(server, get_job_or_404(server, job_id))


@router.delete("/v1/jobs/{job_id}", tags=["jobs"])
async def cancel_job(request: Request, job_id: str):
    """Cancel a queued job (at once) or a running one (at its next step, answered 202)."""
    server = server_of(request)
    job = get_job_or_404(server, job_id)
    if job.state in ("done", "failed"):
        return error_response(409, "conflict", f"the job has already {'finished' if job.state == 'done' else 'failed'}")
    job = server.store.cancel(job_id)
    return JSONResponse(job_json(server, job), status_code=202 if job.state == "running" else 200)


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_events(request: Request, job_id: str):
    """Server-sent events: ``progress`` after each step, then one of ``done``, ``failed``, ``cancelled``. When the
    server makes previews (``--preview-every N``), a progress event that comes with a new one carries it as
    ``preview``: ``{"step", "width", "height", "format": "png", "image": <base64 PNG>}``, a VAE decode of the
    current denoised estimate of the job's first image."""
    server = server_of(request)
    get_job_or_404(server, job_id)

    async def stream() -> AsyncIterator[str]:
        last, sent_preview, quiet_since = None, None, time.monotonic()
        while True:
            job = server.store.get(job_id)
            preview = None if job.is_finished else server.worker.previews.latest(job_id)
            snapshot = (job.state, job.step, job.steps, preview.step if preview else None)
            if snapshot != last:
                event = job.state if job.is_finished else "progress"
                data = job_json(server, job)
                if preview is not None and preview.step != sent_preview:  # each preview is sent once
                    data["preview"], sent_preview = preview.to_json(), preview.step
                yield f"event: {event}\ndata: {json.dumps(data)}\n\n"
                last, quiet_since = snapshot, time.monotonic()
                if job.is_finished:
                    return
            elif time.monotonic() - quiet_since > 15:  # a comment line keeps proxies from closing the stream
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(_POLL_S * 2)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/images/{image_id}", tags=["images"], response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "PNG with A1111 parameters and the "
                                                                            "difflab JSON record"}})
async def get_image(request: Request, image_id: str):
    server = server_of(request)
    match = _IMAGE_ID.match(image_id)
    job = server.store.get(match.group(1)) if match else None
    image = next((item for item in (job.images if job else []) if item["index"] == int(match.group(2))), None)
    if image is None:
        raise HTTPException(404, f"no image {image_id!r}")
    # the file name comes from the job record the worker wrote, never from the URL
    return FileResponse(server.config.images_dir / image["file"], media_type="image/png", filename=image["file"])


@router.post("/v1/inputs", tags=["images"], status_code=201,
             openapi_extra={"requestBody": {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}})
async def upload_input(request: Request):
    """Upload an image (the raw bytes as the body) for ``init_image`` or ``mask``; returns its name."""
    from difflab.serve.inputs import store_image

    server = server_of(request)
    data = await request.body()
    stored = await run_in_threadpool(store_image, server.catalog.inputs_dir, "body", data)
    return JSONResponse({"name": stored.name, "width": stored.width, "height": stored.height}, status_code=201)


@router.get("/v1/models", tags=["catalog"])
async def list_models(request: Request):
    """Presets and the server's model folders; ``available`` says whether the weights are on this machine."""
    return {"models": await run_in_threadpool(model_entries, server_of(request))}


def model_entries(server: ServerState) -> list[dict[str, Any]]:
    from difflab.engine.registry import PRESETS, resolve_model

    entries = []
    for name, preset in PRESETS.items():
        entries.append({"name": name, "kind": "preset", "family": preset.family, "width": preset.width,
                        "height": preset.height, "steps": preset.steps, "guidance": preset.guidance,
                        "scheduler": preset.scheduler, "notes": preset.notes, "available": _available(name)})
    for name, path in server.catalog.folder_models().items():
        try:
            model = resolve_model(str(path))
        except ValueError:
            continue
        entries.append({"name": name, "kind": "folder", "family": model.family, "width": model.width,
                        "height": model.height, "steps": model.steps, "guidance": model.guidance,
                        "scheduler": model.scheduler, "notes": "", "available": True})
    return entries


def _available(name: str) -> bool:
    from difflab.engine.registry import resolve_model

    try:
        resolve_model(name)
        return True
    except ValueError:
        return False


@router.get("/v1/loras", tags=["catalog"])
async def list_loras(request: Request):
    """LoRAs in the server's LoRA folder; a request names them as ``loras: ["NAME:WEIGHT", ...]``."""
    return {"loras": [{"name": name} for name in server_of(request).catalog.loras()]}


@router.get("/v1/schedulers", tags=["catalog"])
async def list_schedulers():
    """A1111 sampler names (what ``scheduler`` accepts) with their aliases and diffusers classes."""
    from difflab.engine.schedulers import SAMPLER_SPECS

    return {"schedulers": [{"name": spec.name, "aliases": list(spec.aliases), "diffusers": spec.scheduler,
                            "options": spec.options} for spec in SAMPLER_SPECS]}


@router.get("/v1/health", tags=["server"])
async def health(request: Request):
    server = server_of(request)
    return {"status": "ok" if server.worker.alive else "worker_stopped", "worker_alive": server.worker.alive,
            "jobs": server.store.counts(), "max_queue": server.config.max_queue,
            "requeued_at_start": server.requeued_at_start}
