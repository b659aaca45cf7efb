#!/usr/bin/env bash
# Create .venv (if missing) and install ideaforge with its test tools. Idempotent; no docker, no keys.
#   ./ops/install.sh          CPU host: CPU torch, never a CUDA build
#   ./ops/install.sh --gpu    CUDA host: the GPU stack of ops/requirements-gpu.txt instead (see the block below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
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
.venv/bin/python -m pip install --quiet -e ".[dev]"
