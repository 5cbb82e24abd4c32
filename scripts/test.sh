#!/usr/bin/env bash
# Set up .venv (see setup.sh) with the test extras and run the default test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the heavier checks.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test
# two pytest workers with one torch thread each: two workers of two threads each on two cores thrash (9.5 min
# instead of about 3 for the same suite, measured here)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n 2 "$@"
