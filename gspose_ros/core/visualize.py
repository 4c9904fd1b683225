"""Overlays for people: the 3DGO silhouette outline and object axes drawn on the camera image."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .gaussians import GaussianObject
from .geometry import crop_window_from_pose, project
from .render import render


def draw_overlay(image: np.ndarray, obj: GaussianObject, T: np.ndarray, K: np.ndarray,
                 colour=(0, 255, 0), label: str | None = None) -> np.ndarray:
    """RGB image with the object's rendered outline, a tinted silhouette and its axes at pose T."""
    out = image.copy()
    h, w = out.shape[:2]
    # render only the object's window, then paste: cheap on a CPU at any image size
    win = crop_window_from_pose(T, K, obj.diameter / 2, 160, 1.2)
    with torch.no_grad():
        alpha = render(obj, torch.from_numpy(T).float(), torch.from_numpy(win.crop_intrinsics(K)).float(), 160, 160).alpha.numpy()
    inv = cv2.invertAffineTransform(win.affine())
    full_alpha = cv2.warpAffine(alpha.astype(np.float32), inv, (w, h), flags=cv2.INTER_LINEAR)
    sil = full_alpha > 0.5
    tint = np.array(colour, dtype=np.float32)
    out[sil] = (0.65 * out[sil] + 0.35 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(sil.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, 2)
    axis_len = 0.5 * obj.diameter
    pts = project(np.array([[0, 0, 0], [axis_len, 0, 0], [0, axis_len, 0], [0, 0, axis_len]]), T, K)
    if np.all(np.isfinite(pts)) and T[2, 3] > 0:
        o = tuple(int(v) for v in pts[0])
        for p, c in zip(pts[1:], ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            cv2.line(out, o, tuple(int(v) for v in p), c, 2, cv2.LINE_AA)
    if label:
        cv2.putText(out, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return out
