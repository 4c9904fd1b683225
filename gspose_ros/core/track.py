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

from .errors import InputError
from .geometry import crop_window_from_pose
from .gaussians import GaussianObject
from .refine import RefineConfig, RefineResult, refine_pose
from .render import render
from .views import crop_image

BINS = 16


def tracking_config() -> RefineConfig:
    """Few, larger steps: between consecutive frames the pose moves little."""
    return RefineConfig(max_steps=12, min_steps=12, lr=4e-3, loss="l1ssim", mask_weight=3.0, pad=1.1)


@dataclass
class TrackResult:
    T: np.ndarray
    kept: bool  # False: lost; re-detect before trusting the pose
    refine: RefineResult
    seconds: float


@dataclass
class Tracker:
    obj: GaussianObject
    config: RefineConfig = field(default_factory=tracking_config)
    T: np.ndarray | None = None
    _hists: tuple | None = None

    def reset(self, T_camera_object: np.ndarray) -> None:
        self.T = np.asarray(T_camera_object, dtype=np.float64)
        self._hists = None

    def _colour_mask(self, image, K) -> np.ndarray | None:
        """Soft object mask of the full image from last frame's colour models (None if no model)."""
        if self._hists is None:
            return None
        fg, bg = self._hists
        q = (image // (256 // BINS)).astype(np.int64)
        idx = (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]
        return fg[idx] / (fg[idx] + bg[idx] + 1e-6) > 0.5

    def _update_colour_model(self, image, K) -> None:
        window = crop_window_from_pose(self.T, K, self.obj.diameter / 2, 96, 1.6)
        with torch.no_grad():
            alpha = render(self.obj, torch.from_numpy(self.T).float(), torch.from_numpy(window.crop_intrinsics(K)).float(),
                           96, 96).alpha.numpy()
        crop = crop_image(image, window)
        q = (crop // (256 // BINS)).astype(np.int64)
        idx = ((q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]).reshape(-1)
        fg = np.bincount(idx, weights=(alpha > 0.5).reshape(-1), minlength=BINS**3)
        bg = np.bincount(idx, weights=(alpha < 0.05).reshape(-1), minlength=BINS**3)
        self._hists = (fg / max(fg.sum(), 1.0), bg / max(bg.sum(), 1.0))

    def step(self, image: np.ndarray, K: np.ndarray, mask: np.ndarray | None = None) -> TrackResult:
        if self.T is None:
            raise InputError("tracker has no pose: call reset(T) with an initial pose first")
        start = time.perf_counter()
        if mask is None:
            mask = self._colour_mask(image, K)
        result = refine_pose(self.obj, image, mask, self.T, K, self.config)
        kept = bool(result.ok and np.all(np.isfinite(result.T)))
        if kept:
            self.T = result.T
            self._update_colour_model(image, K)
        return TrackResult(result.T, kept, result, time.perf_counter() - start)


def smooth_trajectory(T_start: np.ndarray, n: int, rng: np.random.Generator, deg_per_frame=1.5, mm_per_frame=3.0):
    """A smooth synthetic object motion (camera-frame rotation + translation), for tests and benchmarks."""
    from scipy.spatial.transform import Rotation

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
