# Source me: `. scripts/ros_env.sh` puts the venv's ROS 2 (pip wheels) and the built
# gspose_ros package (install/) on this shell's paths.
_gspose_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_gspose_root/.venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_gspose_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
# colcon's setup scripts read unset variables: allow that while sourcing them under `set -u`
case $- in *u*) _gspose_nounset=1; set +u ;; *) _gspose_nounset= ;; esac
# shellcheck disable=SC1091
. "$_gspose_root/install/setup.bash"
[ -n "$_gspose_nounset" ] && set -u
unset _gspose_root _gspose_nounset
