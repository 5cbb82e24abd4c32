"""``difflab serve``: an HTTP API over the engine, with a job queue that survives restarts.

The pieces, one concept per module:

- ``config``   ServeConfig: where data lives, limits, the API token; the bind-address rule
- ``queue``    JobStore: jobs in SQLite (WAL), their states, ordering and bounds
- ``worker``   Worker: the one thread that owns the pipelines and runs jobs in order (with ``batch``, runs of
  compatible queued jobs as one pipeline call: engine.merged)
- ``previews`` PreviewBoard: each running job's latest step preview, for the progress stream
- ``waiters``  JobWaiters: wakes a synchronous request the moment its job ends (no polling)
- ``idempotency`` the ``Idempotency-Key`` header: a retry returns the first request's job
- ``retention`` what is removed, and when, so that the data folder does not grow without end
- ``catalog``  which models a client may name, and the rule that request paths stay inside their folders
- ``security`` bearer token and request-size limits (ASGI middleware)
- ``errors``   every error as JSON naming the field
- ``inputs``   uploaded images (raw or base64) stored in the inputs folder under content-hash names
- ``routes``   the ``/v1`` API;  ``a1111`` the AUTOMATIC1111-compatible ``/sdapi/v1`` endpoints, with
  ``a1111_img2img`` for ``/sdapi/v1/img2img`` (init images and masks as base64)
- ``app``      create_app(config): the FastAPI application that ties them together

Only ``engine`` touches diffusers; this package speaks GenerationRequest. FastAPI and uvicorn are imported here
and never by ``difflab generate``.
"""
