"""Benchmark: property-based fuzzing of a live `difflab serve` from its own OpenAPI schema (issue 19).

Starts a real server (uvicorn on a free loopback port, fresh data folder, the bundled tiny-shapes model as its only
model folder), reads its /openapi.json with schemathesis, and sends Hypothesis-generated requests to every operation,
positive (fitting the schema) and negative (breaking it). Bodies the server would accept are made cheap before they
are sent (tests/serve/api_fuzz.py: ``cheapen``), out-of-range values are sent as drawn. Prints and writes a table of
answers by operation and status; the target is 0 answers 5xx (and 0 jobs failing with an internal error) over at
least 1000 requests. The bounded CI version is tests/serve/test_api_fuzz.py.

    .venv/bin/python bench/fuzz_api.py                      # up to 80 cases per operation and mode: about 1200 requests
    .venv/bin/python bench/fuzz_api.py --cases 4 --out /tmp/fuzz.md   # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "fuzz-api.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=80, help="generated requests per operation and mode (at most)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))  # tests/ is a package at the repository root
    import schemathesis

    from difflab.engine.registry import BUNDLED_DIR
    from tests.serve.api_fuzz import fuzz, table
    from tests.serve.live_server import LiveServer

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "models").mkdir()
        (root / "models" / "tiny").symlink_to(BUNDLED_DIR / "tiny-shapes", target_is_directory=True)
        with LiveServer(root / "data", root / "models") as server:
            result = fuzz(server.url, args.cases, seed=args.seed)
    verdict = "PASS" if result.server_errors == 0 and not result.failed_jobs and result.cases >= 1000 else "FAIL"
    lines = [
        "# API fuzzing: `difflab serve` against its own OpenAPI schema",
        "",
        f"`python bench/fuzz_api.py --cases {args.cases} --seed {args.seed}` on {datetime.date.today()}, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip() + f", schemathesis {schemathesis.__version__}: "
        f"{result.cases} generated requests (up to {args.cases} per operation and generation mode, positive and "
        f"negative; an operation without parameters has one) in "
        f"{result.seconds:.0f} s to a live server on the bundled tiny-shapes model.",
        "",
        f"**{verdict}**: {result.server_errors} answers 5xx or no answer, {len(result.failed_jobs)} jobs failed with "
        f"an internal error (targets: 0 and 0 over >= 1000 requests).",
        "",
        table(result),
        "",
        "Columns are HTTP statuses. Accepted bodies were made cheap before sending (a valid width stays valid but at "
        "most 64 px, steps at most 3, at most 2 images); out-of-range values were sent as drawn.",
    ]
    if result.findings:
        lines += ["", "## 5xx answers", ""] + [f"- {f.status} `{f.request}` -> {f.answer}" for f in result.findings]
    if result.failed_jobs:
        lines += ["", "## Jobs failed with an internal error", ""] + [f"- {job['id']}: {job['error']}"
                                                                       for job in result.failed_jobs]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
