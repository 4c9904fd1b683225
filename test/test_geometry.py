import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gspose_ros.core import geometry as geo
from gspose_ros.core.errors import InputError


def random_pose(rng):
    return geo.make_pose(Rotation.random(random_state=rng.integers(1 << 30)).as_matrix(), rng.uniform(-0.2, 0.2, 3) + [0, 0, 0.6])


def test_quaternion_and_bop_round_trip(rng):
    T = random_pose(rng)
    q, t = geo.pose_to_quaternion(T)
    assert np.allclose(geo.pose_from_quaternion(q, t), T)
    R, t_mm = geo.pose_to_bop(T)
    assert np.allclose(t_mm, T[:3, 3] * 1000)
    assert np.allclose(geo.pose_from_bop(R, t_mm), T)


def test_inverse(rng):
    T = random_pose(rng)
    assert np.allclose(geo.pose_inverse(T) @ T, np.eye(4))


def test_allocentric_round_trip_and_centred_identity(rng):
    T = random_pose(rng)
    A = geo.egocentric_to_allocentric(T)
    assert np.allclose(geo.allocentric_to_egocentric(A), T)
    centred = T.copy()
    centred[:3, 3] = [0, 0, 0.7]  # on the optical axis the two agree
    assert np.allclose(geo.egocentric_to_allocentric(centred), centred)
    # an off-axis object: allocentric rotation differs from egocentric by the ray rotation
    assert geo.rotation_error_deg(A, T) > 0.5


def test_allocentric_is_invariant_to_image_position():
    """The same object seen at two image positions, with the camera turned to follow it, has one allocentric rotation."""
    R = Rotation.from_euler("xyz", [20, -30, 50], degrees=True).as_matrix()
    T_centre = geo.make_pose(R, [0, 0, 0.5])
    # turn the camera: the object now appears off-axis
    turn = Rotation.from_euler("y", 15, degrees=True).as_matrix()
    T_off = geo.make_pose(turn @ R, turn @ np.array([0, 0, 0.5]))
    a1, a2 = geo.egocentric_to_allocentric(T_centre), geo.egocentric_to_allocentric(T_off)
    assert np.allclose(a1[:3, :3], a2[:3, :3], atol=1e-9)


def test_crop_intrinsics_match_affine(rng):
    K = np.array([[600.0, 0, 320], [0, 610, 240], [0, 0, 1]])
    T = random_pose(rng)
    w = geo.crop_window_from_pose(T, K, 0.08, 128)
    pts = rng.uniform(-0.05, 0.05, (10, 3))
    full = geo.project(pts, T, K)
    via_affine = full @ w.affine()[:, :2].T + w.affine()[:, 2]
    assert np.allclose(geo.project(pts, T, w.crop_intrinsics(K)), via_affine)
    # the object centre lands in the middle of the crop
    assert np.allclose(geo.project(np.zeros((1, 3)), T, w.crop_intrinsics(K))[0], [64, 64])


@pytest.mark.parametrize("bad, word", [
    (np.full((4, 4), np.nan), "NaN"),
    (np.eye(3), "4x4"),
    (np.diag([2.0, 1, 1, 1]), "rotation"),
])
def test_check_pose_rejects(bad, word):
    with pytest.raises(InputError, match=word):
        geo.check_pose(bad)


@pytest.mark.parametrize("K, word", [
    (np.array([[0.0, 0, 1], [0, 500, 1], [0, 0, 1]]), "focal"),
    (np.array([[500.0, 0, 1], [0, 500, 1], [0, 0, 1]]) * np.nan, "NaN"),
    (np.eye(2), "3x3"),
])
def test_check_intrinsics_rejects(K, word):
    with pytest.raises(InputError, match=word):
        geo.check_intrinsics(K)


def test_mask_box():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert geo.mask_box(m).tolist() == [3, 2, 9, 5]
    assert geo.mask_box(np.zeros((4, 4), bool)) is None
