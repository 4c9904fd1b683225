"""Message <-> array conversion, in one place, as pure functions (no node state, no I/O).

Every function that reads a message validates it and raises InputError naming the
problem, so a node can answer a bad message with a clear error instead of dying.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Pose, PoseStamped
from sensor_msgs.msg import CameraInfo, Image

from ..core.errors import InputError
from ..core.geometry import check_intrinsics, check_pose, pose_from_quaternion, pose_to_quaternion

MAX_IMAGE_SIDE = 8192
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


def _pixels(msg: Image, what: str) -> np.ndarray:
    """The image's pixels as an (H, W, C) uint8 array (checks size, step and data length)."""
    if msg.encoding not in _CHANNELS:
        raise InputError(f"{what}: unsupported encoding {msg.encoding!r} (use rgb8, bgr8, mono8, rgba8 or bgra8)")
    h, w, c = int(msg.height), int(msg.width), _CHANNELS[msg.encoding]
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise InputError(f"{what}: size {w}x{h} out of range (1..{MAX_IMAGE_SIDE})")
    step = int(msg.step) or w * c
    if step < w * c or len(msg.data) < step * h:
        raise InputError(f"{what}: {len(msg.data)} data bytes do not hold {w}x{h} {msg.encoding} (step {step})")
    rows = np.frombuffer(bytes(msg.data[: step * h]) if not isinstance(msg.data, (bytes, bytearray))
                         else msg.data[: step * h], dtype=np.uint8).reshape(h, step)
    return rows[:, : w * c].reshape(h, w, c)


def image_to_rgb(msg: Image, what: str = "image") -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8) -> (H, W, 3) uint8 RGB."""
    px = _pixels(msg, what)
    if msg.encoding in ("rgb8", "rgba8"):
        return np.ascontiguousarray(px[..., :3])
    if msg.encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(px[..., 2::-1])
    return np.repeat(px, 3, axis=2)


def image_to_mask(msg: Image, what: str = "mask") -> np.ndarray:
    """mono8 sensor_msgs/Image -> (H, W) bool (> 127 is object)."""
    if msg.encoding != "mono8":
        raise InputError(f"{what}: masks must be mono8, got {msg.encoding!r}")
    return _pixels(msg, what)[..., 0] > 127


def rgb_to_image(rgb: np.ndarray, header=None, encoding: str = "rgb8") -> Image:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=0, step=rgb.shape[1] * 3)
    msg.data = (rgb[..., ::-1] if encoding == "bgr8" else rgb).tobytes()
    if header is not None:
        msg.header = header
    return msg


def mask_to_image(mask: np.ndarray, header=None) -> Image:
    m = (np.asarray(mask) > 0).astype(np.uint8) * 255
    msg = Image(height=m.shape[0], width=m.shape[1], encoding="mono8", is_bigendian=0, step=m.shape[1])
    msg.data = m.tobytes()
    if header is not None:
        msg.header = header
    return msg


def camera_info_to_K(msg: CameraInfo, width: int | None = None, height: int | None = None) -> np.ndarray:
    """3x3 intrinsics from CameraInfo.k, checked (finite, positive focal lengths)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    return check_intrinsics(K, width, height)


def K_to_camera_info(K: np.ndarray, width: int, height: int, header=None) -> CameraInfo:
    msg = CameraInfo(width=int(width), height=int(height), distortion_model="plumb_bob")
    msg.k = [float(v) for v in np.asarray(K, dtype=np.float64).reshape(-1)]
    msg.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    if header is not None:
        msg.header = header
    return msg


def pose_to_matrix(msg: Pose, what: str = "pose") -> np.ndarray:
    """geometry_msgs/Pose -> 4x4 (rejects non-finite values and non-unit quaternions)."""
    q = np.array([msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w], dtype=np.float64)
    t = np.array([msg.position.x, msg.position.y, msg.position.z], dtype=np.float64)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))):
        raise InputError(f"{what}: non-finite values")
    if abs(np.linalg.norm(q) - 1.0) > 1e-3:
        raise InputError(f"{what}: orientation quaternion has norm {np.linalg.norm(q):.4f}, expected 1")
    return check_pose(pose_from_quaternion(q, t), what)


def matrix_to_pose(T: np.ndarray) -> Pose:
    q, t = pose_to_quaternion(T)
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in t)
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (float(v) for v in q)
    return msg


def matrix_to_pose_stamped(T: np.ndarray, header) -> PoseStamped:
    return PoseStamped(header=header, pose=matrix_to_pose(T))


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def register_request(object_id: str, images, poses, K, masks=None, reference_dir: str = ""):
    """A RegisterObject request from arrays: what a client (the demo, the tests) sends."""
    from ..srv import RegisterObject

    req = RegisterObject.Request(object_id=object_id, reference_dir=reference_dir)
    req.images = [rgb_to_image(im) for im in images]
    req.masks = [mask_to_image(m) for m in masks] if masks is not None else []
    req.poses = [matrix_to_pose(T) for T in poses]
    if images:
        req.camera_info = K_to_camera_info(K, images[0].shape[1], images[0].shape[0])
    return req


def carried_frame(msg) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, K) of the image and camera_info a stage message (DetectionArray, ObjectPoseArray) carries."""
    rgb = image_to_rgb(msg.image)
    return rgb, camera_info_to_K(msg.camera_info, rgb.shape[1], rgb.shape[0])
