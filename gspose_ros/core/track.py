"""Tracking (GS-Pose stage 5): previous pose -> crop -> short refinement -> new pose.

Without a per-frame mask (no detector run), the object's silhouette in the new
frame is estimated from colour: foreground/background colour histograms taken
from the previous frame around the previous pose's render (a classic
region-based tracking cue), giving a soft mask for the silhouette term.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from .colour import N_RGB, histogram, rgb_bins
from .errors import InputError
from .gaussians import GaussianObject
from .geometry import crop_window_from_pose
from .refine import AlignConfig, RefineConfig, RefineResult, align_pose, refine_pose
from .render import render
from .views import crop_image

BAND_FRACTION = 0.08  # colour-mask search band around the last silhouette, fraction of the crop side


def tracking_config() -> RefineConfig:
    """The Adam refinement used for tracking where gsplat renders (CUDA): the paper's L1+SSIM."""
    return RefineConfig(max_steps=30, min_steps=30, coarse_fraction=0.0, lr=4e-3, loss="l1ssim", mask_weight=3.0)


@dataclass
class TrackResult:
    T: np.ndarray
    kept: bool  # False: lost; re-detect before trusting the pose
    refine: RefineResult
    seconds: float


@dataclass
class Tracker:
    """method "auto": Gauss-Newton alignment (AlignConfig) with the CPU renderer, the Adam
    render-and-compare refinement (RefineConfig) when the object lives on a CUDA device."""

    obj: GaussianObject
    config: RefineConfig = field(default_factory=tracking_config)
    align_config: AlignConfig = field(default_factory=AlignConfig)
    method: str = "auto"
    min_confidence: float = 0.0  # a step whose refinement confidence is lower is not kept (lost)
    T: np.ndarray | None = None
    _hists: tuple | None = None  # (foreground, background) colour histograms
    _silhouette: tuple | None = None  # (alpha, crop window) of the last accepted pose
    # last frame-to-frame motion of the object origin in the camera frame: rotation vector,
    # translation, and the seconds it took (None: frames are taken as equally spaced)
    _velocity: tuple[np.ndarray, np.ndarray, float | None] | None = None
    _stamp: float | None = None  # time of the last accepted frame

    def reset(self, T_camera_object: np.ndarray, stamp: float | None = None, image: np.ndarray | None = None,
              K: np.ndarray | None = None) -> None:
        """Start from a pose. `stamp`: the time (s) of the frame it belongs to, so that the first
        motion measured spans the frames that passed while it was computed; `image` and `K`: that
        frame, to learn the colour masks from where the pose is right (else from the first
        tracked frame, around a pose that may be stale there)."""
        if (image is None) != (K is None):
            raise InputError("reset: give the pose's frame as both image and K, or neither")
        self.T = np.asarray(T_camera_object, dtype=np.float64)
        self._hists = None
        self._silhouette = None
        self._velocity = None
        self._stamp = stamp
        if image is not None:
            self._bootstrap_colour_model(image, K)

    def predicted(self, stamp: float | None = None) -> np.ndarray:
        """Constant-velocity prediction: the refinement then only corrects the change in motion.
        With frame times (seconds), the last motion is scaled to the time elapsed, so frames
        skipped in between (a busy CPU drops them) are predicted across too."""
        if self._velocity is None:
            return self.T
        rotvec, translation, dt = self._velocity
        scale = 1.0
        if stamp is not None and self._stamp is not None and dt:
            scale = float(np.clip((stamp - self._stamp) / dt, 0.0, 5.0))
        T = self.T.copy()
        T[:3, :3] = Rotation.from_rotvec(rotvec * scale).as_matrix() @ self.T[:3, :3]
        T[:3, 3] = self.T[:3, 3] + translation * scale
        return T

    def _colour_mask(self, image) -> np.ndarray:
        """Object mask of the full image from the colour models, limited to a band around the last
        silhouette: colours the object shares with far-away clutter must not pull the pose."""
        fg, bg = self._hists
        alpha, window = self._silhouette
        inv = cv2.invertAffineTransform(window.affine())
        h, w = image.shape[:2]
        last = cv2.warpAffine((alpha > 0.5).astype(np.uint8), inv, (w, h), flags=cv2.INTER_NEAREST)
        band = max(3, int(BAND_FRACTION * window.side))
        region = cv2.dilate(last, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))) > 0
        idx = rgb_bins(image)
        return region & (fg[idx] > bg[idx])

    def _update_colour_model(self, image, alpha: np.ndarray, window) -> None:
        """Colour histograms inside / outside the render's silhouette in the refinement crop."""
        idx = rgb_bins(crop_image(image, window))
        self._hists = (histogram(idx, alpha > 0.5, N_RGB), histogram(idx, alpha < 0.05, N_RGB))
        self._silhouette = (alpha, window)

    def _bootstrap_colour_model(self, image, K) -> None:
        """First frame without a mask: learn the colours from the render at the start pose."""
        size = self.align_config.crop_size
        window = crop_window_from_pose(self.T, K, self.obj.diameter / 2, size, self.align_config.pad)
        with torch.no_grad():
            alpha = render(self.obj, torch.from_numpy(self.T).float(), torch.from_numpy(window.crop_intrinsics(K)).float(),
                           size, size).alpha.numpy()
        self._update_colour_model(image, alpha, window)

    def _refine(self, image, mask, K, T_start) -> RefineResult:
        method = self.method
        if method == "auto":
            method = "adam" if self.obj.means.device.type == "cuda" else "gauss-newton"
        if method == "gauss-newton":
            return align_pose(self.obj, image, mask, T_start, K, self.align_config)
        if method == "adam":
            return refine_pose(self.obj, image, mask, T_start, K, self.config)
        raise InputError(f"unknown tracking method {self.method!r} (auto, gauss-newton, adam)")

    def step(self, image: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None,
             stamp: float | None = None) -> TrackResult:
        """Track into a new frame; `stamp` (seconds) lets the prediction span dropped frames."""
        if self.T is None:
            raise InputError("tracker has no pose: call reset(T) with an initial pose first")
        start = time.perf_counter()
        if mask is None:
            if self._hists is None:
                self._bootstrap_colour_model(image, K)
            mask = self._colour_mask(image)
        result = self._refine(image, mask, K, self.predicted(stamp))
        kept = bool(result.ok and result.confidence >= self.min_confidence and np.all(np.isfinite(result.T)))
        if kept:
            rotvec = Rotation.from_matrix(result.T[:3, :3] @ self.T[:3, :3].T).as_rotvec()
            dt = stamp - self._stamp if stamp is not None and self._stamp is not None else None
            self._velocity = (rotvec, result.T[:3, 3] - self.T[:3, 3], dt)
            self.T, self._stamp = result.T, stamp
            self._update_colour_model(image, result.alpha, result.window)
        else:
            self._velocity = None
        return TrackResult(result.T, kept, result, time.perf_counter() - start)


def smooth_trajectory(T_start: np.ndarray, n: int, rng: np.random.Generator, deg_per_frame=1.5, mm_per_frame=3.0):
    """A smooth synthetic object motion (camera-frame rotation + translation), for tests and benchmarks."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3) * [1, 1, 0.3]
    direction /= np.linalg.norm(direction)
    poses, T = [], np.asarray(T_start, dtype=np.float64).copy()
    for i in range(n):
        poses.append(T.copy())
        T[:3, :3] = Rotation.from_rotvec(axis * np.radians(deg_per_frame)).as_matrix() @ T[:3, :3]
        T[:3, 3] += direction * mm_per_frame / 1000.0 * np.cos(i / 15.0)
    return poses
