#!/usr/bin/env bash
# Set up .venv (see setup.sh) with the test extras and run the default test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the heavier checks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
exec .venv/bin/python -m pytest -q -n 2 "$@"
