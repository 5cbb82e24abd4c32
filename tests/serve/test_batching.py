"""Batching (``batch=True``): compatible queued jobs run as one pipeline call, and every job still gets exactly its
own images, seeds and metadata, within the engine's measured merged-vs-alone bound (1/255, tests/engine/test_merged.py)
of the same request drawn alone. Incompatible jobs are not merged, and a job never overtakes another."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tests.engine.test_merged import BOUND
from tests.serve.conftest import SMALL
from tests.serve.test_api import wait_for


def hold_worker(client) -> dict:
    """A long job that keeps the worker busy while the test queues the jobs it wants merged."""
    job = client.post("/v1/generate?async=true", json={"prompt": "blocker", **SMALL, "steps": 1000}).json()
    wait_for(client, job["id"], states=("running",))
    return job


def submit(client, **fields) -> dict:
    response = client.post("/v1/generate?async=true", json={**SMALL, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def png(client, url: str) -> Image.Image:
    image = Image.open(io.BytesIO(client.get(url).content))
    image.load()
    return image


def test_compatible_jobs_share_a_call_and_keep_their_own_images(make_client, pipeline_cache) -> None:
    from difflab.engine.pipeline import run
    from difflab.engine.request import GenerationRequest

    client = make_client(batch=True, batch_max_images=8)
    blocker = hold_worker(client)
    bodies = [dict(prompt="a red circle", seed=5), dict(prompt="a blue star", negative_prompt="green", seed=50, n=2),
              dict(prompt="a hexagon", seed=9),
              dict(prompt="a red circle", seed=5, steps=3),  # another step count: never merged with its neighbours
              dict(prompt="a green square", seed=1), dict(prompt="a star", seed=2, n=3),
              dict(prompt="a red circle", seed=5, guidance=2.0)]  # another guidance
    jobs = [submit(client, **body) for body in bodies]
    client.delete(f"/v1/jobs/{blocker['id']}")
    finished = [wait_for(client, job["id"]) for job in jobs]
    assert [job["state"] for job in finished] == ["done"] * len(jobs)

    batches = []
    for body, job in zip(bodies, finished):
        n = body.get("n", 1)
        assert [image["seed"] for image in job["images"]] == [body["seed"] + i for i in range(n)]
        assert job["request"]["prompt"] == body["prompt"] and job["attempts"] == 1
        alone = None
        for index, item in enumerate(job["images"]):
            image = png(client, item["url"])
            assert image.text["parameters"].startswith(body["prompt"])
            assert f"Seed: {body['seed'] + index}," in image.text["parameters"]
            record = json.loads(image.text["difflab"])
            # the job shows the client's names (the model's, not the server's path to it), the PNG the paths
            assert client.app.state.server.catalog.client_view(record["request"]) == job["request"]
            assert record["image_index"] == index
            alone = alone or run(GenerationRequest(**record["request"]), pipeline_cache)
            if index == 0:
                batches.append(record.get("batch"))
            assert np.abs(np.asarray(image.convert("RGB"), dtype=np.int16)
                          - np.asarray(alone.images[index], dtype=np.int16)).max() <= BOUND
    # jobs 0-2 share a call; job 3 (3 steps) stands alone; jobs 4-5 share the next; job 6 (guidance 2) alone
    assert batches == [{"requests": 3, "images": 4, "first_image": 0}, {"requests": 3, "images": 4, "first_image": 1},
                       {"requests": 3, "images": 4, "first_image": 3}, None,
                       {"requests": 2, "images": 4, "first_image": 0}, {"requests": 2, "images": 4, "first_image": 1},
                       None]
    started = [job["started"] for job in finished]
    assert started[0] == started[1] == started[2] < started[3] < started[4] == started[5] < started[6]
    images = sorted(path.name for path in client.app.state.server.config.images_dir.glob("*.png"))
    assert len(images) == sum(body.get("n", 1) for body in bodies)  # nothing extra written, nothing missing


def test_batch_size_is_capped_and_off_by_default(make_client) -> None:
    client = make_client(batch=True, batch_max_images=3)
    blocker = hold_worker(client)
    jobs = [submit(client, prompt=f"job {i}", seed=i, n=n) for i, n in enumerate((1, 2, 3, 1))]
    client.delete(f"/v1/jobs/{blocker['id']}")
    records = [json.loads(png(client, wait_for(client, job["id"])["images"][0]["url"]).text["difflab"]) for job in jobs]
    # 1 + 2 images fill a call of 3; 3 + 1 would not fit, so the 3-image job and the last one run alone
    assert [record.get("batch", {}).get("requests") for record in records] == [2, 2, None, None]

    plain = make_client(data_dir=client.app.state.server.config.data_dir.parent / "plain")
    blocker = hold_worker(plain)
    jobs = [submit(plain, prompt=f"job {i}", seed=i) for i in range(2)]
    plain.delete(f"/v1/jobs/{blocker['id']}")
    assert all("batch" not in json.loads(png(plain, wait_for(plain, job["id"])["images"][0]["url"]).text["difflab"])
               for job in jobs)


def test_cancelling_one_job_of_a_batch_leaves_the_others_running(make_client) -> None:
    client = make_client(batch=True)
    blocker = hold_worker(client)
    first, second = (submit(client, prompt=f"long {i}", seed=i, steps=300) for i in range(2))
    client.delete(f"/v1/jobs/{blocker['id']}")
    wait_for(client, first["id"], states=("running",))
    assert client.get(f"/v1/jobs/{second['id']}").json()["state"] == "running"  # claimed together
    client.delete(f"/v1/jobs/{first['id']}")
    cancelled = wait_for(client, first["id"])
    assert cancelled["state"] == "cancelled" and cancelled["images"] == []
    assert client.get(f"/v1/jobs/{second['id']}").json()["state"] == "running"  # still drawing
    done = wait_for(client, second["id"])
    assert done["state"] == "done" and [image["seed"] for image in done["images"]] == [1]
    assert done["progress"]["step"] == 300 and cancelled["progress"]["step"] < 300


def test_a_group_the_engine_cannot_merge_runs_one_by_one(make_client) -> None:
    client = make_client(batch=True)
    blocker = hold_worker(client)
    jobs = [submit(client, prompt="a (red:1.3) circle", seed=1), submit(client, prompt="a star", seed=2)]
    client.delete(f"/v1/jobs/{blocker['id']}")
    for job in jobs:
        finished = wait_for(client, job["id"])
        assert finished["state"] == "done" and len(finished["images"]) == 1
        assert "batch" not in json.loads(png(client, finished["images"][0]["url"]).text["difflab"])
