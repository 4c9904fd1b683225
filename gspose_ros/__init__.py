"""gspose_ros: GS-Pose 6D pose estimation and tracking of novel objects.

The ROS-free engine lives in :mod:`gspose_ros.core`; console tools in
:mod:`gspose_ros.tools`.
"""

import os

# The CPU backend does its parallel work in numba kernels; the torch ops around them
# act on small tensors, where torch's own OpenMP pool only spins against numba's
# threads (measured: tracking 10 -> 15 fps on 2 cores). It must be set before torch
# is imported to take effect; an explicit OMP_NUM_THREADS from the user wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

__version__ = "0.1.0"
