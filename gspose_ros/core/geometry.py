"""Pose and camera geometry.

Conventions used everywhere in gspose_ros:
- a pose is a 4x4 T_camera_object (object frame -> camera frame), metres;
- K is the 3x3 pinhole intrinsic matrix in the OpenCV/BOP convention: pixel
  (i, j) has its centre at x = i, y = j, and x = fx*X/Z + cx;
- quaternions are (x, y, z, w) as scipy returns them unless a name says wxyz.
Rotation maths goes through scipy.spatial.transform.Rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .errors import InputError


def check_pose(T, name: str = "pose") -> np.ndarray:
    """Return T as a float64 4x4 rigid transform or raise InputError naming the fault."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InputError(f"{name}: expected a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InputError(f"{name}: contains NaN or infinite values")
    R = T[:3, :3]
    if abs(np.linalg.det(R) - 1.0) > 1e-3 or np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
        raise InputError(f"{name}: rotation part is not a proper rotation matrix")
    if np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise InputError(f"{name}: last row must be [0, 0, 0, 1]")
    return T


def check_intrinsics(K, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Return K as float64 3x3 or raise InputError for degenerate intrinsics."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise InputError(f"camera matrix K: expected 3x3, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise InputError("camera matrix K: contains NaN or infinite values")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"camera matrix K: focal lengths must be > 0 (fx={K[0, 0]}, fy={K[1, 1]})")
    if np.abs(K[2] - [0, 0, 1]).max() > 1e-9 or K[1, 0] != 0:
        raise InputError("camera matrix K: last row must be [0, 0, 1] and K[1,0] must be 0")
    if width is not None and height is not None and (width <= 0 or height <= 0):
        raise InputError(f"image size must be positive, got {width}x{height}")
    return K


def make_pose(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def orthonormalize(T) -> np.ndarray:
    """Nearest proper rotation for T's rotation part (float32 optimisation drifts off SO(3))."""
    T = np.asarray(T, dtype=np.float64).copy()
    T[:3, :3] = Rotation.from_matrix(T[:3, :3]).as_matrix()
    return T


def pose_inverse(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    return make_pose(R.T, -R.T @ t)


def pose_from_quaternion(quat_xyzw, t) -> np.ndarray:
    return make_pose(Rotation.from_quat(quat_xyzw).as_matrix(), t)


def pose_to_quaternion(T) -> tuple[np.ndarray, np.ndarray]:
    """(quaternion xyzw, translation) of a 4x4 pose."""
    T = np.asarray(T, dtype=np.float64)
    return Rotation.from_matrix(T[:3, :3]).as_quat(), T[:3, 3].copy()


def pose_from_bop(cam_R_m2c, cam_t_m2c_mm) -> np.ndarray:
    """BOP stores R row-major (9 numbers) and t in millimetres."""
    R = np.asarray(cam_R_m2c, dtype=np.float64).reshape(3, 3)
    return make_pose(R, np.asarray(cam_t_m2c_mm, dtype=np.float64).reshape(3) / 1000.0)


def pose_to_bop(T) -> tuple[list[float], list[float]]:
    T = np.asarray(T, dtype=np.float64)
    return T[:3, :3].reshape(-1).tolist(), (T[:3, 3] * 1000.0).tolist()


def _rotation_to_ray(t) -> np.ndarray:
    """Rotation taking the optical axis (0,0,1) onto the unit ray through t."""
    ray = np.asarray(t, dtype=np.float64) / np.linalg.norm(t)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, ray)
    s = np.linalg.norm(axis)
    angle = np.arctan2(s, z @ ray)
    if s < 1e-12:
        return np.eye(3)
    return Rotation.from_rotvec(axis / s * angle).as_matrix()


def egocentric_to_allocentric(T) -> np.ndarray:
    """Rotation as seen from a camera looking straight at the object (the retrieval frame).

    Two objects at different image positions with the same allocentric rotation
    look the same up to perspective, which is what makes template retrieval work.
    """
    T = np.asarray(T, dtype=np.float64)
    return make_pose(_rotation_to_ray(T[:3, 3]).T @ T[:3, :3], T[:3, 3])


def allocentric_to_egocentric(T_allo) -> np.ndarray:
    T_allo = np.asarray(T_allo, dtype=np.float64)
    return make_pose(_rotation_to_ray(T_allo[:3, 3]) @ T_allo[:3, :3], T_allo[:3, 3])


def project(points, T, K) -> np.ndarray:
    """Project Nx3 object points to Nx2 pixels with pose T and intrinsics K."""
    P = np.asarray(points, dtype=np.float64) @ T[:3, :3].T + T[:3, 3]
    uv = P @ np.asarray(K, dtype=np.float64).T
    return uv[:, :2] / uv[:, 2:3]


def rotation_error_deg(R_est, R_gt) -> float:
    cos = (np.trace(np.asarray(R_est)[:3, :3].T @ np.asarray(R_gt)[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


@dataclass(frozen=True)
class CropWindow:
    """A square window of the full image resampled to size x size pixels.

    x0, y0, side are in full-image pixels; K_crop is the intrinsics of the
    resampled crop, so rendering with K_crop gives pixels aligned with the crop.
    """

    x0: float
    y0: float
    side: float
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def crop_intrinsics(self, K) -> np.ndarray:
        K = np.asarray(K, dtype=np.float64)
        A = np.array([[self.scale, 0, -self.x0 * self.scale], [0, self.scale, -self.y0 * self.scale], [0, 0, 1]])
        return A @ K

    def affine(self) -> np.ndarray:
        """2x3 matrix mapping full-image pixel coords to crop pixel coords (for cv2.warpAffine)."""
        s = self.scale
        return np.array([[s, 0, -self.x0 * s], [0, s, -self.y0 * s]], dtype=np.float64)


def crop_window_from_box(box_xyxy, size: int, pad: float = 1.2) -> CropWindow:
    """Square window around an axis-aligned box, enlarged by `pad` (GS-Pose pads its boxes)."""
    x0, y0, x1, y1 = [float(v) for v in box_xyxy]
    if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise InputError(f"box must be finite with x1>x0 and y1>y0, got {box_xyxy}")
    side = max(x1 - x0, y1 - y0) * pad
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return CropWindow(cx - side / 2, cy - side / 2, side, int(size))


def crop_window_from_pose(T, K, radius: float, size: int, pad: float = 1.2) -> CropWindow:
    """Square window around the projected bounding sphere (centre = object origin)."""
    T = np.asarray(T, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    z = T[2, 3]
    if z <= 1e-6:
        raise InputError(f"object centre is behind the camera (z={z:.4f} m)")
    c = project(np.zeros((1, 3)), T, K)[0]
    half = radius * max(K[0, 0], K[1, 1]) / z
    return crop_window_from_box([c[0] - half, c[1] - half, c[0] + half, c[1] + half], size, pad)


def mask_box(mask) -> np.ndarray | None:
    """Tight [x0, y0, x1, y1] (x1, y1 exclusive) of a boolean mask, or None if empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def mask_iou(a, b) -> float:
    """Intersection over union of two boolean masks of one size (0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0
