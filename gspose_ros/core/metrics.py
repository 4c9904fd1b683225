"""Pose error metrics: ADD, ADD-S, their @0.1d rates, Proj2D@5px, cm-degree."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, cKDTree
from scipy.spatial.distance import pdist

from .geometry import project, rotation_error_deg


def model_diameter(points) -> float:
    """Largest distance between two model points (BOP's `diameter`, in the points' unit); the
    farthest pair lies on the convex hull, so only its vertices are compared."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) < 2:
        return 0.0
    try:
        points = points[ConvexHull(points).vertices]
    except Exception:  # flat or degenerate (Qhull refuses): compare them all
        pass
    return float(pdist(points).max())


def _transform(points, T):
    return points @ T[:3, :3].T + T[:3, 3]


def add(T_est, T_gt, points) -> float:
    """Mean distance between model points under the two poses (metres)."""
    return float(np.linalg.norm(_transform(points, T_est) - _transform(points, T_gt), axis=1).mean())


def adds(T_est, T_gt, points) -> float:
    """Mean nearest-neighbour distance (symmetric objects)."""
    est = _transform(points, T_est)
    dist, _ = cKDTree(est).query(_transform(points, T_gt), k=1)
    return float(dist.mean())


def add_or_adds(T_est, T_gt, points, symmetric: bool) -> float:
    return adds(T_est, T_gt, points) if symmetric else add(T_est, T_gt, points)


def proj2d(T_est, T_gt, points, K) -> float:
    """Mean reprojection distance of model points (pixels)."""
    return float(np.linalg.norm(project(points, T_est, K) - project(points, T_gt, K), axis=1).mean())


def cm_degree(T_est, T_gt) -> tuple[float, float]:
    """(translation error in cm, rotation error in degrees)."""
    return float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3]) * 100.0), rotation_error_deg(T_est, T_gt)


def pose_errors(T_est, T_gt, points, K, diameter: float, symmetric: bool) -> dict:
    e = add_or_adds(T_est, T_gt, points, symmetric)
    cm, deg = cm_degree(T_est, T_gt)
    p2d = proj2d(T_est, T_gt, points, K)
    return {
        "add": e,
        "add_0.1d": bool(e < 0.1 * diameter),
        "proj2d_px": p2d,
        "proj2d_5px": bool(p2d < 5.0),
        "t_err_cm": cm,
        "r_err_deg": deg,
        "5cm5deg": bool(cm < 5.0 and deg < 5.0),
    }
