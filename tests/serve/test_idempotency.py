"""Idempotency-Key on the generation endpoints: a retry returns the first request's job, never a second drawing;
the key is kept in the queue's SQLite database, so it holds across a restart and between concurrent retries."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

from PIL import Image

from difflab.serve.queue import JobStore, KeyReused
from tests.serve.conftest import MODEL, SMALL

A1111 = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "seed": -1,  # -1: a random seed each call
         "override_settings": {"sd_model_checkpoint": MODEL}}


def png_base64(color: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_v1_retry_with_the_same_key_returns_the_first_job(client) -> None:
    body = {"prompt": "a green star", **SMALL, "seed": 3}
    first = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "retry-1"})
    second = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert second.json() == first.json()
    assert client.get("/v1/jobs").json()["counts"]["done"] == 1
    other = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "retry-2"})
    assert other.json()["id"] != first.json()["id"]  # a new key is a new request


def test_a1111_retries_return_identical_responses_even_with_a_random_seed(client) -> None:
    for route, body in (("/sdapi/v1/txt2img", A1111),
                        ("/sdapi/v1/img2img", {**A1111, "init_images": [png_base64("red")]})):
        first = client.post(route, json=body, headers={"Idempotency-Key": f"k{route}"})
        second = client.post(route, json=body, headers={"Idempotency-Key": f"k{route}"})
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert second.json() == first.json()
    assert client.get("/v1/jobs").json()["counts"]["done"] == 2  # one job per route, not four


def test_a_key_reused_with_another_body_is_refused_naming_the_header(client) -> None:
    body = {"prompt": "a green star", **SMALL, "seed": 3}
    assert client.post("/v1/generate", json=body, headers={"Idempotency-Key": "once"}).status_code == 200
    for route, other in (("/v1/generate", {**body, "seed": 4}), ("/sdapi/v1/txt2img", A1111)):
        response = client.post(route, json=other, headers={"Idempotency-Key": "once"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["fields"][0]["field"] == "Idempotency-Key"
        assert "different request" in response.json()["error"]["message"]
    bad = client.post("/v1/generate", json=body, headers={"Idempotency-Key": "has space"})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "Idempotency-Key"
    assert client.get("/v1/jobs").json()["counts"]["done"] == 1


def test_keys_survive_a_restart_and_concurrent_retries_make_one_job(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    store = JobStore(path)
    results = []

    def submit() -> None:
        results.append(store.submit({"prompt": "x"}, max_queue=10, idempotency=("key", "fingerprint")).id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and store.counts()["queued"] == 1
    store.close()
    reopened = JobStore(path)  # a restart
    assert reopened.job_for_key("key", "fingerprint").id == results[0]
    assert reopened.submit({"prompt": "x"}, max_queue=10, idempotency=("key", "fingerprint")).id == results[0]
    try:
        reopened.submit({"prompt": "y"}, max_queue=10, idempotency=("key", "other"))
    except KeyReused:
        pass
    else:
        raise AssertionError("a key reused with another fingerprint was accepted")
