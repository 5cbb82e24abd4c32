"""A real ``difflab serve`` process over real HTTP: kill -9 with jobs in the queue, and many concurrent clients.
Every job must be accounted for: none lost, none run to completion twice."""

from __future__ import annotations

import io
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from tests.serve.conftest import SMALL
from tests.serve.live_server import LiveServer


def wait_all_done(url: str, ids: list[str], timeout: float = 300.0) -> dict[str, dict]:
    deadline, jobs = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        jobs = {job_id: httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json() for job_id in ids}
        if all(job["state"] in ("done", "failed", "cancelled") for job in jobs.values()):
            return jobs
        time.sleep(0.2)
    raise AssertionError(f"unfinished after {timeout} s: {[j['state'] for j in jobs.values()]}")


def test_kill_9_with_queued_jobs_then_restart_completes_each_job_exactly_once(models_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    requests = [{"prompt": "a long one", **SMALL, "steps": 80}] + [
        {"prompt": f"queued {i}", **SMALL, "steps": 3, "n": 1 + i % 2, "seed": i} for i in range(5)]
    with LiveServer(data, models_dir) as server:
        ids = []
        for body in requests:
            response = httpx.post(f"{server.url}/v1/generate?async=true", json=body, timeout=30)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 120
        while httpx.get(f"{server.url}/v1/jobs/{ids[0]}", timeout=10).json()["progress"]["step"] < 1:
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.05)
        server.kill()

    # what the crash left on disk: the first job mid-run, the rest waiting, nothing finished
    with sqlite3.connect(data / "queue.sqlite3") as db:
        states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    assert states[ids[0]] == "running" and all(states[i] == "queued" for i in ids[1:])

    with LiveServer(data, models_dir) as server:
        assert httpx.get(f"{server.url}/v1/health", timeout=10).json()["requeued_at_start"] == 1
        jobs = wait_all_done(server.url, ids)
        assert [jobs[i]["state"] for i in ids] == ["done"] * len(ids)
        assert [jobs[i]["attempts"] for i in ids] == [2] + [1] * (len(ids) - 1)
        finished = [jobs[i]["finished"] for i in ids]
        assert finished == sorted(finished)  # the re-queued job kept its place at the head of the queue
        for job_id, body in zip(ids, requests):
            files = sorted(p.name for p in (data / "images").glob(f"{job_id}-*.png"))
            assert files == sorted(image["file"] for image in _records(data, job_id))
            assert len(files) == body.get("n", 1)  # one set of images, even for the job that ran twice
            image = Image.open(io.BytesIO(httpx.get(f"{server.url}{jobs[job_id]['images'][-1]['url']}").content))
            assert image.text["parameters"].startswith(body["prompt"])
    assert len(list((data / "images").glob("*.png"))) == sum(body.get("n", 1) for body in requests)


def _records(data: Path, job_id: str) -> list[dict]:
    import json

    with sqlite3.connect(data / "queue.sqlite3") as db:
        return json.loads(db.execute("SELECT images FROM jobs WHERE id = ?", (job_id,)).fetchone()[0])


def test_many_concurrent_clients_every_job_accounted_for(models_dir: Path, tmp_path: Path) -> None:
    """16 clients x 2 synchronous jobs against a queue of 4: clients that get 429 wait Retry-After and retry."""
    clients, jobs_each = 16, 2
    refusals = []

    def client(number: int) -> list[tuple[str, str]]:
        done = []
        with httpx.Client(base_url=server.url, timeout=300) as http:
            for j in range(jobs_each):
                prompt = f"client {number} job {j}"
                while True:
                    response = http.post("/v1/generate", json={"prompt": prompt, **SMALL, "steps": 1, "seed": number})
                    if response.status_code != 429:
                        break
                    refusals.append(int(response.headers["retry-after"]))
                    time.sleep(min(0.5, int(response.headers["retry-after"])))  # capped: keep the test short
                assert response.status_code == 200, response.text
                done.append((prompt, response.json()["id"]))
        return done

    with LiveServer(tmp_path / "data", models_dir, "--max-queue", "4") as server:
        with ThreadPoolExecutor(clients) as pool:
            results = [pair for pairs in pool.map(client, range(clients)) for pair in pairs]
        assert len(results) == clients * jobs_each and len({job_id for _, job_id in results}) == len(results)
        listing = httpx.get(f"{server.url}/v1/jobs?limit=1000", timeout=30).json()
        assert listing["counts"] == {"queued": 0, "running": 0, "done": len(results), "failed": 0, "cancelled": 0}
        for prompt, job_id in results:
            job = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30).json()
            assert job["state"] == "done" and job["request"]["prompt"] == prompt and job["attempts"] == 1
        assert len(list((tmp_path / "data" / "images").glob("*.png"))) == len(results)
    assert all(seconds >= 1 for seconds in refusals)
