"""Start gspose_ros node executables as separate processes, as `ros2 launch` would, for the
demo and the multi-process tests (the `launch` package is not available from pip)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from ament_index_python.packages import get_package_prefix, get_package_share_directory

EXECUTABLES = {
    "registration": ("registration_node", "gspose_registration"),
    "detector": ("detector_node", "gspose_detector"),
    "retrieval": ("retrieval_node", "gspose_retrieval"),
    "refiner": ("refiner_node", "gspose_refiner"),
    "synthetic_camera": ("synthetic_camera_node", "gspose_synthetic_camera"),
    "pipeline": ("pose_pipeline", None),
}


DDS_PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"


def default_config() -> str:
    return os.path.join(get_package_share_directory("gspose_ros"), "config", "gspose.yaml")


def dds_profile() -> str:
    """config/fastdds.xml: Fast DDS transports sized for camera images (why: in the file).
    The launch file gives it to every process it starts; so do NodeGraph and the demo."""
    return os.path.join(get_package_share_directory("gspose_ros"), "config", "fastdds.xml")


def _param(node: str, name: str, value) -> str:
    """A -p override. Qualified by the node's name: a bare `name:=value` loses to the same
    parameter in the node's own section of the params file (measured: the retrieval node kept
    the file's `hypotheses`), so overrides for such parameters were silently ignored."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"{node}:{name}:={value}"


class NodeGraph:
    """Node processes with a parameter file plus per-run overrides; stop() ends them all."""

    def __init__(self, config: str | None = None, log_dir: str | None = None, env: dict | None = None):
        self.config = config or default_config()
        self.log_dir = log_dir
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault(DDS_PROFILE_VAR, dds_profile())  # a profile of the caller's own wins
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, **params) -> subprocess.Popen:
        exe, node = EXECUTABLES[name]
        if node is None and params:
            # several nodes in one process: a bare override loses to each node's own section of the
            # params file, so it would be silently ignored; pass a params file of your own instead
            raise ValueError(f"{name} runs several nodes: give its parameters in a params file "
                             f"(NodeGraph(config=...)), not as overrides {sorted(params)}")
        path = os.path.join(get_package_prefix("gspose_ros"), "lib", "gspose_ros", exe)
        cmd = [path, "--ros-args", "--params-file", self.config]
        for key, value in params.items():
            cmd += ["-p", _param(node, key, value)]
        out = subprocess.DEVNULL
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
