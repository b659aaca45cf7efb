#!/usr/bin/env bash
# Install (if needed) and run a real 2-epoch x 4-idea campaign on the CPU pre-training env with the embedded
# offline ideator: no API keys, no docker, no GPU. Watch it in the Temporal UI and the MLflow UI (URLs printed).
# Run again: it shows the finished campaign. `./ops/demo.sh --restart` runs it again from scratch; any other
# `ideaforge start` flag works too (e.g. `--name mine`, `--profile bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/install.sh
exec .venv/bin/ideaforge start --config examples/quickstart.toml "$@"
