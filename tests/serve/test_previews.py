"""Step previews in the progress stream (``preview_every``): base64 PNGs of the denoised estimate, off by default."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
from PIL import Image

from tests.serve.conftest import MODEL


def events_of(client, job: dict, stop_after_previews: int = 0) -> list[tuple[str, dict]]:
    """The job's server-sent events until it ends; with ``stop_after_previews`` the job is cancelled once that many
    previews came (so the test does not depend on how fast this machine runs the steps)."""
    events, name = [], None
    with client.stream("GET", job["links"]["events"]) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if stop_after_previews and sum("preview" in data for _, data in events) == stop_after_previews:
                    client.app.state.server.store.cancel(job["id"])
    return events


def test_progress_events_carry_previews_of_the_right_size(make_client) -> None:
    client = make_client(preview_every=4, preview_max_side=24)
    body = {"prompt": "a red circle", "model": MODEL, "width": 48, "height": 32, "steps": 1000, "seed": 2,
            "scheduler": "Euler"}
    job = client.post("/v1/generate?async=true", json=body).json()
    events = events_of(client, job, stop_after_previews=3)
    assert events[-1][0] == "cancelled"
    previews = [data["preview"] for name, data in events if "preview" in data]
    assert len(previews) == 3 and all(name == "progress" for name, data in events if "preview" in data)
    steps = [preview["step"] for preview in previews]
    assert steps == sorted(set(steps)) and all(step % 4 == 0 for step in steps)  # each sent once, every 4th step
    for preview in previews:
        image = Image.open(io.BytesIO(base64.b64decode(preview["image"])))
        assert image.format == "PNG" and image.size == (24, 16) == (preview["width"], preview["height"])  # 48x32 shrunk
        assert np.asarray(image).std() > 0  # a picture, not a blank
    board, deadline = client.app.state.server.worker.previews, time.monotonic() + 10
    while board.latest(job["id"]) is not None and time.monotonic() < deadline:  # the worker drops it as the job ends
        time.sleep(0.01)
    assert board.latest(job["id"]) is None


def test_a1111_progress_shows_the_running_jobs_preview(make_client) -> None:
    client = make_client(preview_every=1)
    job = client.post("/v1/generate?async=true", json={"prompt": "a star", "model": MODEL, "width": 32,
                                                       "height": 32, "steps": 1000}).json()
    deadline, current = time.monotonic() + 60, None
    while current is None and time.monotonic() < deadline:
        current = client.get("/sdapi/v1/progress").json()["current_image"]
        time.sleep(0.02)
    client.delete(f"/v1/jobs/{job['id']}")
    assert current is not None and Image.open(io.BytesIO(base64.b64decode(current))).size == (32, 32)


def test_no_previews_by_default(client) -> None:
    job = client.post("/v1/generate?async=true", json={"prompt": "a star", "model": MODEL, "width": 32,
                                                       "height": 32, "steps": 30}).json()
    events = events_of(client, job)
    assert events[-1][0] == "done" and not any("preview" in data for _, data in events)
    assert client.get("/sdapi/v1/progress").json()["current_image"] is None
