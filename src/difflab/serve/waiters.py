"""JobWaiters: wake a synchronous request the moment its job ends, instead of polling the queue.

A synchronous request (``POST /v1/generate``, ``/sdapi/v1/txt2img``) waits on an ``asyncio.Event`` of its event
loop; the JobStore calls ``job_finished`` from whichever thread ended the job (the worker's, usually), which sets
the event through ``loop.call_soon_threadsafe``: asyncio objects are not thread-safe, and the loop must be woken
from its own thread. Polling every 50 ms cost a tiny job up to 50 ms each (bench/serve.py: one client at 0.63x of
the in-process engine). The waiter still re-reads the store every ``FALLBACK_POLL_S`` in case a wake-up is ever
missed (a job ended by another process on the same database, which the lock forbids, or a bug): slow, not stuck.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager
from typing import Iterator

FALLBACK_POLL_S = 2.0


class JobWaiters:
    def __init__(self) -> None:
        self._events: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``job_id`` ends. Register before reading the job's state, so that an end between
        the read and the wait still wakes it. Call in the event loop."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._events.setdefault(job_id, []).append(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiting = self._events.get(job_id, [])
                if entry in waiting:
                    waiting.remove(entry)
                if not waiting:
                    self._events.pop(job_id, None)

    def job_finished(self, job_id: str) -> None:
        """Wake every request waiting on ``job_id``; safe from any thread."""
        with self._lock:
            waiting = list(self._events.get(job_id, ()))
        for loop, event in waiting:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed (the server is stopping): nobody left to wake
                pass
