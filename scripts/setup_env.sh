#!/usr/bin/env bash
# Creates (or refreshes) the project's virtualenv at .venv from the pinned requirements.
# Usage: scripts/setup_env.sh [--dev]   (--dev adds the test-only dependencies)
# Idempotent: re-running with unchanged requirements only checks them (a stamp file records the last install).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQ=requirements.txt
[ "${1:-}" = "--dev" ] && REQ=requirements-dev.txt
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
STAMP=".venv/.installed-$(cat "$REQ" requirements.txt | sha1sum | cut -c1-12)-$(basename "$REQ")"
if [ ! -f "$STAMP" ]; then
    echo "[setup] installing $REQ into .venv (first run: a few minutes, torch is large)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
    touch "$STAMP"
fi
# gRPC client stubs, generated from TorchServe's own protos (shipped inside model-server.jar).
if [ ! -f clients/grpc_stubs/inference_pb2_grpc.py ] && [ -f scripts/gen_grpc_stubs.py ]; then
    .venv/bin/python scripts/gen_grpc_stubs.py
fi
