"""JobStore: the server's job queue, persisted in SQLite so that a restart, even ``kill -9``, loses nothing.

A job moves queued -> running -> done | failed | cancelled. Every transition is one SQLite transaction, so after
a crash each job is in exactly one state: queued jobs stay queued, and the one that was running is put back in
the queue by ``recover()`` (its images are written under the job's id, so a re-run replaces the partial output of
the first attempt instead of adding a second copy: each job completes exactly once).

Why SQLite in WAL mode: readers (status requests, progress streams) never block the worker's writes, and a
commit is durable against a killed process with ``synchronous=NORMAL`` (only a power loss can roll back the
last commits, which is acceptable for a queue). ``BEGIN IMMEDIATE`` takes the write lock up front, so the
"count, then insert" of ``submit`` and the "pick, then mark running" of ``claim_next`` are atomic.

Beside the jobs: ``idempotency_keys`` (serve.idempotency), checked and written in ``submit``'s transaction; and
finish listeners, told after the commit that ends a job (serve.waiters wakes the requests waiting for it).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,      -- submission order: the worker takes the lowest queued seq
    id TEXT NOT NULL UNIQUE,                    -- random hex: ids cannot be guessed or enumerated
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    request TEXT NOT NULL,                      -- GenerationRequest as JSON
    source TEXT NOT NULL DEFAULT 'v1',          -- which API submitted it ('v1', 'a1111')
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    steps INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,        -- > 1 when a restart re-ran the job
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    images TEXT NOT NULL DEFAULT '[]'           -- JSON list of {"file", "seed", "index"}
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,                       -- the client's Idempotency-Key header
    fingerprint TEXT NOT NULL,                  -- route and body it came with (serve.idempotency.fingerprint)
    job_id TEXT NOT NULL,                       -- the job the first request made; a retry answers with it
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_by_job ON idempotency_keys (job_id);
"""


class KeyReused(Exception):
    """An idempotency key that came before with another request (serve.idempotency turns it into a 422)."""


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, limit: int):
        super().__init__(f"the queue is full ({limit} jobs waiting); retry after {retry_after} s")
        self.retry_after = retry_after
        self.limit = limit


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    state: str
    request: dict[str, Any]
    source: str
    created: float
    started: Optional[float]
    finished: Optional[float]
    step: int
    steps: int
    attempts: int
    cancel_requested: bool
    error: Optional[str]
    images: list[dict[str, Any]]

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED_STATES

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            seq=row["seq"], id=row["id"], state=row["state"], request=json.loads(row["request"]),
            source=row["source"], created=row["created"], started=row["started"], finished=row["finished"],
            step=row["step"], steps=row["steps"], attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]), error=row["error"], images=json.loads(row["images"]),
        )


