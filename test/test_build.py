"""3DGO build on a real (pyrender) capture of the low-texture object."""

import numpy as np
import pytest

from gspose_ros.core.build import BuildConfig, build_gaussian_object, heldout_psnr, visual_hull
from gspose_ros.core.errors import InputError
from gspose_ros.core.views import crop_view, validate_views


def test_build_fits_held_out_views(built, dataset):
    from gspose_ros.core import bop

    result, held, progress = built
    obj = result.gaussians
    true_d = bop.load_models_info(dataset)[2]["diameter"] / 1000
    assert abs(obj.diameter - true_d) / true_d < 0.1
    psnr = np.mean(heldout_psnr(obj, held))
    assert psnr > 22.0, psnr  # a short CI fit; the full fit is measured by gspose-eval
    assert 500 < len(obj) <= BuildConfig.max_gaussians
    # progress is reported and the loss went down
    assert progress and progress[-1].iteration == 600
    assert progress[-1].loss < progress[0].loss
    assert obj.meta["n_views"] == 28 and obj.meta["ref_depth_m"] > 0


def test_silhouette_keeps_its_size_at_half_the_scale(built):
    """render.dilation: rendered at half its fitted scale, a 3DGO covers a quarter of the area
    (its dilation shrinks with the pixels); with the fitted scale's EPS2D kept, the blur is twice as
    wide on the object and the silhouette fattens, which made refinement and the check at 64 px
    prefer the object too far away."""
    import torch

    from gspose_ros.core.geometry import CropWindow
    from gspose_ros.core.render import EPS2D, dilation, render

    result, held, _ = built
    obj = result.gaussians
    assert 0 < obj.meta["fit_pixel_m"] < 0.01  # metres per fitted pixel: a ~1 mm pixel here
    crop = crop_view(held[0], 128)
    half = CropWindow(crop.window.x0, crop.window.y0, crop.window.side, 64).crop_intrinsics(held[0].K)
    assert dilation(obj, crop.T, half) < dilation(obj, crop.T, crop.K)

    def area(K, size, eps2d=None):
        out = render(obj, torch.from_numpy(crop.T).float(), torch.from_numpy(K).float(), size, size, eps2d=eps2d)
        return float((out.alpha > 0.5).sum())

    full = area(crop.K, 128)
    assert abs(4 * area(half, 64) / full - 1) < 0.04
    assert 4 * area(half, 64, eps2d=EPS2D) / full > 4 * area(half, 64) / full + 0.02


def test_visual_hull_contains_object(ref_views):
    crops = [crop_view(v, 96) for v in ref_views[:12]]
    pts, voxel, box = visual_hull(crops, None, 32)
    assert len(pts) > 100
    # the low-texture object is ~15 cm across and centred on the origin
    assert np.all(np.abs(pts.mean(0)) < 0.03)
    assert 0.10 < np.linalg.norm(pts.max(0) - pts.min(0)) < 0.25


def test_inconsistent_poses_are_refused(ref_views):
    # every view claims the object 3 m further away than it is: the hull cannot be carved
    bad = []
    for i, v in enumerate(ref_views[:12]):
        T = v.T.copy()
        T[:3, 3] += [0.3 * (-1) ** i, 0.3 * (-1) ** (i // 2), 0]
        bad.append(type(v)(v.image, v.mask, T, v.K))
    with pytest.raises(InputError, match="visual hull is empty"):
        build_gaussian_object(bad, BuildConfig(iterations=10))


def test_time_budget_stops_early(ref_views):
    result = build_gaussian_object(ref_views[:8], BuildConfig(iterations=100000, time_budget_s=2.0))
    assert result.iterations < 100000
    assert len(result.gaussians) > 0


def test_bad_box_and_sh_degree(ref_views):
    with pytest.raises(InputError, match="box"):
        build_gaussian_object(ref_views[:4], BuildConfig(iterations=1), box=np.zeros((2, 3)))
    with pytest.raises(InputError, match="sh_degree"):
        build_gaussian_object(ref_views[:4], BuildConfig(iterations=1, sh_degree=3))


class TestViewValidation:
    def img(self, h=48, w=64):
        return np.zeros((h, w, 3), np.uint8)

    def mask(self, h=48, w=64):
        m = np.zeros((h, w), bool)
        m[10:30, 10:30] = True
        return m

    T = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    K = np.array([[100.0, 0, 32], [0, 100, 24], [0, 0, 1]])

    def test_empty(self):
        with pytest.raises(InputError, match="empty view set"):
            validate_views([], [], [], self.K)

    def test_mismatched_counts(self):
        with pytest.raises(InputError, match="mismatched counts"):
            validate_views([self.img()] * 2, [self.mask()], [self.T] * 2, self.K)

    def test_mask_size(self):
        with pytest.raises(InputError, match="mask size"):
            validate_views([self.img()], [self.mask(40, 64)], [self.T], self.K)

    def test_non_finite_pose(self):
        T = self.T.copy()
        T[0, 3] = np.nan
        with pytest.raises(InputError, match="view 0 pose: contains NaN"):
            validate_views([self.img()], [self.mask()], [T], self.K)

    def test_degenerate_K(self):
        K = self.K.copy()
        K[1, 1] = 0
        with pytest.raises(InputError, match="focal"):
            validate_views([self.img()], [self.mask()], [self.T], K)

    def test_wrong_image_type(self):
        with pytest.raises(InputError, match="uint8 RGB"):
            validate_views([self.img().astype(np.float32)], [self.mask()], [self.T], self.K)

    def test_empty_mask(self):
        with pytest.raises(InputError, match="mask is empty"):
            validate_views([self.img()], [np.zeros((48, 64), bool)], [self.T], self.K)

    def test_behind_camera(self):
        T = self.T.copy()
        T[2, 3] = -0.5
        with pytest.raises(InputError, match="behind the camera"):
            validate_views([self.img()], [self.mask()], [T], self.K)

    def test_ok(self):
        views = validate_views([self.img()] * 2, [self.mask().astype(np.uint8) * 255] * 2, [self.T] * 2, [self.K, self.K])
        assert len(views) == 2 and views[0].mask.dtype == bool and views[0].mask.sum() == 400
