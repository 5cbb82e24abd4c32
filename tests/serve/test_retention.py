"""Retention on a real SQLite queue and real files (ages set by editing rows and mtimes): old jobs go with their
images and idempotency keys, the images stay under their size cap, unused inputs go once old, a queued or running
job keeps everything; the server applies it while it runs; a refused request leaves no upload behind."""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

from difflab.serve.queue import JobStore
from difflab.serve.retention import RetentionPolicy, sweep
from tests.serve.conftest import MODEL, SMALL

DAY = 86400.0


class Folder:
    """A data folder as the server lays it out: queue.sqlite3, images/, inputs/."""

    def __init__(self, root: Path):
        self.store = JobStore(root / "queue.sqlite3")
        self.images, self.inputs = root / "images", root / "inputs"
        self.images.mkdir()
        self.inputs.mkdir()

    def input(self, name: str, age_days: float = 0.0) -> str:
        path = self.inputs / name
        path.write_bytes(b"png")
        stamp = time.time() - age_days * DAY
        os.utime(path, (stamp, stamp))
        return name

    def job(self, state: str, age_days: float, *, uses: str = "", image_bytes: int = 100, key: str = "") -> str:
        request = {"prompt": "x", "init_image": str(self.inputs.resolve() / uses) if uses else None}
        job = self.store.submit(request, max_queue=100, idempotency=(key, "f") if key else None)
        if state != "queued":
            self.store.claim_next()
            (self.images / f"{job.id}-0.png").write_bytes(b"\0" * image_bytes)  # what a running job has written
        if state == "done":
            self.store.finish(job.id, [{"file": f"{job.id}-0.png", "seed": 0, "index": 0}])
        with sqlite3.connect(self.store.path) as db:  # make it as old as asked
            db.execute("UPDATE jobs SET created = created - ?, finished = finished - ? WHERE id = ?",
                       (age_days * DAY, age_days * DAY, job.id))
        return job.id


def test_old_finished_jobs_go_with_images_keys_and_unused_inputs_but_queued_and_running_keep_all(tmp_path) -> None:
    folder = Folder(tmp_path)
    old = folder.job("done", 40, uses=folder.input("old-in.png", 40), key="k-old")
    recent = folder.job("done", 1, uses=folder.input("recent-in.png", 40))
    running = folder.job("running", 40, uses=folder.input("running-in.png", 40))  # submitted 40 days ago
    waiting = folder.job("queued", 45, uses=folder.input("waiting-in.png", 45))
    folder.input("unused-old.png", 31)
    folder.input("unused-new.png", 1)  # uploaded, not used yet: a client may be about to name it
    (folder.images / f"{'f' * 32}-0.png").write_bytes(b"x")  # a crash's leftover: no row names it

    swept = sweep(folder.store, folder.images, folder.inputs, RetentionPolicy(keep_days=30, keep_bytes=0))

    assert folder.store.job_ids() == {recent, running, waiting}
    assert folder.store.job_for_key("k-old", "f") is None  # the key went with its job
    assert sorted(p.name for p in folder.images.iterdir()) == sorted([f"{recent}-0.png", f"{running}-0.png"])
    assert sorted(p.name for p in folder.inputs.iterdir()) == [
        "recent-in.png", "running-in.png", "unused-new.png", "waiting-in.png"]
    assert (swept.jobs, swept.images, swept.inputs) == (1, 2, 2)
    assert old not in folder.store.job_ids()


def test_the_oldest_finished_jobs_go_while_images_exceed_the_cap(tmp_path) -> None:
    folder = Folder(tmp_path)
    ids = [folder.job("done", age, image_bytes=1000) for age in (3, 2, 1)]
    running = folder.job("running", 9, image_bytes=1000)  # counts towards the total, but is never removed
    sweep(folder.store, folder.images, folder.inputs, RetentionPolicy(keep_days=0, keep_bytes=2500))
    assert folder.store.job_ids() == {ids[2], running}
    assert len(list(folder.images.iterdir())) == 2


def test_the_server_sweeps_while_it_runs(make_client, tmp_path: Path) -> None:
    client = make_client(retention_every_s=0.2)
    old, new = (client.post("/v1/generate", json={"prompt": p, **SMALL, "steps": 1}).json() for p in ("old", "new"))
    with sqlite3.connect(tmp_path / "data" / "queue.sqlite3") as db:
        db.execute("UPDATE jobs SET finished = finished - ? WHERE id = ?", (31 * DAY, old["id"]))
    deadline = time.monotonic() + 20
    while client.get(f"/v1/jobs/{old['id']}").status_code != 404:
        assert time.monotonic() < deadline, "the old job was never swept"
        time.sleep(0.1)
    images = sorted(p.name for p in (tmp_path / "data" / "images").iterdir())
    assert len(images) == 1 and images[0].startswith(new["id"])
    assert client.get(new["images"][0]["url"]).status_code == 200


def png_base64(color: str, size: int = 32) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("bad", [{"steps": 0}, {"mask": "not base64!"}, {"sampler_name": "no such sampler"}])
def test_a_refused_img2img_leaves_no_upload_behind(client, tmp_path: Path, bad: dict) -> None:
    body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "init_images": [png_base64("red")],
            "override_settings": {"sd_model_checkpoint": MODEL}, **bad}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422, response.text
    assert list((tmp_path / "data" / "inputs").glob("*")) == []


def test_a_refused_img2img_keeps_an_input_a_job_uses(client, tmp_path: Path) -> None:
    body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "init_images": [png_base64("blue")],
            "override_settings": {"sd_model_checkpoint": MODEL}}
    assert client.post("/sdapi/v1/img2img", json=body).status_code == 200
    assert client.post("/sdapi/v1/img2img", json={**body, "steps": 0}).status_code == 422
    assert len(list((tmp_path / "data" / "inputs").glob("*.png"))) == 1
