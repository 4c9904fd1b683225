"""Render-and-compare refinement and tracking against pyrender ground truth."""

import numpy as np
import pytest
import torch

from gspose_ros.core import bop, metrics, synth
from gspose_ros.core.errors import InputError
from gspose_ros.core.geometry import crop_window_from_pose
from gspose_ros.core.losses import appearance_loss
from gspose_ros.core.refine import (
    CASCADE_POLISH_FINE_ITERS,
    PHOTOMETRIC_GAIN_RANGE,
    AlignConfig,
    CpuPoseLoss,
    RefineConfig,
    align_pose,
    apply_delta,
    cascade_refine_config,
    perturb_pose,
    photometric_gain,
    polish_refined,
    prepare_query,
    refine_pose,
)
from gspose_ros.core.render import EPS2D, render
from gspose_ros.core.track import Tracker, smooth_trajectory


@pytest.fixture(scope="module")
def obj(built):
    return built[0].gaussians


@pytest.fixture(scope="module")
def queries(dataset):
    return bop.load_split_frames(dataset, "test", 2)


def test_refinement_recovers_perturbed_pose(obj, queries, dataset):
    pts = bop.load_model_points(dataset, 2)
    d = bop.load_models_info(dataset)[2]["diameter"] / 1000
    rng = np.random.default_rng(7)
    before, after = [], []
    for f in queries[:3]:
        img, mask = f.load()
        T0 = perturb_pose(f.T, rng, max_rot_deg=15)
        r = refine_pose(obj, img, mask, T0, f.K)
        before.append(metrics.add(T0, f.T, pts))
        after.append(metrics.add(r.T, f.T, pts))
        assert r.ok and 0 < r.confidence <= 1 and r.iterations >= RefineConfig.min_steps
    assert np.mean(after) < 0.5 * np.mean(before)
    assert np.median(after) < 0.1 * d


@pytest.mark.parametrize("loss", ["ssim", "l1ssim"])
def test_cpu_pose_gradient_equals_autograd(obj, queries, loss):
    """The CPU refinement steps on forward-mode Jacobians times the losses' hand-written gradients;
    away from the start pose (rotation and depth changed) it must be autograd's gradient."""
    f = queries[0]
    img, mask = f.load()
    window = crop_window_from_pose(f.T, f.K, obj.diameter / 2, 64, 1.1)
    target_rgb, target_mask = prepare_query(img, mask, window)
    K_crop = torch.from_numpy(window.crop_intrinsics(f.K)).float()
    T0 = torch.from_numpy(f.T).float()
    g = obj.activated().frozen_for_pose(T0)
    rot = torch.tensor([0.08, -0.05, 0.12], requires_grad=True)
    trans = torch.tensor([0.01, -0.02, 0.06], requires_grad=True)
    out = render(g, apply_delta(T0, rot, trans), K_crop, 64, 64)
    value = appearance_loss(loss, out.rgb, target_rgb) + 3.0 * (out.alpha - target_mask).abs().mean()
    value.backward()
    ours, grad_rot, grad_trans, alpha = CpuPoseLoss(g, K_crop, 64, target_rgb, target_mask, loss, 3.0, EPS2D)(
        f.T, rot.detach().double().numpy(), trans.detach().double().numpy())
    assert abs(ours - float(value.detach())) < 1e-5
    np.testing.assert_allclose(grad_rot, rot.grad.numpy(), rtol=1e-3, atol=1e-4 * np.abs(grad_rot).max())
    np.testing.assert_allclose(grad_trans, trans.grad.numpy(), rtol=1e-3, atol=1e-4 * np.abs(grad_trans).max())
    assert np.abs(alpha - out.alpha.detach().numpy()).max() < 1e-4


def test_refinement_at_the_coarse_size_only_returns_its_result(obj, queries):
    """coarse_fraction=1 leaves no fine stage; the coarse stage's result must come out, not the start
    (an empty fine stage used to report the initial pose as its best)."""
    f = queries[1]
    img, mask = f.load()
    T0 = perturb_pose(f.T, np.random.default_rng(3), max_rot_deg=10)
    r = refine_pose(obj, img, mask, T0, f.K, RefineConfig(max_steps=10, min_steps=10, coarse_fraction=1.0, polish=None))
    assert r.iterations == 10 and r.alpha is not None and r.alpha.shape == (64, 64)
    assert np.abs(r.T - T0).max() > 1e-4


