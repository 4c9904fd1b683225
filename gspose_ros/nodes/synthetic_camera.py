"""Synthetic camera node: a built-in object moving in front of a cluttered background,
rendered with an independent mesh renderer (pyrender), published like a camera driver.

Out: /camera/image_raw (rgb8) and /camera/camera_info with identical stamps, and the
     ground truth T_camera_object on /gspose/demo/ground_truth (PoseStamped, same stamp)
     so that a demo can score the estimates.
"""

from __future__ import annotations

import os

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from .common import SENSOR_QOS, declare, run_nodes
from .conversions import K_to_camera_info, matrix_to_pose_stamped, rgb_to_image


class SyntheticCameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__("gspose_synthetic_camera", **kwargs)
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
        from ..core import synth
        from ..core.render import look_at_pose
        from ..core.track import smooth_trajectory

        object_id = declare(self, "builtin_object", 3, "Built-in object: 1 textured box, 2 low-texture bracket, 3 duck")
        n = declare(self, "frames", 90, "Frames in the sequence (played forwards, then backwards, and again)")
        rate = declare(self, "rate_hz", 30.0, "Publishing rate")
        self.frame_id = declare(self, "frame_id", "camera_optical_frame", "header.frame_id of images and poses")
        seed = declare(self, "seed", 0, "Sequence seed (motion and background)")
        deg_per_s = declare(self, "rotation_deg_per_s", 15.0, "Object rotation speed")
        mm_per_s = declare(self, "translation_mm_per_s", 30.0, "Object translation speed (peak)")
        if object_id not in synth.OBJECTS:
            raise ValueError(f"builtin_object must be one of {sorted(synth.OBJECTS)}")
        rng = np.random.default_rng(seed)
        start = look_at_pose(0.5, rng.uniform(0, 360), rng.uniform(-30, 60), rng.uniform(-30, 30))
        self.poses = smooth_trajectory(start, int(n), rng, deg_per_s / rate, mm_per_s / rate)
        self.K = synth.DEFAULT_K
        self.get_logger().info(f"rendering {n} frames of built-in object {object_id}")
        self.frames = [rgb for rgb, _ in synth.render_sequence(synth.OBJECTS[object_id][1](), self.poses, self.K, seed)]
        self.index = 0
        self.image_pub = self.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
        self.info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", SENSOR_QOS)
        self.gt_pub = self.create_publisher(PoseStamped, "/gspose/demo/ground_truth", 10)
        self.create_timer(1.0 / float(rate), self.tick)

    def tick(self) -> None:
        # forwards then backwards: a plain loop would teleport the object from the last pose back
        # to the first (20 deg and centimetres at the defaults) every 3 s, which no real object does
        # and which no tracker should follow
        period = max(1, 2 * len(self.frames) - 2)
        i = self.index % period
        i = i if i < len(self.frames) else period - i
        self.index += 1
        header = self.image_header()
        rgb = self.frames[i]
        self.info_pub.publish(K_to_camera_info(self.K, rgb.shape[1], rgb.shape[0], header))
        self.image_pub.publish(rgb_to_image(rgb, header))
        self.gt_pub.publish(matrix_to_pose_stamped(self.poses[i], header))

    def image_header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)


def main(argv=None) -> int:
    return run_nodes([SyntheticCameraNode], argv)
