"""JobStore on a real SQLite file: order, states, bounds, crash recovery, and no job handed out twice."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from difflab.serve.queue import JobStore, QueueFull


def request(i: int) -> dict:
    return {"prompt": f"job {i}", "seed": i}


def test_jobs_run_in_submission_order_and_finish_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    ids = [store.submit(request(i), max_queue=10).id for i in range(3)]
    assert [store.position(store.get(i)) for i in ids] == [0, 1, 2]
    first = store.claim_next()
    assert first.id == ids[0] and first.state == "running" and first.attempts == 1
    store.finish(first.id, [{"file": "a.png", "seed": 0, "index": 0}])
    store.finish(first.id, [])  # a second finish of a finished job changes nothing
    assert store.get(first.id).state == "done" and store.get(first.id).images[0]["file"] == "a.png"
    assert store.claim_next().id == ids[1]
    assert store.counts() == {"queued": 1, "running": 1, "done": 1, "failed": 0, "cancelled": 0}


def test_queue_full_raises_with_retry_after(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    for i in range(2):
        store.submit(request(i), max_queue=2)
    with pytest.raises(QueueFull) as error:
        store.submit(request(2), max_queue=2)
    assert error.value.retry_after >= 1 and store.counts()["queued"] == 2
    store.claim_next()  # a running job no longer counts against the bound
    store.submit(request(3), max_queue=2)


def test_cancel_queued_at_once_and_running_at_next_step(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    running, queued = (store.submit(request(i), max_queue=10) for i in range(2))
    store.claim_next()
    assert store.cancel(queued.id).state == "cancelled"
    assert store.cancel(running.id).state == "running"
    assert store.set_progress(running.id, 1, 10) is True  # the worker's step callback sees the request
    assert store.claim_next() is None  # the cancelled job is never handed out


def test_recover_requeues_the_running_job_in_its_place(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = JobStore(path)
    ids = [store.submit(request(i), max_queue=10).id for i in range(3)]
    store.claim_next()
    store.set_progress(ids[0], 3, 10)
    # a crash: the connection goes away without any clean-up, as under kill -9
    reopened = JobStore(path)
    assert reopened.get(ids[0]).state == "running"
    assert reopened.recover() == 1
    job = reopened.claim_next()
    assert job.id == ids[0] and job.attempts == 2 and job.step == 0


def test_recover_honours_a_cancel_requested_before_the_crash(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    job = store.submit(request(0), max_queue=10)
    store.claim_next()
    store.cancel(job.id)
    assert store.recover() == 0 and store.get(job.id).state == "cancelled"


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    JobStore(tmp_path / "q.sqlite3")
    assert sqlite3.connect(tmp_path / "q.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_stores_on_one_file_never_claim_the_same_job(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE makes pick-and-mark atomic even across connections (as two processes would have)."""
    path = tmp_path / "q.sqlite3"
    stores = [JobStore(path), JobStore(path)]
    submitted = {stores[0].submit(request(i), max_queue=1000).id for i in range(60)}
    claimed: list[str] = []

    def drain(store: JobStore) -> None:
        while (job := store.claim_next()) is not None:
            claimed.append(job.id)
            store.finish(job.id, [])

    threads = [threading.Thread(target=drain, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(submitted)  # every job once: none lost, none twice


def test_claim_batch_takes_a_contiguous_run_of_equal_keys_up_to_the_image_limit(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    key = lambda request: None if request["group"] is None else str(request["group"])  # noqa: E731
    images = lambda request: request["n"]  # noqa: E731
    groups = [("a", 1), ("a", 2), ("a", 1), ("b", 1), ("a", 1), (None, 1), (None, 1), ("a", 4), ("a", 1)]
    ids = [store.submit({"group": g, "n": n}, max_queue=100).id for g, n in groups]
    claims = []
    while batch := store.claim_batch(key, images, max_images=3):
        assert all(job.state == "running" and job.attempts == 1 for job in batch)
        assert len({job.started for job in batch}) == 1  # started together
        claims.append([ids.index(job.id) for job in batch])
        for job in batch:
            store.finish(job.id, [])
    # a, a (3 images: full), then a alone (b breaks the run), b, a, None never merges, 4 images alone, then a
    assert claims == [[0, 1], [2], [3], [4], [5], [6], [7], [8]]
    assert store.claim_batch(key, images, max_images=3) == []


def test_set_progress_many_reports_the_jobs_asked_to_stop(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    ids = [store.submit(request(i), max_queue=10).id for i in range(3)]
    store.claim_batch(lambda r: "same", lambda r: 1, max_images=3)
    store.cancel(ids[1])
    assert store.set_progress_many(ids, 2, 10) == {ids[1]}
    assert [(store.get(i).step, store.get(i).steps) for i in ids] == [(2, 10)] * 3
