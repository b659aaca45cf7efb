#!/usr/bin/env bash
# Create .venv (if missing) and install ideaforge with its test tools. Idempotent; no docker, no keys.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# bubblewrap: the sandbox of every training attempt (the training worker refuses to run without it)
command -v bwrap >/dev/null || (apt-get update && apt-get install -y bubblewrap) || echo "warning: install bubblewrap (apt-get install -y bubblewrap): training refuses to run without it" >&2
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned to the CPU build (2.13.0); never let a resolver pull a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
