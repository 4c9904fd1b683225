"""Detector node: camera image -> candidate object masks (GS-Pose stage 2).

In:  /camera/image_raw (+ /camera/camera_info, paired by stamp), sensor-data QoS.
Out: /gspose/detections (DetectionArray: the image, its camera_info and up to max_candidates
     detections per registered object found, as FrontEnd.candidates orders them: masks cut off
     by the image border after whole ones, best score first within each), /gspose/mask (mono8,
     all detections).
Frames arriving while a frame is being processed replace each other (latest wins).
Objects the refiner is tracking (/gspose/object_poses says so) are not searched for:
detection resumes for an object once tracking loses it (or stops reporting it).
"""

from __future__ import annotations

import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from ..core.errors import InputError
from ..core.estimator import EstimatorConfig
from ..core.frontend import make_frontend
from ..msg import DetectionArray, ObjectDetection, ObjectPoseArray, ObjectPoseEstimate
from .common import (
    SENSOR_QOS,
    STAGE_QOS,
    CameraPairing,
    LatestSlot,
    RegisteredObjects,
    declare,
    declare_frontend,
    log_counts_periodically,
    run_nodes,
)
from .conversions import mask_to_image


class DetectorNode(Node):
    def __init__(self, **kwargs):
        super().__init__("gspose_detector", **kwargs)
        registry_dir = declare(self, "registry_dir", "~/.gspose_ros/objects", "Directory of registered objects")
        only = declare(self, "object_ids", [""], "Objects to look for ([''] or []: every registered object)")
        self.min_score = declare(self, "min_detection_score", EstimatorConfig.min_detection_score,
                                 "Detection score a mask needs to be passed on (0..1; weight_free: colour x texture similarity)")
        self.max_candidates = declare(self, "max_candidates", EstimatorConfig.max_candidates,
                                      "Candidate masks sent per object (whole ones before ones cut off by the image border); "
                                      "retrieval keeps the best-checking one")
        self.frontend = make_frontend(declare_frontend(self, detection=True))
        self.skip_tracked_s = declare(self, "skip_tracked_s", 1.0,
                                      "Do not search for an object tracked within this many seconds (0: always search)")
        tolerance = declare(self, "camera_info_tolerance_s", 0.05,
                            "Largest stamp difference accepted between an image and its camera_info")
        self.objects = RegisteredObjects(self, registry_dir, self._prepare, [o for o in only if o])
        self.pairing = CameraPairing(tolerance)
        self.pub = self.create_publisher(DetectionArray, "/gspose/detections", STAGE_QOS)
        self.mask_pub = self.create_publisher(Image, "/gspose/mask", STAGE_QOS)
        self.slot = LatestSlot(self.process, lambda e: self.get_logger().warning(f"frame skipped: {e}"))
        self._tracked: dict[str, float] = {}  # object id -> monotonic time it was last reported tracked
        self.sent = 0
        log_counts_periodically(self, lambda: f"images: {self.slot.counts()}; camera_info: "
                                              f"{self.pairing.received} received; detection arrays sent: {self.sent}; "
                                              f"objects: {[i for i, _ in self.objects.items()]}")
        self.create_subscription(ObjectPoseArray, "/gspose/object_poses", self.on_object_poses, 10)
        self.create_subscription(CameraInfo, "/camera/camera_info", self.pairing.add_info, SENSOR_QOS)
        self.create_subscription(Image, "/camera/image_raw", self.slot.put, SENSOR_QOS)

    def _prepare(self, object_id: str, obj):
        prepared = self.frontend.prepare(obj, False)
        if getattr(prepared, "texture", False) is None:
            # registered before the texture model: scored on colour alone, against a bar set for
            # colour x texture, so more of its look-alike blobs reach retrieval
            self.get_logger().warning(f"object {object_id!r} has no texture model: detected by colour alone; "
                                      "register it again for the full detector")
        elif getattr(prepared, "views", False) is None:
            # registered before the per-view models: scored against its pooled histograms, which
            # score its right masks lower than min_detection_score was set for
            self.get_logger().warning(f"object {object_id!r} has no per-view detector models: its masks score lower "
                                      "against the pooled ones; register it again for the full detector")
        return prepared

    def on_object_poses(self, msg: ObjectPoseArray) -> None:
        now = time.monotonic()
        for p in msg.poses:
            if p.status in (ObjectPoseEstimate.STATUS_REFINED, ObjectPoseEstimate.STATUS_TRACKED):
                self._tracked[p.object_id] = now
            else:
                self._tracked.pop(p.object_id, None)

    def process(self, image_msg: Image) -> None:
        now = time.monotonic()
        wanted = [(i, c) for i, c in self.objects.items() if now - self._tracked.get(i, -1e9) > self.skip_tracked_s]
        if not wanted:
            return
        try:
            rgb, K, info = self.pairing.frame(image_msg)
        except InputError as exc:
            self.get_logger().warning(f"image skipped: {exc}", throttle_duration_sec=5.0)
            return
        out = DetectionArray(header=image_msg.header, image=image_msg, camera_info=info)
        union = np.zeros(rgb.shape[:2], bool)
        for object_id, prepared in wanted:
            found = self.frontend.candidates(rgb, prepared, self.min_score, int(self.max_candidates))
            for d in found:
                out.detections.append(ObjectDetection(object_id=object_id, score=float(d.score),
                                                      box=[float(v) for v in d.box],
                                                      mask=mask_to_image(d.mask, image_msg.header)))
                union |= d.mask
        self.pub.publish(out)
        self.sent += 1
        self.mask_pub.publish(mask_to_image(union, image_msg.header))


def main(argv=None) -> int:
    return run_nodes([DetectorNode], argv)
