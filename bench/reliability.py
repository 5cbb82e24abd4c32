"""Benchmark: the bad-input table (issue 19). Replays bad inputs against the real command line (subprocesses of
``difflab``) and a real ``difflab serve`` (a process on a free loopback port), and counts what a user would see:

    cases | clear errors naming the field | tracebacks | 5xx | files left behind | half-written files

A CLI case is a clear error when it exits with status 2, prints no traceback and its output names the field (the
option, e.g. ``--out``, or the request field, e.g. ``init_image``). An HTTP case is a clear error when it is
answered 4xx with difflab's JSON error shape and the body names the field (404s for unknown ids name what was not
found). "files left behind": a refused command's output folder holds a file afterwards (or a file given as
``--out`` changed), or a refused request added a file to the server's data folder (uploads of refused requests
included). "half-written": a ``.*.tmp`` file of an atomic write, anywhere in the work folder.

Targets: 0 tracebacks, 0 5xx, 0 half-written files. A case's ``accepts`` lists answers that are right for it besides
an error (a field difflab honours instead of refusing).

    .venv/bin/python bench/reliability.py                       # every case, the table and bench/results/reliability.md
    .venv/bin/python bench/reliability.py --only cli -k lora    # a subset (no results file)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "src" / "difflab" / "models" / "tiny-shapes"
DEFAULT_OUT = Path(__file__).parent / "results" / "reliability.md"
TRACEBACK = "Traceback (most recent call last)"


# ---- inputs the cases need: built once, in the work folder --------------------------------------------------------

def bilevel_png(width: int, height: int) -> bytes:
    """A 1-bit all-black PNG of any size in a few kB: the header says width x height, the zlib stream of zero rows
    compresses about 1000:1. Written by hand so that building a 20000x20000 file never decodes one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    stream = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def rgb_png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 80, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Workspace:
    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    def build(self) -> "Workspace":
        (self.root / "secret").mkdir(parents=True)
        # a model folder in the server's working directory, outside --models-dir: must never load by name
        shutil.copytree(BUNDLED, self.root / "secret" / "tinycopy")
        models = self.root / "models"
        models.mkdir()
        (models / "tiny").symlink_to(BUNDLED, target_is_directory=True)
        write = {
            "big_init": rgb_png(4104, 4104),
            "bomb": bilevel_png(20000, 20000),
            "huge_1bit": bilevel_png(11000, 11000),
            "small": rgb_png(64, 64),
            "text": b"this is not an image\n",
            "garbage.safetensors": b"\x00\x01 not a safetensors file" * 10,
            "model.ckpt": b"refused by its suffix",
            "bad-json.jsonl": b'{"prompt": "a red circle"\n',
            "bad-field.jsonl": b'{"prompt": "a red circle", "steps": 0}\n',
            "good.jsonl": b'{"prompt": "a red circle", "steps": 2}\n',
            "empty.jsonl": b"",
            "plain.png": rgb_png(64, 64),  # a PNG without difflab's metadata
        }
        for name, data in write.items():
            path = self.root / "inputs" / (name if "." in name else f"{name}.png")
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            self.files[name] = path
        self.files["a_file"] = self.root / "inputs" / "not-a-folder.txt"
        self.files["a_file"].write_text("an existing file, not a folder\n")
        captions = self.root / "lora-data"
        captions.mkdir()
        (captions / "a.png").write_bytes(rgb_png(64, 64))
        (captions / "a.txt").write_text("a hexagon")
        self.files["lora_data"] = captions
        made = self.root / "made"  # a PNG difflab made (replay's input): two steps of the bundled model
        subprocess.run([sys.executable, "-m", "difflab.cli", "generate", "a red circle", "--steps", "2", "-o",
                        str(made)], check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.files["made.png"] = next(made.glob("*.png"))
        return self

    def arg(self, text: str) -> str:
        values = {name: str(path) for name, path in self.files.items()} | {"out": str(self.root / "out")}
        return re.sub(r"\{([\w.-]+)\}", lambda match: values[match.group(1)], text)


# ---- the cases ------------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    surface: str  # "cli" or "http"
    names: str  # text a clear error must contain (the field, the option, or what was not found)
    args: list[str] = field(default_factory=list)  # cli: arguments after `difflab`
    method: str = "POST"  # http
    path: str = ""
    body: Any = None  # http: JSON (dict/list), or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    accepts: tuple[int, ...] = ()  # statuses (http) or exit codes (cli) that are a right answer besides an error
    issue: bool = False  # named in issue 19's text


GEN = ["generate", "a red circle on a blue background", "--steps", "4"]

CLI_CASES = [
    Case("generate width not a multiple of 8", "cli", "width", [*GEN, "--width", "100", "-o", "{out}"]),
    Case("generate height above 4096", "cli", "height", [*GEN, "--height", "8192", "-o", "{out}"]),
    Case("generate width 0", "cli", "width", [*GEN, "--width", "0", "-o", "{out}"]),
    Case("generate steps 0", "cli", "steps", [*GEN[:2], "--steps", "0", "-o", "{out}"]),
    Case("generate steps -3", "cli", "steps", [*GEN[:2], "--steps", "-3", "-o", "{out}"]),
    Case("generate steps 5000", "cli", "steps", [*GEN[:2], "--steps", "5000", "-o", "{out}"]),
    Case("generate steps not a number", "cli", "steps", [*GEN[:2], "--steps", "many", "-o", "{out}"]),
    Case("generate guidance -1", "cli", "guidance", [*GEN, "--guidance", "-1", "-o", "{out}"]),
    Case("generate guidance nan", "cli", "guidance", [*GEN, "--guidance", "nan", "-o", "{out}"]),
    Case("generate guidance-end 0", "cli", "guidance_end", [*GEN, "--guidance-end", "0", "-o", "{out}"]),
    Case("generate n 1000", "cli", "n", [*GEN, "-n", "1000", "-o", "{out}"]),
    Case("generate n 0", "cli", "n", [*GEN, "-n", "0", "-o", "{out}"]),
    Case("generate seed -5", "cli", "seed", [*GEN, "--seed", "-5", "-o", "{out}"]),
    Case("generate seed 2^40", "cli", "seed", [*GEN, "--seed", str(2**40), "-o", "{out}"]),
    Case("generate empty prompt", "cli", "prompt", ["generate", "", "--steps", "1", "-o", "{out}"]),
    Case("generate unknown model", "cli", "model", [*GEN, "--model", "no-such-model", "-o", "{out}"]),
    Case("generate missing .safetensors", "cli", "does not exist",
         [*GEN, "--model", "nothere.safetensors", "-o", "{out}"], issue=True),
    Case("generate corrupt .safetensors", "cli", "model", [*GEN, "--model", "{garbage.safetensors}", "-o", "{out}"]),
    Case("generate pickle model", "cli", "pickle", [*GEN, "--model", "{model.ckpt}", "-o", "{out}"]),
    Case("generate unknown sampler", "cli", "scheduler", [*GEN, "--scheduler", "warp drive", "-o", "{out}"]),
    Case("generate unknown memory knob", "cli", "memory", [*GEN, "--memory", "turbo", "-o", "{out}"]),
    Case("generate long-prompt mode", "cli", "long_prompt", [*GEN, "--long-prompt", "squeeze", "-o", "{out}"]),
    Case("generate hires scale 10", "cli", "hires_scale", [*GEN, "--hires-scale", "10", "-o", "{out}"]),
    Case("generate strength 1.5", "cli", "strength",
         [*GEN, "--init-image", "{small}", "--strength", "1.5", "-o", "{out}"]),
    Case("generate init image missing", "cli", "init_image", [*GEN, "--init-image", "nothere.png", "-o", "{out}"]),
    Case("generate init image not an image", "cli", "init_image", [*GEN, "--init-image", "{text}", "-o", "{out}"]),
    Case("generate init image 4104x4104", "cli", "init_image", [*GEN, "--init-image", "{big_init}", "-o", "{out}"],
         issue=True),
    Case("generate init image 20000x20000 bomb", "cli", "init_image",
         [*GEN, "--init-image", "{bomb}", "-o", "{out}"], issue=True),
    Case("generate mask without init image", "cli", "mask", [*GEN, "--mask", "{small}", "-o", "{out}"]),
    Case("generate mask 11000x11000", "cli", "mask",
         [*GEN, "--init-image", "{small}", "--mask", "{huge_1bit}", "-o", "{out}"]),
    Case("generate control kind unknown", "cli", "control", [*GEN, "--control", "foo:{small}", "-o", "{out}"]),
    Case("generate control image missing", "cli", "control", [*GEN, "--control", "canny:nothere.png", "-o", "{out}"]),
    Case("generate control image 20000x20000", "cli", "control", [*GEN, "--control", "canny:{bomb}", "-o", "{out}"]),
    Case("generate lora weight not a number", "cli", "abc", [*GEN, "--lora", "x:abc", "-o", "{out}"], issue=True),
    Case("generate lora missing", "cli", "lora", [*GEN, "--lora", "no-such-lora", "-o", "{out}"]),
    Case("generate lora path traversal", "cli", "lora", [*GEN, "--lora", "../../etc/passwd", "-o", "{out}"]),
    Case("generate --out is a file", "cli", "--out", [*GEN, "-o", "{a_file}"], issue=True),
    Case("generate --out cannot be created", "cli", "--out", [*GEN, "-o", "/proc/difflab-out"], issue=True),
    Case("replay not a PNG", "cli", "png", ["replay", "{text}", "-o", "{out}"]),
    Case("replay PNG without metadata", "cli", "metadata", ["replay", "{plain.png}", "-o", "{out}"]),
    Case("replay missing file", "cli", "nothere.png", ["replay", "nothere.png", "-o", "{out}"]),
    Case("replay --out is a file", "cli", "--out", ["replay", "{made.png}", "-o", "{a_file}"], issue=True),
    Case("replay --out cannot be created", "cli", "--out", ["replay", "{made.png}", "-o", "/proc/difflab-out"]),
    Case("batch file missing", "cli", "nothere.jsonl", ["batch", "nothere.jsonl", "-o", "{out}"]),
    Case("batch line not JSON", "cli", "line 1", ["batch", "{bad-json.jsonl}", "-o", "{out}"]),
    Case("batch line with steps 0", "cli", "steps", ["batch", "{bad-field.jsonl}", "-o", "{out}"]),
    Case("batch empty file", "cli", "empty", ["batch", "{empty.jsonl}", "-o", "{out}"]),
    Case("batch --out is a file", "cli", "--out", ["batch", "{good.jsonl}", "-o", "{a_file}"], issue=True),
    Case("ddpm sample label 99", "cli", "label", ["ddpm", "sample", "--label", "99", "-n", "2", "-o", "{out}"]),
    Case("ddpm sample unknown sampler", "cli", "sampler", ["ddpm", "sample", "--sampler", "foo", "-o", "{out}"]),
    Case("ddpm sample --out is a file", "cli", "--out", ["ddpm", "sample", "-n", "2", "-o", "{a_file}"]),
    Case("ddpm train unknown schedule", "cli", "schedule",
         ["ddpm", "train", "--schedule", "foo", "--steps", "2", "-o", "{out}"]),
    Case("ddpm train --out is a file", "cli", "--out", ["ddpm", "train", "--steps", "2", "-o", "{a_file}"]),
    Case("train lora --out is a file", "cli", "--out",
         ["train", "lora", "--data", "{lora_data}", "--trigger", "hx", "--steps", "2", "-o", "{a_file}"], issue=True),
    Case("train lora data missing", "cli", "data",
         ["train", "lora", "--data", "nothere", "--trigger", "hx", "--steps", "2", "-o", "{out}"]),
    Case("train lora rank 0", "cli", "rank",
         ["train", "lora", "--data", "{lora_data}", "--trigger", "hx", "--rank", "0", "-o", "{out}"]),
    Case("pull offline", "cli", "hub", ["pull", "sd15"], issue=True),
    Case("merge alpha 2", "cli", "alpha", ["merge", "{made.png}", "{made.png}", "--alpha", "2", "-o", "{out}/m"]),
    Case("merge model missing", "cli", "B", ["merge", str(BUNDLED), "nothere", "-o", "{out}/m"]),
    Case("xyz unknown axis", "cli", "--x", ["xyz", "a red circle", "--x", "colour:1,2", "--y", "seed:0,1",
                                            "-o", "{out}"]),
    Case("xyz cell steps 0", "cli", "steps", ["xyz", "a red circle", "--x", "steps:0,2", "--y", "seed:0,1",
                                              "-o", "{out}"]),
    Case("upscale 20000x20000 bomb", "cli", "images", ["upscale", "{bomb}", "-u", "Lanczos", "-o", "{out}"]),
    Case("upscale unknown upscaler", "cli", "--upscaler", ["upscale", "{small}", "-u", "R-ESRGAN 4x+", "-o", "{out}"]),
    Case("generate vae missing", "cli", "vae", [*GEN, "--vae", "nothere.safetensors", "-o", "{out}"]),
    Case("generate clip skip 0", "cli", "clip_skip", [*GEN, "--clip-skip", "0", "-o", "{out}"]),
    Case("generate hires upscaler unknown", "cli", "hires_upscaler",
         [*GEN, "--hires-scale", "2", "--hires-upscaler", "R-ESRGAN 4x+", "-o", "{out}"]),
    Case("viz forward missing image", "cli", "nothere.png", ["viz", "forward", "nothere.png", "-o", "{out}/f.png"]),
    Case("viz samplers unknown sampler", "cli", "sampler", ["viz", "samplers", "--samplers", "foo", "-o", "{out}/s.png"]),
]


def txt2img(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a red circle on a blue background", "steps": 4, **fields}


def b64(name: str) -> str:
    return "{b64:" + name + "}"  # replaced by the file's base64 when the case runs


GOOD = {"prompt": "a red circle on a blue background", "steps": 4}

HTTP_CASES = [
    Case("v1 width not a multiple of 8", "http", "width", path="/v1/generate", body={**GOOD, "width": 100}),
    Case("v1 steps 0", "http", "steps", path="/v1/generate", body={**GOOD, "steps": 0}),
    Case("v1 n 1000", "http", "n", path="/v1/generate", body={**GOOD, "n": 1000}),
    Case("v1 guidance a string", "http", "guidance", path="/v1/generate", body={**GOOD, "guidance": "high"}),
    Case("v1 seed -1", "http", "seed", path="/v1/generate", body={**GOOD, "seed": -1}),
    Case("v1 prompt missing", "http", "prompt", path="/v1/generate", body={"steps": 1}),
    Case("v1 prompt a number", "http", "prompt", path="/v1/generate", body={"prompt": 5}),
    Case("v1 unknown field", "http", "colour_boost", path="/v1/generate", body={**GOOD, "colour_boost": 2}),
    Case("v1 unknown model", "http", "model", path="/v1/generate", body={**GOOD, "model": "no-such-model"}),
    Case("v1 model in the server's cwd", "http", "model", path="/v1/generate",
         body={**GOOD, "model": "secret/tinycopy"}, issue=True),
    Case("v1 model absolute path", "http", "model", path="/v1/generate", body={**GOOD, "model": str(BUNDLED)}),
    Case("v1 model parent path", "http", "model", path="/v1/generate", body={**GOOD, "model": "../models/tiny"}),
    Case("v1 refiner in the server's cwd", "http", "refiner", path="/v1/generate",
         body={**GOOD, "refiner": "secret/tinycopy"}, issue=True),
    Case("v1 unknown sampler", "http", "scheduler", path="/v1/generate", body={**GOOD, "scheduler": "warp drive"}),
    Case("v1 init_image a server path", "http", "init_image", path="/v1/generate",
         body={**GOOD, "init_image": "/etc/passwd"}),
    Case("v1 init_image parent path", "http", "init_image", path="/v1/generate",
         body={**GOOD, "init_image": "../server.lock"}),
    Case("v1 init_image not uploaded", "http", "init_image", path="/v1/generate",
         body={**GOOD, "init_image": "0" * 32 + ".png"}),
    Case("v1 mask not uploaded", "http", "mask", path="/v1/generate",
         body={**GOOD, "init_image": "{upload:small}", "mask": "f" * 32 + ".png"}),
    Case("v1 lora path traversal", "http", "loras", path="/v1/generate", body={**GOOD, "loras": ["../../etc/passwd"]}),
    Case("v1 lora weight not a number", "http", "loras", path="/v1/generate", body={**GOOD, "loras": ["x:abc"]}),
    Case("v1 vae a server path", "http", "vae", path="/v1/generate",
         body={**GOOD, "vae": "secret/tinycopy/vae"}),
    Case("v1 hires upscaler a server path", "http", "hires_upscaler", path="/v1/generate",
         body={**GOOD, "hires_scale": 2, "hires_upscaler": "secret/tinycopy/vae/diffusion_pytorch_model.safetensors"}),
    Case("v1 clip skip 99", "http", "clip_skip", path="/v1/generate", body={**GOOD, "clip_skip": 99}),
    Case("v1 memory knob unknown", "http", "memory", path="/v1/generate", body={**GOOD, "memory": ["turbo"]}),
    Case("v1 malformed JSON", "http", "body", path="/v1/generate", body=b'{"prompt": "a red', issue=True,
         headers={"Content-Type": "application/json"}),
    Case("v1 body a JSON list", "http", "body", path="/v1/generate", body=["a red circle"]),
    Case("v1 empty body", "http", "body", path="/v1/generate", body=b"", headers={"Content-Type": "application/json"}),
    Case("v1 body too large", "http", "body", path="/v1/generate", body={**GOOD, "prompt": "x" * (9 << 20)}),
    Case("upload 11000x11000 1-bit PNG", "http", "body", path="/v1/inputs", body="{file:huge_1bit}",
         headers={"Content-Type": "image/png"}, issue=True),
    Case("upload 20000x20000 bomb", "http", "body", path="/v1/inputs", body="{file:bomb}",
         headers={"Content-Type": "image/png"}, issue=True),
    Case("upload 4104x4104", "http", "body", path="/v1/inputs", body="{file:big_init}",
         headers={"Content-Type": "image/png"}),
    Case("upload not an image", "http", "body", path="/v1/inputs", body="{file:text}",
         headers={"Content-Type": "image/png"}),
    Case("upload empty", "http", "body", path="/v1/inputs", body=b"", headers={"Content-Type": "image/png"}),
    Case("job id not found", "http", "job", method="GET", path="/v1/jobs/" + "0" * 32),
    Case("job id malformed", "http", "not found", method="GET", path="/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
    Case("cancel unknown job", "http", "job", method="DELETE", path="/v1/jobs/" + "0" * 32),
    Case("image id traversal", "http", "not found", method="GET", path="/v1/images/..%2F..%2Fserver.lock"),
    Case("image id unknown", "http", "image", method="GET", path="/v1/images/" + "0" * 32 + "-0"),
    Case("jobs state unknown", "http", "state", method="GET", path="/v1/jobs?state=sleeping"),
    Case("jobs limit 0", "http", "limit", method="GET", path="/v1/jobs?limit=0"),
    Case("txt2img batch_size 2^33", "http", "batch_size", path="/sdapi/v1/txt2img",
         body=txt2img(batch_size=8589934592), issue=True),
    Case("txt2img n_iter 0", "http", "n_iter", path="/sdapi/v1/txt2img", body=txt2img(n_iter=0)),
    Case("txt2img checkpoint a number", "http", "sd_model_checkpoint", path="/sdapi/v1/txt2img",
         body=txt2img(override_settings={"sd_model_checkpoint": 5}), issue=True),
    Case("txt2img checkpoint in the server's cwd", "http", "sd_model_checkpoint", path="/sdapi/v1/txt2img",
         body=txt2img(override_settings={"sd_model_checkpoint": "secret/tinycopy"}), issue=True),
    Case("txt2img clip skip 2", "http", "CLIP_stop_at_last_layers", path="/sdapi/v1/txt2img",
         body=txt2img(override_settings={"CLIP_stop_at_last_layers": 2}), issue=True, accepts=(200,)),
    Case("txt2img unknown top-level field", "http", "colour_boost", path="/sdapi/v1/txt2img",
         body=txt2img(colour_boost=2), issue=True),
    Case("txt2img steps 0", "http", "steps", path="/sdapi/v1/txt2img", body=txt2img(steps=0)),
    Case("txt2img width 100", "http", "width", path="/sdapi/v1/txt2img", body=txt2img(width=100)),
    Case("txt2img unknown sampler", "http", "sampler_name", path="/sdapi/v1/txt2img",
         body=txt2img(sampler_name="warp drive")),
    Case("txt2img cfg_scale a string", "http", "cfg_scale", path="/sdapi/v1/txt2img", body=txt2img(cfg_scale="x")),
    Case("txt2img seed -5", "http", "seed", path="/sdapi/v1/txt2img", body=txt2img(seed=-5)),
    Case("txt2img restore_faces", "http", "restore_faces", path="/sdapi/v1/txt2img", body=txt2img(restore_faces=True)),
    Case("txt2img malformed JSON", "http", "body", path="/sdapi/v1/txt2img", body=b"{prompt: red}",
         headers={"Content-Type": "application/json"}, issue=True),
    Case("img2img init image not base64", "http", "init_images", path="/sdapi/v1/img2img",
         body=txt2img(init_images=["not base64!"])),
    Case("img2img init image a URL", "http", "init_images", path="/sdapi/v1/img2img",
         body=txt2img(init_images=["https://example.com/a.png"])),
    Case("img2img init image 11000x11000", "http", "init_images", path="/sdapi/v1/img2img",
         body=txt2img(init_images=[b64("huge_1bit")]), issue=True),
    Case("img2img init image bomb", "http", "init_images", path="/sdapi/v1/img2img",
         body=txt2img(init_images=[b64("bomb")]), issue=True),
    Case("img2img good image, steps 0", "http", "steps", path="/sdapi/v1/img2img",
         body=txt2img(init_images=[b64("small")], steps=0), issue=True),
    Case("img2img good image, bad mask", "http", "mask", path="/sdapi/v1/img2img",
         body=txt2img(init_images=[b64("small")], mask="%%%")),
    Case("img2img denoising_strength 2", "http", "denoising_strength", path="/sdapi/v1/img2img",
         body=txt2img(init_images=[b64("small")], denoising_strength=2)),
    Case("options checkpoint in the server's cwd", "http", "sd_model_checkpoint", path="/sdapi/v1/options",
         body={"sd_model_checkpoint": "secret/tinycopy"}, issue=True),
    Case("options checkpoint a number", "http", "sd_model_checkpoint", path="/sdapi/v1/options",
         body={"sd_model_checkpoint": 5}),
    Case("options malformed JSON", "http", "body", path="/sdapi/v1/options", body=b"[1, 2",
         headers={"Content-Type": "application/json"}),
]


# ---- running the cases ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    case: Case
    status: Optional[int]  # exit code or HTTP status
    text: str
    traceback: bool
    left_behind: list[str]
    seconds: float

    @property
    def clear(self) -> bool:
        if self.traceback or self.status is None:
            return False
        if self.status in self.case.accepts:
            return True
        if self.case.surface == "cli":
            return self.status == 2 and self.case.names.lower() in self.text.lower()
        if not 400 <= self.status < 500:
            return False
        try:
            error = json.loads(self.text)["error"]
        except (ValueError, KeyError, TypeError):
            return False
        return self.case.names.lower() in json.dumps(error).lower()

    @property
    def server_error(self) -> bool:
        return self.case.surface == "http" and (self.status is None or self.status >= 500)


# the server's own state (the SQLite queue and its journal, the lock): changed by every request, not outputs
SERVER_STATE = (".sqlite", ".sqlite3", ".sqlite-wal", ".sqlite3-wal", ".sqlite-shm", ".sqlite3-shm", ".lock")


def tree(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """{relative path: mtime_ns} of every file under ``folder`` (names ending in ``skip`` left out)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: folder.stat().st_mtime_ns}
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*")
            if path.is_file() and not path.name.endswith(skip)}


def half_written(folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob(".*.tmp")]


def run_cli(case: Case, workspace: Workspace, index: int, timeout: float) -> Outcome:
    out = workspace.root / f"cli-{index:03d}"
    args = [workspace.arg(arg).replace(str(workspace.root / "out"), str(out)) for arg in case.args]
    watched = Path(args[args.index("-o") + 1]) if "-o" in args else out
    before = tree(watched)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "0", "PYTHONUNBUFFERED": "1",
           "DIFFLAB_LORA_DIR": str(workspace.root / "loras")}
    env.pop("HF_HUB_OFFLINE")  # as a fresh shell has it: `pull` must find out for itself that the hub is away
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "difflab.cli", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=workspace.root, env=env)
        status, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status, text = None, f"timed out after {timeout} s: {expired.stderr!r}"
    after = tree(watched)
    left = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    return Outcome(case, status, text, TRACEBACK in text, left, time.perf_counter() - start)


class Server:
    """A real ``difflab serve`` on a free loopback port, started in the work folder (its current directory)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.data_dir = workspace.root / "serve-data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workspace.root / "server.log"

    def __enter__(self) -> "Server":
        import httpx

        env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFLAB_LORA_DIR": str(self.workspace.root / "loras")}
        command = [sys.executable, "-m", "difflab.cli", "serve", "--port", str(self.port), "--data-dir",
                   str(self.data_dir), "--models-dir", str(self.workspace.root / "models"), "--default-model", "tiny"]
        self.log_handle = open(self.log, "ab")
        self.process = subprocess.Popen(command, stdout=self.log_handle, stderr=subprocess.STDOUT, env=env,
                                        cwd=self.workspace.root)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    small = self.workspace.files["small"].read_bytes()  # an upload the mask case refers to
                    answer = httpx.post(f"{self.url}/v1/inputs", content=small, headers={"Content-Type": "image/png"})
                    self.uploads = {"small": answer.json()["name"]}
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log_handle.close()


def http_body(case: Case, workspace: Workspace, server: "Server") -> tuple[Optional[bytes], dict[str, str]]:
    headers = dict(case.headers)
    if case.body is None:
        return None, headers
    if isinstance(case.body, bytes):
        return case.body, headers
    if isinstance(case.body, str) and case.body.startswith("{file:"):
        return workspace.files[case.body[6:-1]].read_bytes(), headers
    text = json.dumps(case.body)
    for name, uploaded in server.uploads.items():
        text = text.replace("{upload:" + name + "}", uploaded)
    for name, path in workspace.files.items():
        if f'"{{b64:{name}}}"' in text:
            text = text.replace("{b64:" + name + "}", base64.b64encode(path.read_bytes()).decode("ascii"))
    headers.setdefault("Content-Type", "application/json")
    return text.encode(), headers


def run_http(case: Case, workspace: Workspace, server: Server, timeout: float) -> Outcome:
    import httpx

    before = tree(server.data_dir, SERVER_STATE)
    log_start = server.log.stat().st_size
    content, headers = http_body(case, workspace, server)
    start = time.perf_counter()
    try:
        response = httpx.request(case.method, server.url + case.path, content=content, headers=headers,
                                 timeout=timeout)
        status, text = response.status_code, response.text
    except httpx.HTTPError as error:
        status, text = None, f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - start
    time.sleep(0.2)  # a worker that failed after the answer logs within this
    with open(server.log, "rb") as log:
        log.seek(log_start)
        logged = log.read().decode(errors="replace")
    after = tree(server.data_dir, SERVER_STATE)
    accepted = status in case.accepts
    left = [] if accepted else sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    return Outcome(case, status, text[:2000], TRACEBACK in logged, left, seconds)


# ---- report ---------------------------------------------------------------------------------------------------

def table(outcomes: list[Outcome], surface: str) -> list[str]:
    rows = [o for o in outcomes if surface in ("all", o.case.surface)]
    half = sum(1 for o in rows if any(name.endswith(".tmp") for name in o.left_behind))
    return [f"| {surface} | {len(rows)} | {sum(o.clear for o in rows)} | {sum(o.traceback for o in rows)} | "
            f"{sum(o.server_error for o in rows)} | {sum(bool(o.left_behind) for o in rows)} | {half} |"]


def report(outcomes: list[Outcome], half: list[str], seconds: float, command: str) -> str:
    lines = [
        "# Reliability: the bad-input table (issue 19)", "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s in all.", "",
        "| surface | cases | clear errors naming the field | tracebacks | 5xx | files left behind | half-written |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *table(outcomes, "cli"), *table(outcomes, "http"), *table(outcomes, "all"), "",
        f"Half-written (`.*.tmp`) files anywhere in the work folder after every case: {len(half)}.",
        f"Cases named in issue 19's text: {sum(o.case.issue for o in outcomes)}, "
        f"clear: {sum(o.clear for o in outcomes if o.case.issue)}.", "",
        "| case | surface | answer | clear | what the user saw (first line) |", "|---|---|---:|---|---|",
    ]
    for o in outcomes:
        first = _first_line(o)
        flags = ("yes" if o.clear else "**no**") + (" traceback" if o.traceback else "") + (
            f" left {', '.join(o.left_behind[:3])}" if o.left_behind else "")
        lines.append(f"| {o.case.id} | {o.case.surface} | {o.status} | {flags} | {first} |")
    return "\n".join(lines) + "\n"


def _first_line(outcome: Outcome) -> str:
    text = outcome.text
    if outcome.case.surface == "http":
        try:
            text = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    first = (errors or lines or [""])[0]
    return first[:160].replace("|", "\\|").replace("`", "'")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", choices=("cli", "http"), help="run one surface")
    parser.add_argument("-k", help="only cases whose id contains this text")
    parser.add_argument("--workers", type=int, default=2, help="CLI cases run at once (each a process)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (not written for a subset)")
    args = parser.parse_args()

    def chosen(cases: list[Case]) -> list[Case]:
        return [case for case in cases if not args.k or args.k.lower() in case.id.lower()]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="difflab-reliability-") as folder:
        workspace = Workspace(Path(folder)).build()
        outcomes: list[Outcome] = []
        if args.only in (None, "cli"):
            cases = chosen(CLI_CASES)
            with ThreadPoolExecutor(args.workers) as pool:
                outcomes += pool.map(lambda pair: run_cli(pair[1], workspace, pair[0], args.timeout),
                                     enumerate(cases))
        if args.only in (None, "http") and chosen(HTTP_CASES):
            with Server(workspace) as server:
                for case in chosen(HTTP_CASES):
                    outcomes.append(run_http(case, workspace, server, args.timeout))
                    if server.process.poll() is not None:  # one request took the server down: say so, start again
                        outcomes[-1].text += f" (the server process died, exit {server.process.returncode})"
                        server.__exit__()
                        server.__enter__()
        half = half_written(workspace.root)
    seconds = time.perf_counter() - start
    command = " ".join(["python bench/reliability.py", *sys.argv[1:]])
    text = report(outcomes, half, seconds, command)
    print(text)
    if not args.k and not args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