class JobStore:
    """All job state. Thread-safe: one connection, used under a lock (SQLite serialises writers anyway)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each method says BEGIN IMMEDIATE where it needs one
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # called with a job's id when it reaches a finished state, after the commit, in whichever thread made
        # the change: what wakes a synchronous request the moment its job ends (serve.waiters)
        self._finish_listeners: list[Callable[[str], None]] = []
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._changed.notify_all()

    def add_finish_listener(self, listener: Callable[[str], None]) -> None:
        """``listener(job_id)`` after every commit that moves a job to done, failed or cancelled."""
        self._finish_listeners.append(listener)

    def _finished(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for listener in self._finish_listeners:
                listener(job_id)

    # ---- submitting and reading -------------------------------------------------------------------------------

    def submit(self, request: dict[str, Any], *, max_queue: int, source: str = "v1",
               idempotency: Optional[tuple[str, str]] = None) -> Job:
        """Append a queued job, or raise QueueFull when ``max_queue`` jobs are already waiting.

        ``idempotency``: (key, fingerprint). A key seen before with the same fingerprint returns that first job
        instead of adding one (checked in the same transaction as the insert, so two concurrent retries make one
        job); with another fingerprint it raises KeyReused."""
        job_id = uuid.uuid4().hex
        with self._transaction() as db:
            if idempotency is not None:
                existing = self._job_for_key(db, *idempotency)
                if existing is not None:
                    return existing
            waiting = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= max_queue:
                raise QueueFull(self._retry_after(db, waiting), max_queue)
            now = time.time()
            db.execute("INSERT INTO jobs (id, state, request, source, created) VALUES (?, 'queued', ?, ?, ?)",
                       (job_id, json.dumps(request, sort_keys=True), source, now))
            if idempotency is not None:
                db.execute("INSERT INTO idempotency_keys (key, fingerprint, job_id, created) VALUES (?, ?, ?, ?)",
                           (*idempotency, job_id, now))
        return self.get(job_id)

    def job_for_key(self, key: str, fingerprint: str) -> Optional[Job]:
        """The job an earlier request with this idempotency key made (None: the key is new); KeyReused when that
        request had another fingerprint."""
        with self._lock:
            return self._job_for_key(self._db, key, fingerprint)

    def _job_for_key(self, db: sqlite3.Connection, key: str, fingerprint: str) -> Optional[Job]:
        row = db.execute("SELECT j.*, k.fingerprint AS key_fingerprint FROM idempotency_keys k JOIN jobs j "
                         "ON j.id = k.job_id WHERE k.key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row["key_fingerprint"] != fingerprint:
            raise KeyReused(key)
        return Job.from_row(row)

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def jobs(self, *, state: Optional[str] = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq DESC LIMIT ?",
                                        (state, limit)).fetchall()
        return [Job.from_row(row) for row in rows]

    def position(self, job: Job) -> Optional[int]:
        """How many queued jobs run before this one (0 = next); None unless the job is queued."""
        if job.state != "queued":
            return None
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq < ?",
                                    (job.seq,)).fetchone()[0]

    def queued(self) -> int:
        """How many jobs wait (an index range: cheap however long the history)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {row[0]: row[1] for row in rows}

    def notify(self) -> None:
        """Wake every ``wait_for_change`` (used to stop the worker)."""
        with self._changed:
            self._changed.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        """Block until any job changes in this process, or ``timeout`` seconds pass (the worker's idle wait)."""
        with self._changed:
            self._changed.wait(timeout)

    def _retry_after(self, db: sqlite3.Connection, waiting: int) -> int:
        """Seconds until about one queue slot frees: the mean duration of the last 20 finished jobs, at least 1."""
        rows = db.execute("SELECT finished - started FROM jobs WHERE state = 'done' AND started IS NOT NULL "
                          "ORDER BY seq DESC LIMIT 20").fetchall()
        mean = sum(row[0] for row in rows) / len(rows) if rows else 5.0
        return int(min(3600, max(1, math.ceil(mean))))

    # ---- the worker's side ------------------------------------------------------------------------------------

    def recover(self) -> int:
        """At startup: jobs left 'running' by a crash go back to the queue (or to 'cancelled' if that had been
        asked for). Returns how many were re-queued. Call before the worker starts."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE state = 'running' "
                       "AND cancel_requested = 1", (time.time(),))
            return db.execute("UPDATE jobs SET state = 'queued', step = 0 WHERE state = 'running'").rowcount

    def claim_next(self) -> Optional[Job]:
        """The oldest queued job, now marked running; None when the queue is empty."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, step = 0, attempts = attempts + 1 "
                       "WHERE id = ?", (time.time(), row["id"]))
        return self.get(row["id"])

    def claim_batch(self, key: Callable[[dict[str, Any]], Optional[str]], images: Callable[[dict[str, Any]], int],
                    max_images: int) -> list[Job]:
        """The oldest queued job and the queued jobs right behind it whose ``key(request)`` equals its key (None
        never matches), while their ``images(request)`` add up to at most ``max_images``; all now marked running,
        in queue order. [] when the queue is empty. Only a contiguous run is taken, so no job overtakes another."""
        with self._transaction() as db:
            rows = db.execute("SELECT id, request FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT ?",
                              (max(1, max_images),)).fetchall()
            if not rows:
                return []
            first = json.loads(rows[0]["request"])
            first_key, total, chosen = key(first), images(first), [rows[0]["id"]]
            for row in rows[1:] if first_key is not None else ():
                request = json.loads(row["request"])
                if key(request) != first_key or total + images(request) > max_images:
                    break
                chosen.append(row["id"])
                total += images(request)
            now = time.time()  # one start time: the batch started together
            db.executemany("UPDATE jobs SET state = 'running', started = ?, step = 0, attempts = attempts + 1 "
                           "WHERE id = ?", [(now, job_id) for job_id in chosen])
        return [self.get(job_id) for job_id in chosen]

    def requeue(self, job_id: str) -> None:
        """Put a running job back at its place in the queue (the server is shutting down mid-job)."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'queued', step = 0 WHERE id = ? AND state = 'running'", (job_id,))

    def set_progress(self, job_id: str, step: int, steps: int) -> bool:
        """Record a finished denoising step; returns True when the job has been asked to stop."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET step = ?, steps = ? WHERE id = ?", (step, steps, job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def set_progress_many(self, job_ids: list[str], step: int, steps: int) -> set[str]:
        """``set_progress`` for the jobs of one merged batch, in one transaction; the ids asked to stop."""
        with self._transaction() as db:
            db.executemany("UPDATE jobs SET step = ?, steps = ? WHERE id = ?", [(step, steps, i) for i in job_ids])
            marks = ",".join("?" * len(job_ids))
            rows = db.execute(f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", job_ids).fetchall()
        return {row[0] for row in rows}

    def finish(self, job_id: str, images: list[dict[str, Any]]) -> None:
        self._end(job_id, "done", images=images)

    def fail(self, job_id: str, error: str) -> None:
        self._end(job_id, "failed", error=error)

    def mark_cancelled(self, job_id: str) -> None:
        self._end(job_id, "cancelled")

    def _end(self, job_id: str, state: str, *, images: Optional[list] = None, error: Optional[str] = None) -> None:
        with self._transaction() as db:
            ended = db.execute("UPDATE jobs SET state = ?, finished = ?, images = ?, error = ? WHERE id = ? "
                               "AND state = 'running'",
                               (state, time.time(), json.dumps(images or []), error, job_id)).rowcount
        if ended:
            self._finished([job_id])

    # ---- retention (serve.retention) ---------------------------------------------------------------------------

    def finished_jobs(self) -> list[Job]:
        """Every finished job, the longest finished first."""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE state IN {FINISHED_STATES} "
                                    "ORDER BY finished, seq").fetchall()
        return [Job.from_row(row) for row in rows]

    def delete_finished(self, job_ids: list[str]) -> int:
        """Remove these jobs' rows and idempotency keys; a job that is not finished (any more) is left alone.
        Returns how many rows went."""
        removed = 0
        with self._transaction() as db:
            for start in range(0, len(job_ids), 500):  # SQLite's bound on host parameters
                chunk = job_ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM idempotency_keys WHERE job_id IN ({marks}) AND job_id IN "
                           f"(SELECT id FROM jobs WHERE state IN {FINISHED_STATES})", chunk)
                removed += db.execute(f"DELETE FROM jobs WHERE id IN ({marks}) AND state IN {FINISHED_STATES}",
                                      chunk).rowcount
        return removed

    def job_ids(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT id FROM jobs")}

    def requests(self) -> Iterator[dict[str, Any]]:
        """The request of every job, in any state (what input files are still in use)."""
        with self._lock:
            texts = [row[0] for row in self._db.execute("SELECT request FROM jobs")]
        return (json.loads(text) for text in texts)

    # ---- the client's side ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Optional[Job]:
        """A queued job is cancelled at once; a running one is asked to stop at its next step. None if unknown."""
        with self._transaction() as db:
            cancelled = db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? "
                                   "AND state = 'queued'", (time.time(), job_id)).rowcount
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,))
        if cancelled:
            self._finished([job_id])
        return self.get(job_id)
