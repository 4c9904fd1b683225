"""Every gspose_ros node in one process on one multi-threaded executor (no inter-process
copies of images), for robots that prefer that: `ros2 run gspose_ros pose_pipeline`."""

from __future__ import annotations

from .common import run_nodes
from .detector import DetectorNode
from .refiner import RefinerNode
from .registration import RegistrationNode
from .retrieval import RetrievalNode


def main(argv=None) -> int:
    return run_nodes([RegistrationNode, DetectorNode, RetrievalNode, RefinerNode], argv)
