#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: makes .venv from requirements-dev.txt, lints, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k boxes -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup_env.sh --dev
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
exec .venv/bin/python -m pytest -ra "$@"
