"""Idempotency keys: a client that retries a generation request (its connection dropped, it never saw the job id)
sends the same ``Idempotency-Key`` header and gets the first request's job back, finished or still running,
instead of a second drawing.

The key is stored beside its job in the queue's SQLite database (JobStore, table ``idempotency_keys``), so a retry
after a server restart is still recognised, and the check and the insert are one transaction, so two concurrent
retries make one job. A key remembers a fingerprint of the route and body it first came with: the same key with
another body is a client bug (a key reused for a new request), answered 422 naming the header rather than
silently returning a picture of something else. Keys live as long as their job (serve.retention removes both).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from difflab.serve.catalog import FieldError

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")  # a UUID, a ULID, a hash: what clients send; no spaces, no controls
DESCRIPTION = (f"Optional, 1 to {MAX_LENGTH} visible ASCII characters (a UUID, say). A retry with the same key and "
               "body returns the first request's job instead of drawing again; the same key with another body is "
               "refused (422).")


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    fingerprint: str  # sha256 of the route and the canonical JSON body

    def as_tuple(self) -> tuple[str, str]:
        return self.key, self.fingerprint


def idempotency_key(value: Optional[str], route: str, body: Any) -> Optional[IdempotencyKey]:
    """The request's key (None without the header); FieldError naming the header when it is malformed.
    ``body``: the request as the client sent it (A1111's before a seed of -1 is drawn, so a retry matches)."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_LENGTH or not _VISIBLE_ASCII.match(value):
        raise FieldError(HEADER, f"must be 1 to {MAX_LENGTH} visible ASCII characters (no spaces); got "
                                 f"{value[:40]!r}{'...' if len(value) > 40 else ''}")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return IdempotencyKey(value, hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest())


def key_reused(key: IdempotencyKey) -> FieldError:
    return FieldError(HEADER, f"{key.key!r} was already used with a different request (route or body); a retry must "
                              "repeat the first request exactly, and a new request needs a new key")