def test_the_cascade_polish_length_is_set_and_checked():
    """cascade_refine_config: 4 coarse + polish_fine_iters fine Gauss-Newton steps after Adam at 64 px."""
    config = cascade_refine_config(30, 8)
    assert (config.max_steps, config.coarse_fraction, config.polish.coarse_iters, config.polish.fine_iters) == (30, 1.0, 4, 8)
    assert cascade_refine_config().polish.fine_iters == CASCADE_POLISH_FINE_ITERS
    for bad in (0, -3):
        with pytest.raises(InputError, match="polish_fine_iters"):
            cascade_refine_config(40, bad)


def test_refinement_in_two_calls_is_refinement_in_one(obj, queries):
    """polish=False stops after Adam and polish_refined does the rest (the second opinion's two
    stages): the same pose as one call."""
    f = queries[1]
    img, mask = f.load()
    T0 = perturb_pose(f.T, np.random.default_rng(5), max_rot_deg=10)
    config = cascade_refine_config()
    whole = refine_pose(obj, img, mask, T0, f.K, config)
    adam = refine_pose(obj, img, mask, T0, f.K, config, polish=False)
    assert adam.iterations < whole.iterations
    polished = polish_refined(obj, img, mask, f.K, adam, config)
    np.testing.assert_allclose(polished.T, whole.T, atol=1e-6)
    assert polished.iterations == whole.iterations and polished.confidence == pytest.approx(whole.confidence)


def test_refinement_flags_a_wrong_object_region(obj, queries):
    """A mask far from where the object is rendered yields a low IoU: the result is flagged, not trusted."""
    f = queries[0]
    img, mask = f.load()
    wrong = np.zeros_like(mask)
    wrong[:40, :40] = True
    r = refine_pose(obj, img, wrong, f.T, f.K, RefineConfig(max_steps=5, min_steps=5))
    assert not r.ok and r.mask_iou < 0.5


def test_gauss_newton_alignment_converges_from_a_small_error(built_duck, dataset):
    pts = bop.load_model_points(dataset, 3)
    from scipy.spatial.transform import Rotation

    for f in bop.load_split_frames(dataset, "test", 3)[:2]:
        img, mask = f.load()
        T0 = f.T.copy()  # a fixed error: 6 degrees about a slanted axis, +4 % depth, 1.5 % sideways
        T0[:3, :3] = Rotation.from_rotvec(np.radians(6) * np.array([0.6, 0.8, 0.0])).as_matrix() @ T0[:3, :3]
        T0[:3, 3] += T0[2, 3] * np.array([0.015, 0.0, 0.04])
        r = align_pose(built_duck, img, mask, T0, f.K, AlignConfig(coarse_iters=3, fine_iters=3))
        assert r.ok and r.iterations == 6
        before, after = metrics.add(T0, f.T, pts), metrics.add(r.T, f.T, pts)
        assert after < 0.5 * before and after < 0.1 * 0.14, (before, after)


def test_photometric_gain_is_the_least_squares_gain_inside_both_silhouettes():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.1, 0.9, (32, 32, 3))
    alpha = np.zeros((32, 32))
    alpha[4:28, 4:28] = 1.0
    mask = np.zeros((32, 32))
    mask[8:32, 8:32] = 1.0
    target = rgb * np.array([0.6, 0.8, 1.3])
    target[mask == 0] = 0.0  # the query is masked; outside both, nothing must count
    target[:8] = 5.0  # only rows 8-28 are in both
    target[28:] = 5.0
    np.testing.assert_allclose(photometric_gain(rgb, alpha, target, mask), [0.6, 0.8, 1.3], rtol=1e-6)
    lo, hi = PHOTOMETRIC_GAIN_RANGE
    np.testing.assert_allclose(photometric_gain(rgb, alpha, rgb * 9.0, None), [hi] * 3)  # clamped
    np.testing.assert_allclose(photometric_gain(rgb, alpha, rgb * 0.01, None), [lo] * 3)
    np.testing.assert_allclose(photometric_gain(rgb, np.zeros((32, 32)), target, mask), [1.0] * 3)  # no overlap


