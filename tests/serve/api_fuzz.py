"""Property-based fuzzing of a live ``difflab serve`` from its own OpenAPI schema (schemathesis + Hypothesis).

For every operation in ``/openapi.json``, Hypothesis draws requests that fit the schema (positive) and requests
that break it (negative: wrong types, missing fields, out-of-range values), and each one is sent over HTTP to the
server. The property: no answer is a 5xx, and no job that a request queued fails with an internal error.

What keeps it cheap: a generated body that the server would accept is made small before it is sent (``cheapen``:
a valid width stays valid but at most 64, steps at most 3, at most 2 images), so accepted jobs take a fraction of
a second on the bundled tiny-shapes model; values that are out of range are sent as drawn, so validation sees them
all. Used by tests/serve/test_api_fuzz.py (a bounded run, CI) and bench/fuzz_api.py (>= 1000 cases, the table).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

SMALL_SIDE = 64
SMALL_STEPS = 3
SMALL_IMAGES = 2
SIZE_FIELDS = ("width", "height")
STEP_FIELDS = ("steps", "hires_steps")
COUNT_FIELDS = ("n", "batch_size", "n_iter")


@dataclass
class Finding:
    operation: str
    mode: str
    status: Optional[int]  # None: no answer (the connection failed or timed out)
    request: str  # method, path, query and body, shortened
    answer: str


@dataclass
class FuzzResult:
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # operation -> status -> n
    findings: list[Finding] = field(default_factory=list)  # 5xx answers and requests without an answer
    failed_jobs: list[dict] = field(default_factory=list)  # jobs that failed with an internal error
    not_generated: list[str] = field(default_factory=list)  # operation and mode Hypothesis had nothing for
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return sum(sum(counter.values()) for counter in self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(count for counter in self.statuses.values() for status, count in counter.items()
                   if status is None or status >= 500)


def _int(value: Any) -> bool:
    """An int, or a float pydantic takes for one (48.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value.is_integer())


