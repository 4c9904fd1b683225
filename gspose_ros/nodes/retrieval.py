"""Initial-pose node: detections -> initial poses by template retrieval (GS-Pose stage 3).

In:  /gspose/detections (DetectionArray; several candidates per object, best first), and
     /gspose/recut_detections (DetectionArray: masks the refiner cut again around a pose it
     rejected, the Estimator's second pass).
Out: /gspose/initial_poses (ObjectPoseArray, STATUS_INITIAL, or STATUS_INITIAL_RECUT for re-cut
     masks; per object, the `hypotheses` best distinct hypotheses of its best-checking candidate,
     best first, as consecutive entries with the same object_id, mask and box (the Estimator's
     choice), then the alternatives the refiner challenges the refined pose with, the best
     hypothesis >= `alternative_near_deg` from those and the best >= 90 deg from them
     (STATUS_INITIAL_ALTERNATIVE, in that order; retrieve.alternative_hypotheses); for
     re-cut masks, one entry per mask, its best hypothesis, the best-checking mask first (the
     Estimator's second pass refines them in that order until one checks out); with the image and
     camera_info for the refiner). Latest wins, per input topic, when detections arrive faster
     than retrieval runs.
"""

from __future__ import annotations

import threading

from rclpy.node import Node

from ..core.errors import InputError
from ..core.estimator import EstimatorConfig
from ..core.frontend import make_frontend
from ..core.retrieve import align_hypotheses, alternative_hypotheses, distinct_hypotheses
from ..msg import DetectionArray, ObjectDetection, ObjectPoseArray, ObjectPoseEstimate
from .common import STAGE_QOS, LatestSlot, RegisteredObjects, declare, declare_frontend, log_counts_periodically, run_nodes
from .conversions import carried_frame, image_to_mask, matrix_to_pose


