"""Posed reference views: validation and object-centred crops shared by build and retrieval."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError
from .geometry import CropWindow, check_intrinsics, check_pose, crop_window_from_box, mask_box

MAX_VIEWS = 1024
MAX_IMAGE_SIDE = 8192


@dataclass
class PosedView:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool
    T: np.ndarray  # (4, 4) T_camera_object, metres
    K: np.ndarray  # (3, 3)


def check_view_arrays(images, poses, Ks) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Check posed images (no masks yet); returns (images, poses, Ks) as per-view lists.

    Ks may be one 3x3 matrix for all views or one per view."""
    images, poses = list(images), list(poses)
    if len(images) == 0:
        raise InputError("empty view set: at least one reference view is required")
    if len(images) > MAX_VIEWS:
        raise InputError(f"too many reference views: {len(images)} > {MAX_VIEWS}")
    if len(poses) != len(images):
        raise InputError(f"mismatched counts: {len(images)} images, {len(poses)} poses")
    Ks_arr = np.asarray(Ks, dtype=np.float64)
    if Ks_arr.shape == (3, 3):
        Ks_list = [Ks_arr] * len(images)
    elif Ks_arr.ndim == 3 and Ks_arr.shape[0] == len(images):
        Ks_list = list(Ks_arr)
    else:
        raise InputError(f"camera matrices: expected one 3x3 or {len(images)}x3x3, got shape {Ks_arr.shape}")
    out_images, out_poses, out_Ks = [], [], []
    for i, (img, T, K) in enumerate(zip(images, poses, Ks_list)):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"view {i}: image must be HxWx3 uint8 RGB, got shape {img.shape} dtype {img.dtype}")
        if max(img.shape[:2]) > MAX_IMAGE_SIDE or min(img.shape[:2]) < 8:
            raise InputError(f"view {i}: image size {img.shape[1]}x{img.shape[0]} out of range")
        T = check_pose(T, f"view {i} pose")
        K = check_intrinsics(K, img.shape[1], img.shape[0])
        if T[2, 3] <= 0:
            raise InputError(f"view {i}: object is behind the camera (t_z={T[2, 3]:.3f} m)")
        out_images.append(img)
        out_poses.append(T)
        out_Ks.append(K)
    return out_images, out_poses, out_Ks


def validate_views(images, masks, poses, Ks) -> list[PosedView]:
    """Check a registration set and return it as PosedViews; InputError names the first fault."""
    images, poses, Ks = check_view_arrays(images, poses, Ks)
    masks = list(masks)
    if len(masks) != len(images):
        raise InputError(f"mismatched counts: {len(images)} images, {len(masks)} masks, {len(poses)} poses")
    views = []
    for i, (img, m, T, K) in enumerate(zip(images, masks, poses, Ks)):
        m = np.asarray(m)
        if m.shape != img.shape[:2]:
            raise InputError(f"view {i}: mask size {m.shape} does not match image size {img.shape[:2]}")
        m = m > (127 if m.dtype == np.uint8 else 0)
        if m.sum() < 16:
            raise InputError(f"view {i}: mask is empty (fewer than 16 object pixels)")
        views.append(PosedView(img, m, T, K))
    return views


@dataclass
class ViewCrop:
    rgb: np.ndarray  # (S, S, 3) float32 in [0,1], background zeroed
    mask: np.ndarray  # (S, S) bool
    K: np.ndarray  # crop intrinsics
    T: np.ndarray
    window: CropWindow


def crop_image(image: np.ndarray, window: CropWindow, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """Resample a window of an image (any channels) to window.size x window.size."""
    return cv2.warpAffine(image, window.affine(), (window.size, window.size), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def paste_crop(crop: np.ndarray, window: CropWindow, shape: tuple[int, int]) -> np.ndarray:
    """crop_image's inverse: a window-sized float map back into a full (H, W) image, zero outside."""
    return cv2.warpAffine(crop.astype(np.float32), window.affine(), (shape[1], shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)


def crop_view(view: PosedView, size: int, pad: float = 1.2) -> ViewCrop:
    window = crop_window_from_box(mask_box(view.mask), size, pad)
    mask = crop_image(view.mask.astype(np.float32), window) > 0.5
    rgb = crop_image(view.image, window).astype(np.float32) / 255.0
    rgb[~mask] = 0.0
    return ViewCrop(rgb, mask, window.crop_intrinsics(view.K), view.T, window)
