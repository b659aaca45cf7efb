#!/usr/bin/env bash
# Create .venv (if missing) and install ideaforge with its test tools. Idempotent; no docker, no keys.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned to the CPU build (2.13.0); never let a resolver pull a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# The package-dir mapping (workflows/ -> ideaforge.workflows, ...) makes setuptools install the editable package
# through a meta-path finder, so only `ideaforge` lands on sys.path; setuptools then prints an "Editable
# installation" information banner on every install. It is information, not a problem: keep it out of the log.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e ".[dev]"
