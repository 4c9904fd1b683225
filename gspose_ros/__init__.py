"""gspose_ros: GS-Pose 6D pose estimation and tracking of novel objects.

The ROS-free engine lives in :mod:`gspose_ros.core`; console tools in
:mod:`gspose_ros.tools`.
"""

__version__ = "0.1.0"
