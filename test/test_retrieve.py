"""Template retrieval (weight-free initial pose): the geometry of the bank and of the
mask-based translation, checked on queries rendered from the object itself."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from gspose_ros.core import metrics, synth
from gspose_ros.core.errors import InputError
from gspose_ros.core.geometry import make_pose, mask_box, rotation_error_deg
from gspose_ros.core.render import render
from gspose_ros.core.retrieve import (
    PoseCheck,
    PoseHypothesis,
    QueryCrop,
    build_template_bank,
    distinct_hypotheses,
    edge_agreement,
    hypothesis_score,
    retrieve_pose,
)


@pytest.fixture(scope="module")
def duck_bank(built_duck):
    return build_template_bank(built_duck, n_viewpoints=120, n_inplane=12)


def test_bank_covers_rotations(duck_bank):
    assert len(duck_bank.descriptors) == 120 * 12
    assert np.allclose(np.linalg.norm(duck_bank.descriptors, axis=1), 1.0)
    # every template rotation is a proper rotation
    dets = np.linalg.det(duck_bank.rotations)
    assert np.allclose(dets, 1.0)


def test_retrieval_recovers_self_rendered_poses(built_duck, duck_bank):
    rng = np.random.default_rng(5)
    K = synth.DEFAULT_K
    rot_errors, depth_errors = [], []
    for T in synth.query_poses(8, 0.5, rng):
        with torch.no_grad():
            out = render(built_duck, torch.from_numpy(T).float(), torch.from_numpy(K).float(), 640, 480)
        image = (out.rgb.clamp(0, 1).numpy() * 255).astype(np.uint8)
        best = retrieve_pose(built_duck, duck_bank, image, out.alpha.numpy() > 0.5, K)[0]
        rot_errors.append(metrics.rotation_error_deg(best.T, T))
        depth_errors.append(abs(best.T[2, 3] - T[2, 3]) / T[2, 3])
        assert best.iou > 0.5
    # the bank is ~20 deg apart in viewpoint and 30 deg in-plane: nearest templates are within ~20 deg
    assert np.median(rot_errors) < 20 and np.mean(np.array(rot_errors) < 30) >= 0.75, rot_errors
    assert np.median(depth_errors) < 0.1, depth_errors


def _render_query(obj, T, K):
    with torch.no_grad():
        out = render(obj, torch.from_numpy(T).float(), torch.from_numpy(K).float(), 640, 480)
    return (out.rgb.clamp(0, 1).numpy() * 255).astype(np.uint8), out.alpha.numpy() > 0.5


def test_alignment_recovers_the_translation_of_a_right_rotation(built_duck):
    # the right rotation with the translation retrieval might read off a template's box and
    # area, 8 % too far and 10 mm off to the side: alignment to the mask must bring it back
    K = synth.DEFAULT_K
    R = Rotation.from_euler("xyz", [40, -25, 70], degrees=True).as_matrix()
    t = np.array([0.02, -0.01, 0.5])
    image, mask = _render_query(built_duck, make_pose(R, t), K)
    T_start = make_pose(R, t * 1.08 + np.array([0.01, 0.0, 0.0]))
    T_aligned = QueryCrop(image, mask, mask_box(mask), K, size=192).align(built_duck, T_start)
    before, after = np.linalg.norm(T_start[:3, 3] - t), np.linalg.norm(T_aligned[:3, 3] - t)
    assert after < 0.3 * before and after < 0.01, (before, after)
    assert np.allclose(T_aligned[:3, :3], R)


def test_hypotheses_on_a_mask_cut_off_by_the_border_are_not_aligned(built_duck, duck_bank):
    # area and centroid of a truncated mask do not fix the translation: alignment is skipped
    K = synth.DEFAULT_K
    t = 0.5 * np.linalg.solve(K, np.array([630.0, 240.0, 1.0]))
    image, mask = _render_query(built_duck, make_pose(Rotation.from_euler("xyz", [40, -25, 70], degrees=True)
                                                      .as_matrix(), t), K)
    aligned = retrieve_pose(built_duck, duck_bank, image, mask, K, top_k=4, aligned=1)
    unaligned = retrieve_pose(built_duck, duck_bank, image, mask, K, top_k=4, aligned=0)
    assert all(np.allclose(a.T, u.T) for a, u in zip(aligned, unaligned))


def test_retrieval_rejects_empty_or_mismatched_masks(built_duck, duck_bank):
    image = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(InputError, match="empty"):
        retrieve_pose(built_duck, duck_bank, image, np.zeros((480, 640), bool), synth.DEFAULT_K)
    with pytest.raises(InputError, match="mask size"):
        retrieve_pose(built_duck, duck_bank, image, np.zeros((48, 64), bool), synth.DEFAULT_K)


def test_edge_strength_asks_whether_the_distinctive_edges_are_there():
    # a smooth disc vs the same disc with a dark "eye": orientation agreement only counts where
    # both have edges, so it cannot tell them apart; the edge-strength correlation must
    yy, xx = np.mgrid[:64, :64]
    disc = ((xx - 32) ** 2 + (yy - 32) ** 2 < 28**2)
    plain = np.where(disc, 0.8 - 0.004 * yy, 0.0).astype(np.float32)
    eyed = plain.copy()
    eyed[(xx - 40) ** 2 + (yy - 26) ** 2 < 5**2] = 0.1
    _, same = edge_agreement(eyed, eyed, disc)
    _, missing = edge_agreement(eyed, plain, disc)
    assert same > 0.99 and missing < 0.5
    # and the ranking of unrefined hypotheses rewards it, all else equal
    check = PoseCheck(iou=0.9, orientation=0.5, chroma_error=0.05)
    assert hypothesis_score(0.8, replace(check, edge_strength=same)) > hypothesis_score(0.8, replace(check, edge_strength=missing))


def test_only_distinct_rotations_are_refined_side_by_side():
    def hyp(deg, score):
        T = make_pose(Rotation.from_euler("z", deg, degrees=True).as_matrix(), np.array([0, 0, 0.5]))
        return PoseHypothesis(T, 0.9, 0.9, score)

    ranked = [hyp(0, 3.0), hyp(10, 2.9), hyp(180, 2.8), hyp(25, 2.7), hyp(60, 2.6)]
    picked = distinct_hypotheses(ranked, 3)
    # neighbours of the best (10 and 25 deg) would refine to the same pose: skipped, order kept
    assert [round(p.score, 1) for p in picked] == [3.0, 2.8, 2.6]
    assert all(rotation_error_deg(a.T, b.T) >= 30 for a in picked for b in picked if a is not b)
    assert distinct_hypotheses(ranked, 1) == ranked[:1] and distinct_hypotheses([], 2) == []
