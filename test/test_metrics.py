import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gspose_ros.core import metrics
from gspose_ros.core.geometry import make_pose

K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])


def test_add_of_a_pure_translation_is_its_length(rng):
    pts = rng.uniform(-0.05, 0.05, (500, 3))
    T = make_pose(np.eye(3), [0, 0, 0.5])
    T2 = make_pose(np.eye(3), [0.003, 0.004, 0.5])
    assert abs(metrics.add(T2, T, pts) - 0.005) < 1e-12
    assert metrics.add(T, T, pts) == 0.0


def test_adds_forgives_a_symmetry_add_does_not():
    # points of a ring: rotating by a multiple of the step maps the ring onto itself
    ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    pts = np.stack([0.05 * np.cos(ang), 0.05 * np.sin(ang), np.zeros_like(ang)], 1)
    T = make_pose(np.eye(3), [0, 0, 0.5])
    T_rot = make_pose(Rotation.from_euler("z", 40, degrees=True).as_matrix(), [0, 0, 0.5])
    assert metrics.adds(T_rot, T, pts) < 1e-9
    assert metrics.add(T_rot, T, pts) > 0.03


def test_pose_errors_thresholds(rng):
    pts = rng.uniform(-0.05, 0.05, (200, 3))
    T = make_pose(np.eye(3), [0, 0, 0.5])
    small = make_pose(Rotation.from_euler("x", 2, degrees=True).as_matrix(), [0.001, 0, 0.5])
    big = make_pose(Rotation.from_euler("x", 30, degrees=True).as_matrix(), [0.02, 0, 0.55])
    e_small = metrics.pose_errors(small, T, pts, K, 0.1, False)
    e_big = metrics.pose_errors(big, T, pts, K, 0.1, False)
    assert e_small["add_0.1d"] and e_small["5cm5deg"]
    assert not e_big["add_0.1d"] and not e_big["5cm5deg"]
    assert abs(e_small["r_err_deg"] - 2.0) < 1e-9 and abs(e_small["t_err_cm"] - 0.1) < 1e-9
    assert e_big["proj2d_px"] > e_small["proj2d_px"]


def test_model_diameter_is_the_farthest_pair():
    cube = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    inside = np.random.default_rng(0).uniform(0.1, 0.9, (200, 3))
    assert metrics.model_diameter(np.vstack([cube, inside]) * 2.0) == pytest.approx(2.0 * np.sqrt(3))
    square = cube[cube[:, 2] == 0]  # flat: no 3-D hull, every pair compared
    assert metrics.model_diameter(square) == pytest.approx(np.sqrt(2))
    assert metrics.model_diameter(np.zeros((1, 3))) == 0.0
