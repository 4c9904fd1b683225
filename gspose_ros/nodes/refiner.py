"""Refiner / tracker node: initial pose -> refined pose, then frame-to-frame tracking
(GS-Pose stages 4 and 5).

In:  /gspose/initial_poses (ObjectPoseArray with image, camera_info and masks; consecutive
     entries of one object are hypotheses of one detection, best first: each is refined and the
     best-checking one kept, estimator.refine_best; an entry with STATUS_INITIAL_ALTERNATIVE is
     refined too and kept by estimator.second_opinion's rules, alternative_below /
     alternative_margin / alternative_confident_margin / alternative_edge_margin), and
     the camera (/camera/image_raw +
     /camera/camera_info) for tracking.
Out: /object_pose (geometry_msgs/PoseStamped: T_camera_object of `target_object`, or of
     the most confident object, in the image's frame with its stamp), /gspose/object_poses
     (ObjectPoseArray: every object, with id, score and status), /gspose/overlay (Image),
     /gspose/markers (MarkerArray), TF gspose/<object_id> and vision_msgs/Detection3DArray
     when those packages are installed.
An object whose refined pose checks out (score >= min_score) is tracked on every camera
frame until the tracker loses it; then the next detection re-initialises it. A rejected pose
gets the Estimator's second pass: the object is cut again around its render, and trimmed to
its texture (estimator.second_pass_masks); the new masks go back to the retrieval node
(/gspose/recut_detections), which retrieves on each and sends them back ranked by its check
(STATUS_INITIAL_RECUT, one entry per mask); they are refined in that order until a pose checks
>= max(min_score, recut_below), the bar for a mask cut around a render, which flatters that
render's check. (The Estimator also tries it for accepted poses checking
below recut_below; here those are already being tracked.) An initial pose
sent without a mask cannot be checked: it is scored by the refinement's own fit, which against
a cluttered background rarely passes (it was reported with score 1.0 before, wrong or not).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import Marker, MarkerArray

from ..core.errors import InputError
from ..core.estimator import (
    EstimatorConfig,
    challengers,
    refine_best,
    second_opinion,
    second_pass_masks,
    second_pass_pose,
    seeks_second_opinion,
)
from ..core.refine import CASCADE_POLISH_FINE_ITERS, AlignConfig, cascade_refine_config
from ..core.track import Tracker
from ..core.visualize import draw_overlay
from ..msg import DetectionArray, ObjectDetection, ObjectPoseArray, ObjectPoseEstimate
from .common import (
    SENSOR_QOS,
    STAGE_QOS,
    CameraPairing,
    LatestSlot,
    RegisteredObjects,
    declare,
    log_counts_periodically,
    run_nodes,
)
from .conversions import (
    carried_frame,
    image_to_mask,
    mask_to_image,
    matrix_to_pose,
    matrix_to_pose_stamped,
    pose_to_matrix,
    rgb_to_image,
    stamp_ns,
)

try:  # optional outputs: present on a full ROS 2 install, not in the pip wheels
    from geometry_msgs.msg import TransformStamped
    from tf2_ros import TransformBroadcaster
except ImportError:
    TransformBroadcaster = None
try:
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose
except ImportError:
    Detection3DArray = None


@dataclass
class Track:
    tracker: Tracker
    T: np.ndarray
    score: float
    active: bool = True


class RefinerNode(Node):
    def __init__(self, **kwargs):
        super().__init__("gspose_refiner", **kwargs)
        registry_dir = declare(self, "registry_dir", "~/.gspose_ros/objects", "Directory of registered objects")
        self.target = declare(self, "target_object", "",
                              "Object whose pose goes to /object_pose ('': the most confident one in each frame)")
        steps = declare(self, "refine_steps", cascade_refine_config().max_steps,
                        "Render-and-compare steps from an initial pose (paper: <= 400 on GPU)")
        polish_fine = declare(self, "polish_fine_iters", CASCADE_POLISH_FINE_ITERS,
                              "CPU: Gauss-Newton steps at 128 px that end each refinement (settle the depth)")
        self.min_score = declare(self, "min_score", EstimatorConfig.min_score,
                                 "Refined-pose check score (0..1) needed to report a pose")
        self.recut_below = declare(self, "recut_below", EstimatorConfig.recut_below,
                                   "A rejected pose's object is cut again around its render for a second retrieval, "
                                   "whose pose must check at least this well (0: no second pass)")
        alternative_below = declare(self, "alternative_below", EstimatorConfig.alternative_below,
                                    "A refined pose checking below this gives way to the detection's alternative "
                                    "hypotheses if one checks better by alternative_margin at 64 and 128 px (0: none; "
                                    "alternative_confident_margin applies above it)")
        alternative_margin = declare(self, "alternative_margin", EstimatorConfig.alternative_margin,
                                     "Confidence margin of the alternative's rules: better by this to win on its "
                                     "check, within this to win on its edges")
        alternative_confident_margin = declare(self, "alternative_confident_margin",
                                               EstimatorConfig.alternative_confident_margin,
                                               "A pose checking alternative_below or more gives way to an "
                                               "alternative checking better by this at 64 and 128 px (0: off)")
        alternative_edge_margin = declare(self, "alternative_edge_margin", EstimatorConfig.alternative_edge_margin,
                                          "The alternative, checking within alternative_margin, also wins when its "
                                          "inner edges match the image better by this at 128 px (0: off; with "
                                          "alternative_confident_margin 0 too, the alternative is refined only "
                                          "below alternative_below)")
        recut_texture_threshold = declare(self, "recut_texture_threshold", EstimatorConfig.recut_texture_threshold,
                                          "The second pass also sends a textured object's detection trimmed to its "
                                          "texture: parts with P(object | texture) below this are cut (0: off)")
        # the Estimator's rules and their checks (confidences in [0, 1], the edge margin in [0, 2]);
        # the second pass's masks are cut with its default front end's segmentation settings
        self.estimator_config = EstimatorConfig(min_score=self.min_score, alternative_below=alternative_below,
                                                alternative_margin=alternative_margin,
                                                alternative_confident_margin=alternative_confident_margin,
                                                alternative_edge_margin=alternative_edge_margin,
                                                recut_texture_threshold=recut_texture_threshold)
        self.tracking = declare(self, "tracking", True, "Track found objects frame to frame (else refine every detection)")
        coarse = declare(self, "track_coarse_iters", 3,
                         "Gauss-Newton steps at 64 px per tracked frame (more: a wider reach when frames are dropped)")
        self.track_align = AlignConfig(coarse_iters=coarse)
        self.min_track_confidence = declare(self, "min_track_confidence", 0.5,
                                            "Tracking confidence (0..1) below which an object is declared lost")
        self.overlay = declare(self, "publish_overlay", True, "Publish /gspose/overlay (costs a render per object)")
        self.overlay_period = 1.0 / max(1e-3, declare(self, "overlay_max_hz", 5.0,
                                                      "Most overlay images per second (the CPU belongs to tracking)"))
        self._last_overlay = 0.0
        tolerance = declare(self, "camera_info_tolerance_s", 0.05,
                            "Largest stamp difference accepted between an image and its camera_info")
        self.refine_config = cascade_refine_config(int(steps), int(polish_fine))
        self.objects = RegisteredObjects(self, registry_dir, lambda _id, obj: obj)
        self.tracks: dict[str, Track] = {}
        self.pairing = CameraPairing(tolerance)
        self._lock = threading.Lock()  # detections and frames are handled one at a time
        self.pose_pub = self.create_publisher(PoseStamped, "/object_pose", 10)
        self.poses_pub = self.create_publisher(ObjectPoseArray, "/gspose/object_poses", 10)
        self.overlay_pub = self.create_publisher(Image, "/gspose/overlay", 2)
        self.marker_pub = self.create_publisher(MarkerArray, "/gspose/markers", 2)
        self.tf = TransformBroadcaster(self) if TransformBroadcaster is not None else None
        self.det3d_pub = self.create_publisher(Detection3DArray, "/gspose/detections_3d", 2) if Detection3DArray else None
        self.recut_pub = self.create_publisher(DetectionArray, "/gspose/recut_detections", STAGE_QOS)
        warn = lambda e: self.get_logger().warning(f"skipped: {e}")  # noqa: E731
        self.initial_slot = LatestSlot(self.on_initial, warn)
        self.frame_slot = LatestSlot(self.on_frame, warn)
        self.poses_sent = 0
        log_counts_periodically(self, lambda: f"initial poses: {self.initial_slot.counts()}; camera images: "
                                              f"{self.frame_slot.counts()}; camera_info: {self.pairing.received} received; "
                                              f"/object_pose sent: {self.poses_sent}")
        self.create_subscription(ObjectPoseArray, "/gspose/initial_poses", self.initial_slot.put, STAGE_QOS)
        self.create_subscription(CameraInfo, "/camera/camera_info", self.pairing.add_info, SENSOR_QOS)
        self.create_subscription(Image, "/camera/image_raw", self.frame_slot.put, SENSOR_QOS)

    # --- detections: refine and (re)start tracking ------------------------------------
    def on_initial(self, msg: ObjectPoseArray) -> None:
        try:
            rgb, K = carried_frame(msg)
        except InputError as exc:
            self.get_logger().warning(f"initial poses skipped: {exc}", throttle_duration_sec=5.0)
            return
        results, recuts = [], []
        stamp = stamp_ns(msg.header.stamp) / 1e9
        hypotheses: dict[str, list[ObjectPoseEstimate]] = {}  # per object, best first
        for est in msg.poses:
            hypotheses.setdefault(est.object_id, []).append(est)
        with self._lock:
            for object_id, entries in hypotheses.items():
                alternatives = [e for e in entries if e.status == ObjectPoseEstimate.STATUS_INITIAL_ALTERNATIVE]
                ests = [e for e in entries if e.status != ObjectPoseEstimate.STATUS_INITIAL_ALTERNATIVE]
                obj = self.objects.get(object_id)
                track = self.tracks.get(object_id)
                if not ests or obj is None or (self.tracking and track is not None and track.active):
                    continue  # tracked objects follow the camera frames; detections re-initialise lost ones
                # a second pass comes as one entry per re-cut mask, in the order of retrieval's check:
                # each is refined in turn until one checks out (as the Estimator's second pass)
                second_pass = ests[0].status == ObjectPoseEstimate.STATUS_INITIAL_RECUT
                for detection in ([e] for e in ests) if second_pass else [ests]:
                    pose = self._refine_detection(object_id, obj, rgb, K, detection, alternatives, recuts)
                    if pose is not None:
                        T, score, box = pose
                        tracker = Tracker(obj, align_config=self.track_align, min_confidence=self.min_track_confidence)
                        tracker.reset(T, stamp, rgb, K)
                        self.tracks[object_id] = Track(tracker, T, score)
                        results.append((object_id, T, score, ObjectPoseEstimate.STATUS_REFINED, box))
                        break
        if recuts:
            self.recut_pub.publish(DetectionArray(header=msg.header, image=msg.image, camera_info=msg.camera_info,
                                                  detections=recuts))
        self.publish(msg.header, msg.camera_info, rgb, K, results)

    def _refine_detection(self, object_id: str, obj, rgb: np.ndarray, K: np.ndarray, ests: list[ObjectPoseEstimate],
                          alternatives: list[ObjectPoseEstimate], recuts: list[ObjectDetection]):
        """Refine the hypotheses of one detection (entries with the same mask and box, best first)
        and judge the best: (T, score, box) when it checks out, else None; a rejected first-pass
        pose adds its second-pass masks to `recuts`."""
        est = ests[0]  # mask, box, score and status are the detection's, the same in each
        second_pass = est.status == ObjectPoseEstimate.STATUS_INITIAL_RECUT
        try:
            mask = image_to_mask(est.mask) if est.mask.height else None
            initial = [pose_to_matrix(e.pose, f"{object_id} initial pose") for e in ests]
            if second_pass:  # a re-cut mask's pose counts only above the bar (estimator.second_pass_pose)
                if mask is None:
                    return None
                best = second_pass_pose(object_id, obj, rgb, mask, est.box, K, initial[0], self.refine_config,
                                        max(self.recut_below, self.min_score))
                return None if best is None else (best.T, best.score, est.box)
            best = refine_best(object_id, obj, rgb, mask, est.box, K, initial, self.refine_config)
            if alternatives and mask is not None and seeks_second_opinion(best, self.estimator_config):
                offered = [pose_to_matrix(a.pose, f"{object_id} alternative pose") for a in alternatives]
                for alternative in challengers(best, offered, initial, self.estimator_config):  # nearer first
                    best = second_opinion(obj, rgb, mask, est.box, K, best, alternative, self.refine_config,
                                          self.estimator_config)
        except InputError as exc:
            self.get_logger().warning(f"{object_id}: {exc}", throttle_duration_sec=5.0)
            return None
        if best is None:
            self.get_logger().warning(f"{object_id}: refinement diverged", throttle_duration_sec=5.0)
            return None
        T, score = best.T, best.score
        if score < self.min_score and mask is not None and self.recut_below > 0:
            second = self._second_pass(est, obj, rgb, mask, T, K)
            if second:
                recuts.extend(second)
                self.get_logger().info(f"{object_id}: pose rejected ({score:.2f}); object cut again "
                                       f"({len(second)} masks) for a second retrieval", throttle_duration_sec=5.0)
        if score < self.min_score:
            if mask is None:
                self.get_logger().warning(
                    f"{object_id}: initial pose without a mask refined to confidence {score:.2f} "
                    f"(< min_score {self.min_score}); refinement needs the object's mask to separate it "
                    "from the background", throttle_duration_sec=5.0)
            return None
        return T, score, est.box

    def _second_pass(self, est: ObjectPoseEstimate, obj, rgb: np.ndarray, mask: np.ndarray, T: np.ndarray,
                     K: np.ndarray) -> list[ObjectDetection]:
        """The Estimator's second-pass masks for a rejected pose (estimator.second_pass_masks: cut
        around its render, trimmed to the object's texture), as detections of the object: the
        retrieval node ranks them by its check and the first whose pose checks out is kept, as in
        the Estimator; empty when none differs from the detection."""
        return [ObjectDetection(object_id=est.object_id, score=est.score, box=[float(v) for v in box],
                                mask=mask_to_image(cut))
                for cut, box in second_pass_masks(obj, rgb, mask, T, K, self.estimator_config)]

    # --- camera frames: track ----------------------------------------------------------
    def on_frame(self, image_msg: Image) -> None:
        if not self.tracking:
            return
        with self._lock:
            active = [(k, t) for k, t in self.tracks.items() if t.active]
            if not active:
                return
            try:
                rgb, K, info = self.pairing.frame(image_msg)
            except InputError as exc:
                self.get_logger().warning(f"frame skipped: {exc}", throttle_duration_sec=5.0)
                return
            results = []
            stamp = stamp_ns(image_msg.header.stamp) / 1e9
            for object_id, track in active:
                step = track.tracker.step(rgb, K, stamp=stamp)
                if step.kept:
                    track.T, track.score = step.T, float(step.refine.confidence)
                    results.append((object_id, step.T, track.score, ObjectPoseEstimate.STATUS_TRACKED, [0.0] * 4))
                else:
                    track.active = False
                    results.append((object_id, track.T, 0.0, ObjectPoseEstimate.STATUS_LOST, [0.0] * 4))
        self.publish(image_msg.header, info, rgb, K, results)

    # --- outputs -------------------------------------------------------------------------
    def publish(self, header, info, rgb, K, results) -> None:
        if not results:
            return
        out = ObjectPoseArray(header=header)
        for object_id, T, score, status, box in results:
            out.poses.append(ObjectPoseEstimate(object_id=object_id, pose=matrix_to_pose(T), score=float(score),
                                                status=status, box=[float(v) for v in box]))
        self.poses_pub.publish(out)
        good = [r for r in results if r[3] != ObjectPoseEstimate.STATUS_LOST]
        chosen = [r for r in good if r[0] == self.target] if self.target else sorted(good, key=lambda r: -r[2])[:1]
        if chosen:
            self.pose_pub.publish(matrix_to_pose_stamped(chosen[0][1], header))
            self.poses_sent += 1
        self._publish_markers(header, good)
        if self.tf is not None:
            for object_id, T, *_ in good:
                self._broadcast_tf(header, object_id, T)
        if self.det3d_pub is not None:
            self._publish_detection3d(header, good)
        if self.overlay and good and time.monotonic() - self._last_overlay >= self.overlay_period:
            self._last_overlay = time.monotonic()
            image = rgb
            for object_id, T, score, *_ in good:
                obj = self.objects.get(object_id)
                if obj is not None:
                    image = draw_overlay(image, obj, T, K, label=f"{object_id} {score:.2f}")
            self.overlay_pub.publish(rgb_to_image(image, header))

    def _publish_markers(self, header, results) -> None:
        markers = MarkerArray()
        for i, (object_id, T, score, *_rest) in enumerate(results):
            obj = self.objects.get(object_id)
            size = float(obj.diameter) if obj is not None else 0.1
            m = Marker(header=header, ns="gspose", id=2 * i, type=Marker.SPHERE, action=Marker.ADD,
                       pose=matrix_to_pose(T))
            m.scale.x = m.scale.y = m.scale.z = size
            m.color.r, m.color.g, m.color.b, m.color.a = 0.1, 0.9, 0.2, 0.35
            label = Marker(header=header, ns="gspose", id=2 * i + 1, type=Marker.TEXT_VIEW_FACING,
                           action=Marker.ADD, pose=matrix_to_pose(T), text=f"{object_id} {score:.2f}")
            label.scale.z = 0.3 * size
            label.color.r = label.color.g = label.color.b = label.color.a = 1.0
            markers.markers += [m, label]
        self.marker_pub.publish(markers)

    def _broadcast_tf(self, header, object_id: str, T) -> None:
        tf = TransformStamped(header=header, child_frame_id=f"gspose/{object_id}")
        p = matrix_to_pose(T)
        tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = \
            p.position.x, p.position.y, p.position.z
        tf.transform.rotation = p.orientation
        self.tf.sendTransform(tf)

    def _publish_detection3d(self, header, results) -> None:
        arr = Detection3DArray(header=header)
        for object_id, T, score, *_ in results:
            det = Detection3D(header=header)
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = object_id, float(score)
            hyp.pose.pose = matrix_to_pose(T)
            det.results.append(hyp)
            det.bbox.center = matrix_to_pose(T)
            arr.detections.append(det)
        self.det3d_pub.publish(arr)


def main(argv=None) -> int:
    return run_nodes([RefinerNode], argv)
