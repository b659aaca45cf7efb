#!/usr/bin/env bash
# Lint, then pytest with real Temporal, MLflow and S3 servers. Arguments go to pytest:
#   ./ops/test.sh                  everything (what CI runs)
#   ./ops/test.sh -m "not slow"    the fast tier: no real training, still real servers where a test is about them
# Installs into .venv first when it is missing or pyproject.toml / ops/install.sh changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.ideaforge-installed
want=$(cat pyproject.toml ops/install.sh | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  bash ops/install.sh
  echo "$want" >"$stamp"
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
