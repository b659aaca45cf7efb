#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: lint, then pytest (real Temporal, MLflow and S3 servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