def test_gauss_newton_alignment_under_another_light(built_duck, dataset):
    """The query lit dimmer and warmer than the references (baked into the 3DGO): with the
    photometric gain the alignment still converges; on raw colours it is pulled off."""
    pts = bop.load_model_points(dataset, 3)
    from scipy.spatial.transform import Rotation

    errors = {True: [], False: []}
    for f in bop.load_split_frames(dataset, "test", 3)[:2]:
        img, mask = f.load()
        dim = np.clip(img * np.array([0.75, 0.6, 0.45]), 0, 255).astype(np.uint8)
        T0 = f.T.copy()
        T0[:3, :3] = Rotation.from_rotvec(np.radians(6) * np.array([0.6, 0.8, 0.0])).as_matrix() @ T0[:3, :3]
        T0[:3, 3] += T0[2, 3] * np.array([0.015, 0.0, 0.04])
        for gain in (True, False):
            r = align_pose(built_duck, dim, mask, T0, f.K, AlignConfig(coarse_iters=3, fine_iters=3, photometric_gain=gain))
            errors[gain].append(metrics.add(r.T, f.T, pts))
    assert max(errors[True]) < 0.1 * 0.14, errors
    assert np.mean(errors[True]) < np.mean(errors[False]), errors


def test_refine_rejects_bad_input(obj, queries):
    f = queries[0]
    img, mask = f.load()
    with pytest.raises(InputError, match="mask size"):
        refine_pose(obj, img, mask[:-1], f.T, f.K)
    T = f.T.copy()
    T[0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        refine_pose(obj, img, mask, T, f.K)
    with pytest.raises(InputError, match="focal"):
        refine_pose(obj, img, mask, f.T, np.diag([0.0, 1, 1]))
    with pytest.raises(InputError, match="uint8"):
        refine_pose(obj, img.astype(float), mask, f.T, f.K)


@pytest.mark.parametrize("method", ["gauss-newton", "adam"])
def test_tracker_follows_a_moving_object_without_masks(built_duck, dataset, method):
    """30 Hz-like motion (1.5 deg + 3 mm a frame) over clutter; colour masks only, no detector."""
    start = bop.load_split_frames(dataset, "test", 3)[1]
    poses = smooth_trajectory(start.T, 12, np.random.default_rng(0), deg_per_frame=1.5, mm_per_frame=3.0)
    frames = synth.render_sequence(synth.duck_object(), poses)
    tracker = Tracker(built_duck, method=method)
    tracker.reset(poses[0])
    for (img, _), T_gt in zip(frames[1:], poses[1:]):
        r = tracker.step(img, start.K)
        assert r.kept
    travelled = np.linalg.norm(poses[-1][:3, 3] - poses[0][:3, 3])
    err = np.linalg.norm(tracker.T[:3, 3] - poses[-1][:3, 3])
    assert err < 0.006 and err < 0.3 * travelled
    assert metrics.rotation_error_deg(tracker.T, poses[-1]) < 4.0


def test_tracker_needs_a_start_pose(obj, queries):
    img, _ = queries[0].load()
    with pytest.raises(InputError, match="reset"):
        Tracker(obj).step(img, queries[0].K)
    with pytest.raises(InputError, match="both image and K"):
        Tracker(obj).reset(queries[0].T, 0.0, img)
    tracker = Tracker(obj, method="levitation")
    tracker.reset(queries[0].T)
    with pytest.raises(InputError, match="unknown tracking method"):
        tracker.step(img, queries[0].K)


def test_tracker_walks_through_frames_a_stale_pose_cannot_jump(built_duck, dataset):
    """A pose ~1 s old (a detection's, on a busy CPU): the object has turned ~20 deg since. One
    tracking step from there is not kept (min_confidence) and leaves the pose alone; steps through
    frames 0.3 s apart, starting from the colour model of the pose's own frame, follow it."""
    start = bop.load_split_frames(dataset, "test", 3)[1]
    poses = smooth_trajectory(start.T, 13, np.random.default_rng(1), deg_per_frame=1.5, mm_per_frame=2.0)
    frames = synth.render_sequence(synth.duck_object(), poses)
    assert metrics.rotation_error_deg(poses[0], poses[-1]) > 15

    jumper = Tracker(built_duck, min_confidence=0.5)
    jumper.reset(poses[0], 0.0, frames[0][0], start.K)
    assert not jumper.step(frames[-1][0], start.K, stamp=1.2).kept
    assert np.array_equal(jumper.T, poses[0])

    walker = Tracker(built_duck, min_confidence=0.5)
    walker.reset(poses[0], 0.0, frames[0][0], start.K)
    for i in range(3, 13, 3):
        assert walker.step(frames[i][0], start.K, stamp=0.1 * i).kept
    assert metrics.rotation_error_deg(walker.T, poses[12]) < 4.0
    assert np.linalg.norm(walker.T[:3, 3] - poses[12][:3, 3]) < 0.006
