"""Registration node: /register_object, /list_objects, /remove_object.

A request is checked and converted here, then built by the core (co-segmentation when
no masks are given, 3DGO fit, detector colour model) in a worker thread, so a long build
never blocks this node's other services or any other node; the result is written to the
registry atomically and announced on /gspose/registry_events, where the other nodes
pick it up. A failed build leaves the previous version of the object in service.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String

from ..core import bop
from ..core.build import BuildConfig, BuildProgress
from ..core.errors import InputError
from ..core.estimator import build_object
from ..core.frontend import make_frontend
from ..core.registry import Registry, check_object_id
from ..srv import ListObjects, RegisterObject, RemoveObject
from .common import EVENTS_QOS, REGISTRY_EVENTS, declare, declare_frontend, run_nodes
from .conversions import camera_info_to_K, image_to_mask, image_to_rgb, pose_to_matrix

MAX_VIEWS = 512


def request_views(req) -> tuple[list, list, list, np.ndarray]:
    """(images, masks or [], poses, K) from a RegisterObject request; InputError names the fault."""
    n = len(req.images)
    if n == 0:
        raise InputError("no reference views: send images (with poses) or a reference_dir")
    if n > MAX_VIEWS:
        raise InputError(f"too many reference views: {n} > {MAX_VIEWS}")
    if len(req.poses) != n:
        raise InputError(f"mismatched counts: {n} images but {len(req.poses)} poses")
    if len(req.masks) not in (0, n):
        raise InputError(f"mismatched counts: {n} images but {len(req.masks)} masks (send none for co-segmentation)")
    images = [image_to_rgb(m, f"view {i} image") for i, m in enumerate(req.images)]
    masks = [image_to_mask(m, f"view {i} mask") for i, m in enumerate(req.masks)]
    poses = [pose_to_matrix(p, f"view {i} pose") for i, p in enumerate(req.poses)]
    K = camera_info_to_K(req.camera_info, images[0].shape[1], images[0].shape[0])
    return images, masks, poses, K


def reference_dir_views(path: str, allowed_root: str) -> tuple[list, list, list, list]:
    """Views from a BOP-layout capture (<dir>/scene_camera.json, scene_gt.json, rgb/, mask_visib/)
    that must lie inside allowed_root (no escaping it with .. or links)."""
    if not allowed_root:
        raise InputError("reference_dir is disabled: set the 'reference_root' parameter to allow it")
    root = os.path.realpath(allowed_root)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, real]) != root:
        raise InputError(f"reference_dir {path!r} is outside the allowed root")
    if not os.path.isdir(real):
        raise InputError(f"reference_dir {path!r} does not exist")
    scene_root, scene = os.path.split(real.rstrip("/"))
    frames = []
    try:
        infos = bop._read_json(os.path.join(real, "scene_gt.json"))
        obj_ids = sorted({int(g["obj_id"]) for gts in infos.values() for g in gts})
        parent, split = os.path.split(scene_root)
        frames = bop.load_split_frames(parent, split, obj_ids[0]) if obj_ids else []
        frames = [f for f in frames if f.scene_id == int(scene)]
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"reference_dir {path!r}: not a BOP scene ({exc})") from exc
    if not frames:
        raise InputError(f"reference_dir {path!r} holds no annotated views")
    loaded = [f.load() for f in frames]
    masks = [m for _, m in loaded] if all(m is not None for _, m in loaded) else []
    return [i for i, _ in loaded], masks, [f.T for f in frames], [f.K for f in frames]


class RegistrationNode(Node):
    def __init__(self, **kwargs):
        super().__init__("gspose_registration", **kwargs)
        self.registry = Registry(declare(self, "registry_dir", "~/.gspose_ros/objects",
                                         "Directory of registered objects (one folder per object and version)"))
        self.build_iterations = declare(self, "build_iterations", BuildConfig.iterations,
                                        "3DGO optimisation steps per registration (2500: ~1.5 min on 2 CPU cores)")
        self.reference_root = declare(self, "reference_root", "",
                                      "Root under which RegisterObject.reference_dir may point ('' disables it)")
        # co-segments reference views that come without masks
        self.frontend = make_frontend(declare_frontend(self))
        self.events = self.create_publisher(String, REGISTRY_EVENTS, EVENTS_QOS)
        self.progress = self.create_publisher(String, "/gspose/registration_progress", 10)
        self._building: set[str] = set()
        self._lock = threading.Lock()
        # builds serialise in their own group; listing and removal stay responsive meanwhile
        self.create_service(RegisterObject, "/register_object", self.on_register,
                            callback_group=MutuallyExclusiveCallbackGroup())
        quick = ReentrantCallbackGroup()
        self.create_service(ListObjects, "/list_objects", self.on_list, callback_group=quick)
        self.create_service(RemoveObject, "/remove_object", self.on_remove, callback_group=quick)
        self.get_logger().info(f"registry {self.registry.root}: {self.registry.list()}")

    def on_register(self, req, res):
        try:
            object_id = check_object_id(req.object_id)
            if req.reference_dir:
                images, masks, poses, K = reference_dir_views(req.reference_dir, self.reference_root)
            else:
                images, masks, poses, K = request_views(req)
            with self._lock:
                if object_id in self._building:
                    raise InputError(f"object {object_id!r} is already being registered")
                self._building.add(object_id)
            try:
                built = build_object(object_id, images, poses, K, masks or None,
                                     BuildConfig(iterations=int(self.build_iterations)), self.frontend,
                                     progress=lambda p: self._report(object_id, p))
                version = self.registry.save(object_id, built.gaussians, {
                    "views_used": built.views_used, "build_seconds": built.build_seconds,
                    "masks": "given" if masks else "co-segmented"})
            finally:
                with self._lock:
                    self._building.discard(object_id)
        except InputError as exc:
            res.success, res.message = False, str(exc)
            self.get_logger().warning(f"register_object refused: {exc}")
            return res
        except Exception as exc:  # never let a build failure take the node down
            res.success, res.message = False, f"registration failed: {type(exc).__name__}: {exc}"
            self.get_logger().error(res.message)
            return res
        self.events.publish(String(data=f"registered {object_id} {version}"))
        res.success = True
        res.views_used, res.build_seconds, res.version = built.views_used, float(built.build_seconds), version
        res.message = f"registered {object_id!r} {version} from {built.views_used} views in {built.build_seconds:.0f} s"
        self.get_logger().info(res.message)
        return res

    def _report(self, object_id: str, p: BuildProgress) -> None:
        if p.iteration % 250 == 0 or p.iteration == p.total:
            self.progress.publish(String(data=f"{object_id} {p.iteration}/{p.total} {p.elapsed_s:.0f}s"))

    def on_list(self, req, res):
        res.object_ids = self.registry.list()
        res.versions = [self.registry.current_version(i) or "" for i in res.object_ids]
        return res

    def on_remove(self, req, res):
        try:
            removed = self.registry.remove(check_object_id(req.object_id))
        except InputError as exc:
            res.success, res.message = False, str(exc)
            return res
        res.success = removed
        res.message = f"removed {req.object_id!r}" if removed else f"unknown object {req.object_id!r}"
        if removed:
            self.events.publish(String(data=f"removed {req.object_id}"))
        return res


def main(argv=None) -> int:
    return run_nodes([RegistrationNode], argv)
