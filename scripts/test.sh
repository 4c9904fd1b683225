#!/usr/bin/env bash
# README command 2: set everything up from a fresh clone (incl. ROS 2 wheels and the colcon
# build), then run the test suite, the multi-process DDS tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. scripts/ros_env.sh
export GSPOSE_REQUIRE_ROS=1  # the DDS tests must run here, not skip
exec python -m pytest -q "$@"
