"""Colour models: histograms (one quantisation per use, shared by detection and tracking) and
GrabCut (per-image colour mixtures, shared by detection and co-segmentation)."""

from __future__ import annotations

import cv2
import numpy as np

RGB_BINS = 16  # per channel: tracking compares consecutive frames, lighting barely changes
HSV_BINS = (16, 8, 4)  # hue, saturation, value: detection meets new lighting, so value is coarse


def rgb_bins(image: np.ndarray) -> np.ndarray:
    """Per-pixel bin index (H, W) of an RGB uint8 image in a RGB_BINS^3 histogram."""
    q = (image // (256 // RGB_BINS)).astype(np.int64)
    return (q[..., 0] * RGB_BINS + q[..., 1]) * RGB_BINS + q[..., 2]


def hsv_bins(image: np.ndarray) -> np.ndarray:
    """Per-pixel bin index (H, W) of an RGB uint8 image in a hue x saturation x value histogram.
    Near-grey pixels have no reliable hue: they all go to hue bin 0."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    nh, ns, nv = HSV_BINS
    h = (hsv[..., 0].astype(np.int64) * nh) // 180
    s = (hsv[..., 1].astype(np.int64) * ns) // 256
    v = (hsv[..., 2].astype(np.int64) * nv) // 256
    h = np.where(s == 0, 0, h)
    return (h * ns + s) * nv + v


def histogram(bins: np.ndarray, weights: np.ndarray | None, n_bins: int) -> np.ndarray:
    """Normalised histogram of bin indices (optionally weighted); all zeros when empty."""
    w = None if weights is None else weights.reshape(-1).astype(np.float64)
    h = np.bincount(bins.reshape(-1), weights=w, minlength=n_bins)
    return h / h.sum() if h.sum() > 0 else h


N_HSV = int(np.prod(HSV_BINS))
N_HS = HSV_BINS[0] * HSV_BINS[1]  # the hue x saturation marginal (detect.hue_saturation)
N_RGB = RGB_BINS**3

# local texture: the grey level's standard deviation in a 5x5 window, in bins split at these
# values (grey levels). Smooth surfaces (and the smooth parts of a busy background) fall in the
# first bins, fine print and sharp edges in the last; the bins double so that a texture seen a
# little closer or farther, or lit a little brighter, moves at most one bin
TEXTURE_EDGES = np.array([1.5, 3.0, 6.0, 12.0, 24.0])
TEXTURE_WINDOW = 5
N_TEXTURE = len(TEXTURE_EDGES) + 1


def texture_bins(image: np.ndarray) -> np.ndarray:
    """Per-pixel bin index (H, W) of an RGB uint8 image's local texture strength (TEXTURE_EDGES)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    win = (TEXTURE_WINDOW, TEXTURE_WINDOW)
    mean = cv2.blur(grey, win)
    std = np.sqrt(np.maximum(cv2.blur(grey * grey, win) - mean * mean, 0.0))
    return np.searchsorted(TEXTURE_EDGES, std).astype(np.int64)


def grabcut_foreground(crop_rgb: np.ndarray, labels: np.ndarray, iterations: int, seed: int) -> np.ndarray | None:
    """GrabCut from initial cv2.GC_* labels (updated in place); the foreground as a uint8 0/1
    image, or None when GrabCut fails. GrabCut seeds its colour mixtures from OpenCV's global
    random generator: reseeded with `seed`, the same crop and labels always give the same mask."""
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), labels, None, bgd, fgd, iterations,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    return ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
