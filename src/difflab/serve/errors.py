"""Every error the server returns is JSON of one shape, naming the field when a field is at fault:

    {"error": {"status": 422, "type": "invalid_request", "message": "steps: ...; width: ...",
               "fields": [{"field": "steps", "message": "..."}, {"field": "width", "message": "..."}]}}

The message is the same text ``difflab generate`` prints for the same mistake (engine.request's
describe_validation_error), so the CLI and the API explain an error the same way.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from difflab.serve.catalog import FieldError, without_server_paths
from difflab.serve.queue import QueueFull

_NAMED = re.compile(r"^(\w+): (.*)$", re.S)
_UNPARSABLE_BODY = "There was an error parsing the body"  # fastapi.routing's HTTPException(400) detail


def error_response(status: int, kind: str, message: str, fields: Optional[list[dict]] = None,
                   headers: Optional[dict[str, str]] = None) -> JSONResponse:
    # every error passes here: no answer shows the server's own paths (issue 19)
    body: dict[str, Any] = {"status": status, "type": kind, "message": without_server_paths(message)}
    if fields:
        body["fields"] = [{**item, "message": without_server_paths(item["message"])} for item in fields]
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def field_errors(items: Iterable[dict]) -> list[dict[str, str]]:
    """pydantic error items -> [{"field", "message"}]; a model-level error ("prompt: must not be empty") is
    attributed to the field its message names."""
    fields = []
    for item in items:
        loc = [str(part) for part in item.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        field = ".".join(loc)
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            message = "is not a known field"
        named = _NAMED.match(message)
        if not field and named:
            field, message = named.groups()
        elif named and named.group(1) == field:
            message = named.group(2)
        fields.append({"field": field or "body", "message": message})
    return fields


def validation_error(error: ValidationError, prefix: str = "") -> JSONResponse:
    """422 for a GenerationRequest (or A1111 body) that failed validation."""
    from difflab.engine.request import describe_validation_error

    fields = field_errors(error.errors())
    for item in fields:
        item["field"] = prefix + item["field"]
    return error_response(422, "invalid_request", describe_validation_error(error), fields)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        invalid_json = [item for item in error.errors() if item.get("type") == "json_invalid"]
        if invalid_json:  # pydantic's loc is ("body", <byte offset>): the field at fault is the body itself
            message = f"is not valid JSON ({invalid_json[0].get('ctx', {}).get('error', 'a syntax error')})"
            return error_response(422, "invalid_json", f"body: {message}", [{"field": "body", "message": message}])
        fields = field_errors(error.errors())
        return error_response(422, "invalid_request", "; ".join(f"{f['field']}: {f['message']}" for f in fields),
                              fields)

    @app.exception_handler(ValidationError)
    async def _model_validation(request: Request, error: ValidationError) -> JSONResponse:
        return validation_error(error)

    @app.exception_handler(FieldError)
    async def _field(request: Request, error: FieldError) -> JSONResponse:
        return error_response(422, "invalid_request", str(error), [{"field": error.field, "message": error.message}])

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return error_response(429, "queue_full", str(error), headers={"Retry-After": str(error.retry_after)})

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == _UNPARSABLE_BODY:  # FastAPI's, e.g. for bytes not UTF-8
            message = "is not valid JSON (it could not be decoded as UTF-8 JSON)"
            return error_response(422, "invalid_json", f"body: {message}", [{"field": "body", "message": message}])
        kind = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
                413: "too_large"}.get(error.status_code, "http_error")
        return error_response(error.status_code, kind, str(error.detail), headers=getattr(error, "headers", None))
