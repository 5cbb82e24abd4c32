"""The /v1 API through FastAPI's TestClient: a real app, a real SQLite queue, a real worker on the tiny pipeline."""

from __future__ import annotations

import io
import json
import time

import numpy as np
from PIL import Image

from difflab.engine.metadata import parse_parameters
from tests.serve.conftest import MODEL, SMALL


def wait_for(client, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


def png_of(response) -> Image.Image:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_sync_generate_returns_a_png_whose_metadata_regenerates_it(client, pipeline_cache) -> None:
    from difflab.engine.pipeline import run
    from difflab.engine.request import GenerationRequest

    response = client.post("/v1/generate", json={"prompt": "a red circle", "seed": 7, "n": 2, **SMALL})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "done" and [image["seed"] for image in job["images"]] == [7, 8]
    image = png_of(client.get(job["images"][1]["url"]))
    prompt, _, settings = parse_parameters(image.text["parameters"])
    assert prompt == "a red circle" and settings["Seed"] == "8" and settings["Steps"] == "2"
    record = json.loads(image.text["difflab"])
    assert record["image_index"] == 1 and record["request"]["model"].endswith("pipeline")
    # the independent reference: the engine run directly on the request recorded in the PNG
    replayed = run(GenerationRequest(**record["request"]), pipeline_cache).images[record["image_index"]]
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(replayed))


