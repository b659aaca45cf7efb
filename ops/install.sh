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
