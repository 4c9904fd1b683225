#!/usr/bin/env bash
# README command 1: set everything up from a fresh clone, then run the main job (built-in demo object).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/gspose-demo "$@"
