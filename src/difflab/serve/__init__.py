"""``difflab serve``: an HTTP API over the engine, with a job queue that survives restarts.

The pieces, one concept per module:

- ``config``   ServeConfig: where data lives, limits, the API token; the bind-address rule
- ``queue``    JobStore: jobs in SQLite (WAL), their states, ordering and bounds
- ``worker``   Worker: the one thread that owns the pipelines and runs jobs in order
- ``catalog``  which models a client may name, and the rule that request paths stay inside their folders
- ``security`` bearer token and request-size limits (ASGI middleware)
- ``errors``   every error as JSON naming the field
- ``routes``   the ``/v1`` API;  ``a1111`` the AUTOMATIC1111-compatible ``/sdapi/v1`` endpoints
- ``app``      create_app(config): the FastAPI application that ties them together

Only ``engine`` touches diffusers; this package speaks GenerationRequest. FastAPI and uvicorn are imported here
and never by ``difflab generate``.
"""
