#!/usr/bin/env bash
# Create .venv (if missing) and install ideaforge with its test tools. Idempotent; no docker, no keys.
#   ./ops/install.sh          CPU host: CPU torch, never a CUDA build
#   ./ops/install.sh --gpu    CUDA host: the GPU stack of ops/requirements-gpu.txt instead (see the block below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# bubblewrap: the sandbox of every training attempt (the training worker refuses to run without it)
command -v bwrap >/dev/null || (apt-get update && apt-get install -y bubblewrap) || echo "warning: install bubblewrap (apt-get install -y bubblewrap): training refuses to run without it" >&2
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip

# ---- GPU host (--gpu): CUDA torch + vllm + transformers + tiktoken + grader, pinned together; then check that
# torch sees a GPU. Installs nothing of the CPU build below.
if [ "${1:-}" = "--gpu" ]; then
  .venv/bin/python -m pip install --quiet -r ops/requirements-gpu.txt
  .venv/bin/python -m pip install --quiet -e ".[dev,gpu]"
  .venv/bin/python - <<'PYCHECK'
import sys

import torch
import vllm

if not torch.cuda.is_available() or torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no GPU: check the driver")
print(f"GPU stack ready: torch {torch.__version__} CUDA {torch.version.cuda}, vllm {vllm.__version__}, "
      f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PYCHECK
  exit 0
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--gpu]" >&2
  exit 2
fi

# torch is pinned to the CPU build (2.13.0); never let a resolver pull a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# The package-dir mapping (workflows/ -> ideaforge.workflows, ...) makes setuptools install the editable package
# through a meta-path finder, so only `ideaforge` lands on sys.path; setuptools then prints an "Editable
# installation" information banner on every install. It is information, not a problem: keep it out of the log.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e ".[dev]"

# --- PostgreSQL 15 (tests/test_deployment.py: a throwaway cluster, MLflow's backend store, pg_dump/pg_restore)
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # the tests start their own throwaway clusters: no system "main" cluster on port 5432
    mkdir -p /etc/postgresql-common
    [ -e /etc/postgresql-common/createcluster.conf ] ||
      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  else
    echo "install.sh: PostgreSQL 15 missing (/usr/lib/postgresql/15/bin); run: apt-get install postgresql-15" >&2
  fi
fi
# --- end PostgreSQL 15
