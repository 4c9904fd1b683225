#!/usr/bin/env bash
# README command 2: set everything up from a fresh clone, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