def test_async_job_lifecycle_with_progress_events(client) -> None:
    blocker = client.post("/v1/generate?async=true", json={"prompt": "a blue square", **SMALL, "steps": 20}).json()
    response = client.post("/v1/generate?async=true", json={"prompt": "a green star", **SMALL, "steps": 6})
    assert response.status_code == 202 and response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    job = response.json()
    assert job["state"] in ("queued", "running") and job["images"] == []
    events = []
    with client.stream("GET", job["links"]["events"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "done" and events[-1][1]["progress"] == {"step": 6, "steps": 6, "fraction": 1.0}
    steps = [data["progress"]["step"] for _, data in events]
    assert steps == sorted(steps) and len(events) >= 2 and all(name == "progress" for name, _ in events[:-1])
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["state"] == "done" and len(done["images"]) == 1 and done["attempts"] == 1
    assert wait_for(client, blocker["id"])["state"] == "done"
    listed = client.get("/v1/jobs?state=done").json()
    assert {blocker["id"], job["id"]} <= {item["id"] for item in listed["jobs"]}


def test_cancel_a_queued_and_a_running_job(client) -> None:
    running = client.post("/v1/generate?async=true", json={"prompt": "a long one", **SMALL, "steps": 400}).json()
    queued = client.post("/v1/generate?async=true", json={"prompt": "never runs", **SMALL}).json()
    wait_for(client, running["id"], states=("running",))
    response = client.delete(f"/v1/jobs/{queued['id']}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    response = client.delete(f"/v1/jobs/{running['id']}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    stopped = wait_for(client, running["id"])
    assert stopped["state"] == "cancelled" and stopped["progress"]["step"] < 400 and stopped["images"] == []
    never = client.get(f"/v1/jobs/{queued['id']}").json()
    assert never["state"] == "cancelled" and never["attempts"] == 0
    assert client.delete(f"/v1/jobs/{'0' * 32}").status_code == 404
    done = client.post("/v1/generate", json={"prompt": "quick", **SMALL}).json()
    conflict = client.delete(f"/v1/jobs/{done['id']}")
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "conflict"


def test_full_queue_answers_429_with_retry_after(make_client) -> None:
    client = make_client(max_queue=2)
    running = client.post("/v1/generate?async=true", json={"prompt": "busy", **SMALL, "steps": 400}).json()
    wait_for(client, running["id"], states=("running",))
    waiting = [client.post("/v1/generate?async=true", json={"prompt": f"wait {i}", **SMALL}) for i in range(2)]
    assert [r.status_code for r in waiting] == [202, 202]
    refused = client.post("/v1/generate?async=true", json={"prompt": "one too many", **SMALL})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "queue_full"
    for job in [running, *(r.json() for r in waiting)]:
        client.delete(f"/v1/jobs/{job['id']}")
    assert client.get("/v1/health").json()["jobs"]["queued"] == 0


def test_bad_input_is_422_json_naming_each_field(client) -> None:
    response = client.post("/v1/generate", json={"prompt": "x", **SMALL, "steps": 0, "width": 30, "colour": "red"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert {f["field"] for f in error["fields"]} == {"steps", "width", "colour"}
    assert "width: must be a multiple of 8" in error["message"]
    assert "is not a known field" in {f["field"]: f["message"] for f in error["fields"]}["colour"]
    empty = client.post("/v1/generate", json={"prompt": "  ", **SMALL}).json()["error"]
    assert empty["fields"] == [{"field": "prompt", "message": "must not be empty"}]
    bad_sampler = client.post("/v1/generate", json={"prompt": "x", **SMALL, "scheduler": "warp"}).json()["error"]
    assert bad_sampler["fields"][0]["field"] == "scheduler" and "DPM++ 2M" in bad_sampler["fields"][0]["message"]
    not_json = client.post("/v1/generate", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["error"]["type"] == "invalid_json"
    assert [f["field"] for f in not_json.json()["error"]["fields"]] == ["body"]  # not a byte offset
    assert client.get("/v1/jobs").json()["counts"]["queued"] == 0  # nothing was queued


def test_paths_in_requests_cannot_leave_the_server_folders(client) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    upload = client.post("/v1/inputs", content=buffer.getvalue()).json()["name"]
    cases = {
        "model": {"model": "/etc"}, "init_image": {"init_image": "/etc/passwd"},
        "loras.0": {"loras": ["../../secret:0.5"]}, "allow_unsafe_pickle": {"allow_unsafe_pickle": True},
        # a relative name would resolve against the server's working folder: control images must be uploads
        "controls.0.image": {"controls": ["canny:pyproject.toml"]},
        "controls.1.image": {"controls": [{"kind": "none", "image": upload}, {"kind": "canny", "image": "/etc/x.png"}]},
        "controls.0.model": {"controls": [{"kind": "canny", "image": upload, "model": "../models/cn"}]},
    }
    for field, change in cases.items():
        response = client.post("/v1/generate", json={"prompt": "x", **SMALL, **change})
        assert response.status_code == 422, (field, response.text)
        assert response.json()["error"]["fields"][0]["field"] == field
    sneaky = client.post("/v1/generate", json={"prompt": "x", **SMALL, "model": "../" + MODEL}).json()["error"]
    assert sneaky["fields"][0]["field"] == "model" and MODEL in sneaky["message"]  # lists what is offered


def test_catalog_health_and_openapi(client) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models[MODEL]["available"] and models[MODEL]["kind"] == "folder" and "sdxl" in models
    schedulers = [s["name"] for s in client.get("/v1/schedulers").json()["schedulers"]]
    assert "DPM++ 2M Karras" in schedulers and "Euler a" in schedulers
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["worker_alive"]
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "steps", "seed", "scheduler"} <= set(body["properties"]) and "/sdapi/v1/txt2img" in schema["paths"]


def test_non_loopback_bind_needs_a_token_and_the_token_is_checked(make_client, tmp_path) -> None:
    import pytest

    from difflab.serve.config import ServeConfig

    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(ValueError, match="host: .*requires --api-token"):
            ServeConfig(data_dir=tmp_path, host=host)
    ServeConfig(data_dir=tmp_path, host="::1")  # loopback needs none
    token = "t" * 32
    client = make_client(host="0.0.0.0", api_token=token)
    assert client.get("/v1/models").status_code == 401
    wrong = client.get("/v1/models", headers={"Authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.get("/openapi.json").status_code == 401  # nothing is reachable without it
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/v1/health").status_code == 200  # the liveness probe is public


def test_request_body_size_is_limited(make_client) -> None:
    client = make_client(max_body_bytes=4096)
    response = client.post("/v1/generate", json={"prompt": "x" * 8000, **SMALL})
    assert response.status_code == 413 and response.json()["error"]["type"] == "too_large"

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(8):
            yield b" " * 1024

    streamed = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
