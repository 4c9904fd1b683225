#!/usr/bin/env bash
# Build the ROS 2 package (interfaces + Python) with colcon against the ROS 2 wheels in .venv.
# Result: install/ ; use it with `. scripts/ros_env.sh`. --symlink-install: the installed Python
# modules, launch and config files are links to this tree, so edits need no rebuild (new
# msg/srv files or executables do).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.venv"
PY="$VENV/bin/python"
# The Kilted wheels' CMake exports name include directories of their build machine
# (/opt/python/cp311-cp311/...); point them at this venv's Python and numpy headers. The numpy
# headers live in .venv inside this source tree, which CMake refuses in an exported target, so
# they are reached through a link outside it.
PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_LINK="${XDG_CACHE_HOME:-$HOME/.cache}/gspose_ros/numpy_include"
mkdir -p "$(dirname "$NP_LINK")"
ln -sfn "$("$PY" -c 'import numpy; print(numpy.get_include())')" "$NP_LINK"
grep -rlE "/opt/python/cp311-cp311|$VENV/lib/python3.11/site-packages/numpy/_core/include" "$VENV/share" \
    --include=*.cmake 2>/dev/null | while read -r f; do  # (grep finds none once fixed: || true below)
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${NP_LINK}#g" \
         -e "s#$VENV/lib/python3.11/site-packages/numpy/_core/include#${NP_LINK}#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#${PY_INC}#g" "$f"
done || true
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
mkdir -p build_ros
"$VENV/bin/colcon" --log-base build_ros/log build --paths . --build-base build_ros --install-base install --symlink-install \
  --cmake-args -DPython3_EXECUTABLE="$PY" -DPython3_NumPy_INCLUDE_DIR="$NP_LINK" -DBUILD_TESTING=OFF \
  --event-handlers console_direct- >build_ros/colcon.log 2>&1 || { tail -40 build_ros/colcon.log; exit 1; }
echo "built gspose_ros into install/"
