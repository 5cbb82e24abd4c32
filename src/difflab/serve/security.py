"""Bearer-token check and request-size limit, as one ASGI middleware in front of every route.

Plain ASGI rather than FastAPI dependencies so that nothing, including the OpenAPI page and mounted apps, can be
reached without the token, and so that an oversized body is refused while it streams in, before it is buffered.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Optional

PUBLIC_PATHS = ("/v1/health",)  # liveness probes carry no token; health reveals only counts


class BodyTooLarge(Exception):
    pass


class SecurityMiddleware:
    def __init__(self, app: Callable, *, api_token: Optional[str], max_body_bytes: int):
        self.app = app
        self.api_token = api_token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.api_token and scope["path"] not in PUBLIC_PATHS and not self._authorized(headers):
            return await _json(send, 401, "unauthorized", "missing or wrong API token: send "
                               "'Authorization: Bearer <token>'", {"www-authenticate": "Bearer"})
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _json(send, 413, "too_large", self._too_large())

        received = 0
        started = overflowed = False

        async def limited_receive() -> dict:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # a chunked body with no (or a false) Content-Length
                    overflowed = True
                    raise BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if overflowed:
                # whatever the app answers to a body cut short (FastAPI: 400 "error parsing the body"), the client
                # gets the real reason instead
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _json(send, 413, "too_large", self._too_large())
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            pass
        if overflowed and not started:
            await _json(send, 413, "too_large", self._too_large())

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how many leading characters were right
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_token.encode())

    def _too_large(self) -> str:
        return f"the request body is larger than the server's limit of {self.max_body_bytes} bytes"


async def _json(send: Callable, status: int, kind: str, message: str, extra: Optional[dict] = None) -> None:
    body = json.dumps({"error": {"status": status, "type": kind, "message": message}}).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.encode(), value.encode()) for key, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
