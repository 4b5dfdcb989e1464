#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite: lint, then every test.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -k frame
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-$([ "${CI:-}" = true ] && echo ci || echo dev)}"
exec .venv/bin/python -m pytest "$@"
