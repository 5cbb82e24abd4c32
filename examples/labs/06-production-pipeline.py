# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 6: a production pipeline
#
# What changes when images are a product rather than an experiment: every image must be reproducible from what is
# stored with it, thousands of prompts must survive a crash half-way, and other programs must be able to ask for
# images. difflab's answers, each one command:
#
# 1. **batch**: a prompt file in, a folder out, with a manifest (SHA-256 of every image) and a contact sheet;
#    validated before anything runs, resumable after a kill (`difflab batch prompts.jsonl -o out`);
# 2. **replay**: regenerate an image from the record inside its PNG and compare pixel by pixel
#    (`difflab replay image.png --check`);
# 3. **serve**: an HTTP API with a persistent job queue, and A1111-compatible endpoints (`difflab serve`).
#
# On a GPU set `MODEL = "sdxl"`; the cells do not change.

# %%
MODEL = "tiny-shapes"

# %%
import json
from pathlib import Path

from IPython.display import Image, Markdown, display

from difflab.engine.batch import ImageFinished, check_folder, plan_batch, run_batch, write_contact_sheets
from difflab.engine.pipeline import PipelineCache

OUT = Path("outputs/lab06")
OUT.mkdir(parents=True, exist_ok=True)
cache = PipelineCache()

# %% [markdown]
# ## 1. A batch with a manifest
#
# A JSONL prompt file: one request per line, any `GenerationRequest` field. Every line is validated first: a typo
# on line 9,000 fails in a second, not after eight hours. A bad file:

# %%
bad = OUT / "bad.jsonl"
bad.write_text(json.dumps({"prompt": "a red circle", "model": MODEL}) + "\n"
               + json.dumps({"prompt": "a blue square", "model": MODEL, "steps": 0}) + "\n"
               + json.dumps({"prompt": "a star", "model": MODEL, "scheduler": "Euler b"}) + "\n")
try:
    plan_batch(bad)
except ValueError as error:
    print(error)

# %% [markdown]
# And a good one, run to completion:

# %%
prompts = OUT / "prompts.jsonl"
lines = [{"prompt": "a red circle on a blue background", "n": 2, "seed": 10},
         {"prompt": "a yellow star on black", "n": 2, "seed": 20, "scheduler": "Euler a"},
         {"prompt": "a green triangle on white", "n": 2, "seed": 30, "guidance": 5}]
prompts.write_text("".join(json.dumps({**line, "model": MODEL}) + "\n" for line in lines))
plan = plan_batch(prompts)
folder = OUT / "batch"
check_folder(plan, folder)
made = sum(1 for event in run_batch(plan, folder, cache) if isinstance(event, ImageFinished) and not event.skipped)
sheet = write_contact_sheets(plan, folder)[0]
print(f"{made} images; fingerprint {plan.fingerprint[:16]}...")
print((folder / "manifest.jsonl").read_text())
display(Image(filename=sheet))

# %% [markdown]
# ## 2. Resume after a crash
#
# An image counts as finished only when its manifest line is whole *and* the file has the recorded hash. Here a
# second batch is stopped after its second image (as a kill would), then the same command runs again: the finished
# images are skipped, and the result is byte-for-byte what an uninterrupted run writes.

# %%
interrupted = OUT / "interrupted"
events = run_batch(plan, interrupted, cache)
for count, event in enumerate(event for event in events if isinstance(event, ImageFinished)):
    if count == 1:
        break
events.close()  # the generator releases the folder lock, as a killed process's lock is released
print("after the interruption:", len((interrupted / "manifest.jsonl").read_text().splitlines()), "manifest lines")
events = list(run_batch(plan, interrupted, cache))
skipped = sum(1 for e in events if isinstance(e, ImageFinished) and e.skipped)
print(f"resumed: {skipped} images skipped, {sum(1 for e in events if isinstance(e, ImageFinished)) - skipped} made")
same = all((folder / p.name).read_bytes() == p.read_bytes() for p in interrupted.glob("0*.png"))
print("resumed folder identical to the uninterrupted one:", same)

# %% [markdown]
# ## 3. Replay
#
# Every PNG carries the A1111 `parameters` text and difflab's full JSON record (request, versions, device).
# Replay rebuilds the request from the file alone and compares.

# %%
from difflab.engine.metadata import read_png_metadata
from difflab.engine.replay import plan_replay, replay

image = sorted(folder.glob("0*.png"))[1]
parameters, record = read_png_metadata(image)
print(parameters)
outcome = replay(plan_replay(image, placement=cache.placement), cache)
print(f"{image.name}: {outcome.comparison.describe()}")

# %% [markdown]
# ## 4. The server
#
# `difflab serve` runs this app with uvicorn; here it runs in-process through FastAPI's test client, with the real
# SQLite queue and worker thread. `POST /v1/generate` takes the same fields as a batch line; A1111 clients use
# `/sdapi/v1/txt2img` unchanged. OpenAPI docs are at `/docs`.

# %%
import base64
import io

from fastapi.testclient import TestClient
from PIL import Image as PILImage

from difflab.serve.app import create_app
from difflab.serve.config import ServeConfig

from difflab.engine.registry import PRESETS

# the server runs only models it offers: presets by name, and the folders of --models-dir by their folder name
models_dir, served = (None, MODEL) if MODEL in PRESETS else (Path(MODEL).parent, Path(MODEL).name)
app = create_app(ServeConfig(data_dir=OUT / "serve", models_dir=models_dir, default_model=served, ui=False), cache=cache)
with TestClient(app) as client:
    job = client.post("/v1/generate", json={"prompt": "a purple square on yellow", "model": served}).json()
    print(f"job {job['id']}: {job['state']}, images {[image['url'] for image in job['images']]}")
    png = client.get(job["images"][0]["url"]).content
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a purple square on yellow", "seed": 0}).json()
    error = client.post("/v1/generate", json={"prompt": "a circle", "model": served, "steps": -1})
    print(f"a bad request: HTTP {error.status_code}, {error.json()}")
from_v1 = PILImage.open(io.BytesIO(png))
from_a1111 = PILImage.open(io.BytesIO(base64.b64decode(a1111["images"][0])))
print("A1111 info:", json.loads(a1111["info"])["infotexts"][0])
print("the /v1 and /sdapi/v1 images are the same pixels:", from_v1.tobytes() == from_a1111.tobytes())

# %% [markdown]
# The same request gives the same image from every entry point (notebook, CLI, batch, HTTP) because every entry
# point builds the same `GenerationRequest` and calls the same engine.