def cheapen(body: Any) -> Any:
    """``body`` with the values the server would accept made cheap to generate; out-of-range values unchanged."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for name in SIZE_FIELDS:
        value = body.get(name)
        if _int(value) and 8 <= value <= 4096 and value % 8 == 0:
            body[name] = min(int(value), SMALL_SIDE)
    for name in STEP_FIELDS:
        value = body.get(name)
        if _int(value) and 1 <= value <= 1000:
            body[name] = min(int(value), SMALL_STEPS)
    for name in COUNT_FIELDS:
        value = body.get(name)
        if _int(value) and 1 <= value <= 64:
            body[name] = min(int(value), SMALL_IMAGES)
    if isinstance(body.get("hires_scale"), (int, float)) and 1 < body["hires_scale"] <= 4:
        body["hires_scale"] = min(body["hires_scale"], 1.5)
    return body


# fields of a /v1 body that name things on the server (random strings name nothing there)
NAMING_FIELDS = ("refiner", "loras", "controls", "init_image", "mask")
A1111_FIELDS = ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "sampler_name", "sampler_index",
                "scheduler", "width", "height", "batch_size", "n_iter", "send_images", "save_images",
                "denoising_strength", "init_images", "mask", "inpainting_mask_invert", "include_init_images")


def realistic(path: str, body: Any) -> Any:
    """A schema-valid body nudged towards one the server accepts: random strings in fields that name server things
    (models, uploads, LoRAs) and unknown A1111 fields are what makes nearly every random body a 422, so half the
    positive cases get them replaced or dropped, and so reach the queue, the worker and the engine."""
    import base64
    import io

    from PIL import Image

    from difflab.engine.schedulers import resolve_sampler

    if not isinstance(body, dict):
        return body
    body = dict(body)
    if path == "/v1/generate":
        for name in NAMING_FIELDS:
            body.pop(name, None)
        if "model" in body:
            body["model"] = "tiny"
    elif path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        body = {key: value for key, value in body.items() if key in A1111_FIELDS}
        body.pop("mask", None)
        if path.endswith("img2img"):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
            body["init_images"] = [base64.b64encode(buffer.getvalue()).decode("ascii")]
    elif path == "/sdapi/v1/options":
        return {"sd_model_checkpoint": "tiny"}
    else:
        return body
    for name in ("scheduler", "sampler_name", "sampler_index"):
        try:
            if isinstance(body.get(name), str) and not (path.startswith("/sdapi") and name == "scheduler"):
                resolve_sampler(body[name])
        except ValueError:
            body.pop(name)
    for name in SIZE_FIELDS:
        if _int(body.get(name)) and 8 <= body[name] <= 4096:
            body[name] = max(8, min(int(body[name]) - int(body[name]) % 8, SMALL_SIDE))
    if not (isinstance(body.get("prompt"), str) and body["prompt"].strip()):
        body["prompt"] = "a red circle"  # difflab refuses an empty prompt (A1111's default)
    return body


def _shorten(text: Any, limit: int = 300) -> str:
    text = repr(text) if not isinstance(text, str) else text
    return text if len(text) <= limit else text[:limit - 3] + "..."


def fuzz(base_url: str, cases_per_operation: int, *, seed: int = 0, timeout_s: float = 120.0,
         headers: Optional[dict[str, str]] = None) -> FuzzResult:
    """Send ``cases_per_operation`` generated requests per operation and generation mode to ``base_url``."""
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode

    started = time.monotonic()
    headers = dict(headers or {})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    session = requests.Session()
    result = FuzzResult()
    sent = [0]
    for operation_result in schema.get_all_operations():
        operation = operation_result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.seed(seed)
            @hypothesis.settings(max_examples=cases_per_operation, database=None, deadline=None,
                                 phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @hypothesis.given(operation.as_strategy(generation_mode=mode))
            def send(case) -> None:
                if isinstance(case.body, dict):
                    sent[0] += 1
                    if mode == GenerationMode.POSITIVE and sent[0] % 2:
                        case.body = realistic(operation.path, case.body)
                    case.body = cheapen(case.body)
                try:
                    response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout_s)
                    status, answer = response.status_code, response.text
                except requests.RequestException as error:
                    status, answer = None, f"{type(error).__name__}: {error}"
                result.statuses[operation.label][status] += 1
                if status is None or status >= 500:
                    request = f"{case.method} {case.formatted_path} query={case.query} body={_shorten(case.body)}"
                    result.findings.append(Finding(operation.label, mode.value, status, request, _shorten(answer)))

            try:
                send()
            except hypothesis.errors.Unsatisfiable:
                # negative mode on an operation with nothing to break (no parameters, no body): no such request
                result.not_generated.append(f"{operation.label} ({mode.value})")
    jobs = session.get(f"{base_url}/v1/jobs", params={"state": "failed", "limit": 1000}, headers=headers).json()
    result.failed_jobs = [job for job in jobs["jobs"] if (job.get("error") or "").startswith("internal error")]
    result.seconds = time.monotonic() - started
    return result


def table(result: FuzzResult) -> str:
    """The result as a markdown table: one row per operation, answers counted by status."""
    statuses = sorted({status for counter in result.statuses.values() for status in counter},
                      key=lambda status: -1 if status is None else status)
    names = ["no answer" if status is None else str(status) for status in statuses]
    lines = ["| operation | cases | " + " | ".join(names) + " | 5xx |",
             "|---|---:|" + "---:|" * len(names) + "---:|"]
    for operation, counter in sorted(result.statuses.items()):
        errors = sum(count for status, count in counter.items() if status is None or status >= 500)
        lines.append(f"| `{operation}` | {sum(counter.values())} | "
                     + " | ".join(str(counter.get(status, 0)) for status in statuses) + f" | {errors} |")
    total = Counter()
    for counter in result.statuses.values():
        total.update(counter)
    lines.append(f"| **all** | **{result.cases}** | " + " | ".join(f"**{total.get(s, 0)}**" for s in statuses)
                 + f" | **{result.server_errors}** |")
    return "\n".join(lines)
