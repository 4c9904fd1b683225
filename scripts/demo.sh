#!/usr/bin/env bash
# README command 1: set everything up from a fresh clone (incl. ROS 2 wheels and the colcon
# build), then run the main job: the node graph over DDS with a synthetic camera, a built-in
# object registered through /register_object, and an accuracy/latency summary.
# (gspose-demo is the ROS-free core demo.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
. scripts/ros_env.sh
exec python -m gspose_ros.tools.ros_demo "$@"