class RetrievalNode(Node):
    def __init__(self, **kwargs):
        super().__init__("gspose_retrieval", **kwargs)
        registry_dir = declare(self, "registry_dir", "~/.gspose_ros/objects", "Directory of registered objects")
        self.top_k = declare(self, "retrieval_top_k", 32, "Template matches re-ranked by render-and-compare")
        self.opening = declare(self, "retrieval_opening", EstimatorConfig.retrieval_opening,
                               "Retrieve on the detection mask without parts thinner than this x sqrt(mask area) "
                               "(0: the mask as detected)")
        self.hypotheses = declare(self, "hypotheses", EstimatorConfig.hypotheses,
                                  "Distinct (>= 30 deg apart) hypotheses sent per detection; the refiner refines "
                                  "each and keeps the best-checking one")
        self.truncated_handicap = declare(self, "truncated_handicap", EstimatorConfig.truncated_handicap,
                                          "Check-score margin a detection mask cut off by the image border "
                                          "needs over a whole one to be chosen")
        self.near_deg = declare(self, "alternative_near_deg", EstimatorConfig.alternative_near_deg,
                                "Before the alternative >= 90 deg away, the best hypothesis this far (deg) from "
                                "the sent ones is sent as an alternative too (0: off)")
        # the Estimator's checks: hypotheses >= 1, retrieval_opening in [0, 0.5), truncated_handicap in [0, 2),
        # alternative_near_deg in [0, 90)
        EstimatorConfig(hypotheses=self.hypotheses, retrieval_opening=self.opening,
                        truncated_handicap=self.truncated_handicap, alternative_near_deg=self.near_deg)
        self.get_logger().info(f"{self.hypotheses} distinct hypotheses per detection")
        self.frontend = make_frontend(declare_frontend(self, retrieval=True))
        self.objects = RegisteredObjects(self, registry_dir, lambda _id, obj: (obj, self.frontend.prepare(obj)))
        self.pub = self.create_publisher(ObjectPoseArray, "/gspose/initial_poses", STAGE_QOS)
        warn = lambda e: self.get_logger().warning(f"detections skipped: {e}")  # noqa: E731
        self._lock = threading.Lock()  # two input slots, one retrieval at a time
        self.slot = LatestSlot(lambda m: self.process(m, ObjectPoseEstimate.STATUS_INITIAL), warn)
        self.recut_slot = LatestSlot(lambda m: self.process(m, ObjectPoseEstimate.STATUS_INITIAL_RECUT), warn)
        self.sent = 0
        log_counts_periodically(self, lambda: f"detections: {self.slot.counts()}; re-cut detections: "
                                              f"{self.recut_slot.counts()}; initial pose arrays sent: {self.sent}")
        self.create_subscription(DetectionArray, "/gspose/detections", self.slot.put, STAGE_QOS)
        self.create_subscription(DetectionArray, "/gspose/recut_detections", self.recut_slot.put, STAGE_QOS)

    def process(self, msg: DetectionArray, status: int) -> None:
        if not msg.detections:
            return
        with self._lock:
            self._retrieve(msg, status)

    def _retrieve(self, msg: DetectionArray, status: int) -> None:
        try:
            rgb, K = carried_frame(msg)
        except InputError as exc:
            self.get_logger().warning(f"detections skipped: {exc}", throttle_duration_sec=5.0)
            return
        out = ObjectPoseArray(header=msg.header, image=msg.image, camera_info=msg.camera_info)
        candidates: dict[str, list] = {}  # the detector sends up to max_candidates per object, best first
        for det in msg.detections:
            candidates.setdefault(det.object_id, []).append(det)
        for object_id, dets in candidates.items():
            entry = self.objects.get(object_id)
            if entry is None:
                continue
            obj, prepared = entry
            try:
                masks = [image_to_mask(d.mask) for d in dets]
                if status == ObjectPoseEstimate.STATUS_INITIAL_RECUT:
                    sent = self._second_pass(obj, prepared, rgb, K, dets, masks)
                else:
                    sent = self._first_pass(obj, prepared, rgb, K, dets, masks)
            except InputError as exc:
                self.get_logger().warning(f"{object_id}: {exc}", throttle_duration_sec=5.0)
                continue
            for det, hypothesis, kind in sent:
                out.poses.append(ObjectPoseEstimate(object_id=object_id, pose=matrix_to_pose(hypothesis.T),
                                                    score=float(det.score), status=kind,
                                                    box=list(det.box), mask=det.mask))
        if out.poses:
            self.pub.publish(out)
            self.sent += 1

    def _first_pass(self, obj, prepared, rgb, K, dets: list[ObjectDetection], masks: list) -> list[tuple]:
        """(detection, hypothesis, status) to send for one object's candidates: the `hypotheses` best
        distinct hypotheses of the best-checking candidate, then the Estimator's alternatives, which
        the refiner refines in turn and keeps by its rules (estimator.seeks_second_opinion, second_opinion)."""
        retrieved = self.frontend.retrieve_best(obj, prepared, rgb, masks, K, self.top_k, self.opening,
                                                self.hypotheses, self.truncated_handicap)
        if retrieved is None:
            return []
        index, hypotheses = retrieved
        best = distinct_hypotheses(hypotheses, self.hypotheses)
        sent = [(dets[index], h, ObjectPoseEstimate.STATUS_INITIAL) for h in best]
        for alternative in alternative_hypotheses(hypotheses, [h.T for h in best], self.near_deg):
            sent.append((dets[index], alternative, ObjectPoseEstimate.STATUS_INITIAL_ALTERNATIVE))
        return sent

    def _second_pass(self, obj, prepared, rgb, K, dets: list[ObjectDetection], masks: list) -> list[tuple]:
        """(detection, hypothesis, status) to send for one object's re-cut masks: each mask's best
        hypothesis, the best-checking mask first, which the refiner refines in that order until one
        checks out (as the Estimator's second pass, Estimator._recut). A re-cut mask was cut around
        a render, not grown by GrabCut from colour: retrieved on as is (no opening)."""
        sent = []
        for index, hypotheses, retrieved_on in self.frontend.retrieve_ranked(obj, prepared, rgb, masks, K, self.top_k,
                                                                             0.0, self.truncated_handicap):
            align_hypotheses(obj, rgb, retrieved_on, K, hypotheses, 1)
            sent.append((dets[index], distinct_hypotheses(hypotheses, 1)[0], ObjectPoseEstimate.STATUS_INITIAL_RECUT))
        return sent


def main(argv=None) -> int:
    return run_nodes([RetrievalNode], argv)
