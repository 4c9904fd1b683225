"""The front of the cascade on pyrender scenes: co-segmentation, detection, the Estimator."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gspose_ros.core import bop, metrics, synth
from gspose_ros.core.colour import N_HS, TEXTURE_EDGES
from gspose_ros.core.detect import (
    DetectorConfig,
    ImageBins,
    _sure_core,
    colour_model,
    colour_similarity,
    detect,
    detection_score,
    hole_fraction,
    object_probability,
    texture_model,
    texture_trim,
    view_models,
)
from gspose_ros.core.errors import InputError
from gspose_ros.core.estimator import (
    Estimator,
    EstimatorConfig,
    ObjectPose,
    challengers,
    choose_refined,
    refine_and_check,
    second_opinion,
    second_pass_pose,
    seeks_second_opinion,
)
from gspose_ros.core.frontend import (
    COLOUR_KEY,
    HOLES_KEY,
    TEXTURE_KEY,
    VIEW_COLOURS_KEY,
    VIEW_TEXTURES_KEY,
    WeightFreeFrontEnd,
    store_detector_model,
)
from gspose_ros.core.gaussians import load_gaussians, save_gaussians
from gspose_ros.core.geometry import mask_box, mask_iou
from gspose_ros.core.refine import cascade_refine_config, perturb_pose
from gspose_ros.core.registry import check_object_id
from gspose_ros.core.retrieve import CHOOSE_SIZE, QueryCrop
from gspose_ros.core.segment import SegmentConfig, cosegment, cut_around_pose, open_mask


@pytest.fixture(scope="module")
def duck_refs(dataset):
    frames = bop.load_split_frames(dataset, "train", 3)
    return frames, [f.load() for f in frames]


@pytest.fixture(scope="module")
def estimator(built, built_duck, dataset, quick_fit_min_score):
    """Duck and low-texture bracket registered from their fitted 3DGOs and GT-masked references
    (quickly fitted: the pose bar is conftest's quick_fit_min_score)."""
    est = Estimator(EstimatorConfig(min_score=quick_fit_min_score))
    for name, obj_id, obj in (("duck", 3, built_duck), ("bracket", 2, built[0].gaussians)):
        loaded = [f.load() for f in bop.load_split_frames(dataset, "train", obj_id)]
        store_detector_model(obj, [i for i, _ in loaded], [m for _, m in loaded])
        est.add_object(name, obj)
    return est


def test_cosegmentation_matches_ground_truth_masks(duck_refs):
    frames, loaded = duck_refs
    seg = cosegment([i for i, _ in loaded], [f.T for f in frames], [f.K for f in frames])
    ious = [mask_iou(m, gt) for m, (_, gt) in zip(seg.masks, loaded)]
    assert np.median(ious) > 0.9, ious
    # a mask that spills onto the background gives the 3DGO floaters: the second GrabCut round
    # took the median precision on these views from 0.955 to 0.985
    precisions = [(m & gt).sum() / max(m.sum(), 1) for m, (_, gt) in zip(seg.masks, loaded)]
    assert np.median(precisions) > 0.97, precisions
    assert len(seg.confidences) == len(frames) and np.median(seg.confidences) > 0.7


def test_cosegmentation_refuses_views_without_a_consistent_object(duck_refs, rng):
    frames, _ = duck_refs
    noise = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in frames]
    with pytest.raises(InputError, match="co-segmentation"):
        cosegment(noise, [f.T for f in frames], [f.K for f in frames])
    same_axis = [frames[0].T] * len(frames)
    with pytest.raises(InputError, match="one line"):
        cosegment(noise, same_axis, [f.K for f in frames])


@pytest.mark.parametrize("bad", [dict(grabcut_rounds=0), dict(final_resolution=1), dict(grabcut_iters=0),
                                 dict(vote_fraction=1.5), dict(min_confidence=-0.1)])
def test_segmentation_settings_that_cannot_work_are_refused(bad):
    # grabcut_rounds=0 used to run one round silently; now every unusable setting is named
    with pytest.raises(InputError, match=next(iter(bad))):
        SegmentConfig(**bad)


def test_detector_finds_the_object_in_clutter(duck_refs, dataset):
    _, loaded = duck_refs
    model = colour_model([i for i, _ in loaded], [m for _, m in loaded])
    ious = []
    for f in bop.load_split_frames(dataset, "test", 3):
        image, gt = f.load()
        found = detect(image, model)
        ious.append(mask_iou(found[0].mask, gt) if found else 0.0)
        assert all(0.0 <= d.score <= 1.0 and d.mask.shape == gt.shape for d in found)
    assert np.mean(np.array(ious) >= 0.8) >= 0.75, ious


def test_detector_cuts_each_proposal_once_per_distinct_core(duck_refs, dataset):
    """A proposal is cut by GrabCut once per sure-object core (DetectorConfig.core_openings); a
    cut the same as an earlier one of its proposal (IoU >= same_cut_iou) is dropped."""
    _, loaded = duck_refs
    model = colour_model([i for i, _ in loaded], [m for _, m in loaded])
    image, _ = bop.load_split_frames(dataset, "test", 3)[0].load()
    single = detect(image, model, DetectorConfig(core_openings=(0.3,)))
    assert single
    repeated = detect(image, model, DetectorConfig(core_openings=(0.3, 0.3)))
    assert len(repeated) == len(single)
    both = detect(image, model, DetectorConfig(core_openings=(0.3, 0.0)))
    assert len(single) <= len(both) <= 2 * len(single)


def _checker_and_halves(light, dark):
    """A 640x480 image holding two 120x120 patches of the same two colours in the same amounts:
    a 4-px checker (left) and two smooth halves (right), on mid grey."""
    image = np.full((480, 640, 3), 100, np.uint8)
    yy, xx = np.mgrid[:120, :120]
    image[180:300, 100:220] = np.where(((yy // 4 + xx // 4) % 2 == 0)[..., None], light, dark)
    image[180:300, 400:520] = np.where((xx < 60)[..., None], light, dark)
    return image


def test_texture_model_tells_a_print_from_smooth_surfaces_of_its_colours():
    """Colour alone cannot tell the checker from the two smooth halves; with the texture model
    learned from the checker the checker's pixels are the likelier object."""
    light, dark = np.array([190, 170, 200], np.uint8), np.array([150, 120, 170], np.uint8)
    reference = _checker_and_halves(light, dark)
    ref_mask = np.zeros((480, 640), bool)
    ref_mask[180:300, 100:220] = True
    colour, texture = colour_model([reference], [ref_mask]), texture_model([reference], [ref_mask])
    query = cv2.resize(reference, (320, 240), interpolation=cv2.INTER_AREA)  # the detector's working width
    checker, halves = (slice(95, 145), slice(55, 105)), (slice(95, 145), slice(205, 255))
    by_colour = object_probability(query, colour)
    assert abs(by_colour[checker].mean() - by_colour[halves].mean()) < 0.1
    both = object_probability(query, colour, texture)
    assert both[checker].mean() > 0.8 and both[halves].mean() < 0.5, (both[checker].mean(), both[halves].mean())


def test_texture_trim_cuts_a_smooth_leak_of_the_objects_colours_off_a_textured_mask():
    """The leak GrabCut makes on colour alone: the checker's mask running into a smooth strip of
    its light colour. Trimmed to the checker's texture the strip goes and the checker stays; an
    object without a texture model, or a smooth one, is not trimmed."""
    light, dark = np.array([190, 170, 200], np.uint8), np.array([150, 120, 170], np.uint8)
    image = _checker_and_halves(light, dark)
    checker = np.zeros((480, 640), bool)
    checker[180:300, 100:220] = True
    texture = texture_model([image], [checker])
    image[180:300, 220:280] = light
    leaky = checker.copy()
    leaky[180:300, 220:280] = True
    trimmed = texture_trim(image, leaky, texture, 0.5)
    assert mask_iou(trimmed, checker) > 0.9 > mask_iou(leaky, checker) + 0.2, (mask_iou(trimmed, checker),
                                                                             mask_iou(leaky, checker))
    assert not (trimmed & ~leaky).any()  # a trim only removes
    assert mask_iou(texture_trim(image, checker, texture, 0.5), checker) > 0.9
    assert texture_trim(image, leaky, None, 0.5) is None
    halves = np.zeros((480, 640), bool)
    halves[180:300, 400:520] = True
    assert texture_trim(image, leaky, texture_model([image], [halves]), 0.5) is None


def test_detector_models_are_stored_and_old_objects_keep_working(built_duck, duck_refs):
    """store_detector_model keeps colour and texture in the 3DGO's metadata; a 3DGO registered
    before the texture model is detected by colour alone, a corrupt texture model is refused."""
    _, loaded = duck_refs
    obj = built_duck.to("cpu")
    obj.meta = dict(built_duck.meta)  # the session-wide duck keeps its own
    store_detector_model(obj, [i for i, _ in loaded], [m for _, m in loaded])
    frontend = WeightFreeFrontEnd()
    assert frontend.prepare(obj, with_bank=False).texture is not None
    del obj.meta[TEXTURE_KEY]
    assert frontend.prepare(obj, with_bank=False).texture is None
    obj.meta[TEXTURE_KEY] = [1.0, 2.0]
    with pytest.raises(InputError, match="texture model has 2 bins"):
        frontend.prepare(obj, with_bank=False)
    obj.meta[TEXTURE_KEY] = [float("nan")] * 6
    with pytest.raises(InputError, match="no detector texture model"):
        frontend.prepare(obj, with_bank=False)


def test_detector_proposals_fill_the_holes_in_their_seed():
    """The object's colours that the scene shares leave holes in the colour seed; the proposal is
    the seed with its holes filled (DetectorConfig.fill_seed_holes), so the mask has no hole."""
    light, hole = np.array([230, 200, 40], np.uint8), np.array([40, 90, 200], np.uint8)
    image = np.full((480, 640, 3), 100, np.uint8)
    image[140:340, 220:420] = light
    image[210:270, 290:350] = hole  # a patch the object shares with ...
    image[20:80, 20:600] = hole  # ... the background
    ref = np.full((480, 640, 3), 100, np.uint8)
    ref[140:340, 220:420] = light
    ref[210:270, 290:350] = hole
    ref_mask = np.zeros((480, 640), bool)
    ref_mask[140:340, 220:420] = True
    model = colour_model([ref], [ref_mask])
    inside = (slice(215, 265), slice(295, 345))
    filled = detect(image, model, DetectorConfig())
    assert filled and filled[0].mask[inside].all()
    holed = detect(image, model, DetectorConfig(fill_seed_holes=False))
    assert holed and not holed[0].mask[inside].all()


def test_an_object_with_a_real_hole_keeps_it():
    """A ring's reference masks have a hole (hole_fraction 25 %, over holed_object_fraction), so
    its seeds are not filled: the background seen through the ring stays out of its mask."""
    yy, xx = np.mgrid[:480, :640]
    radius = np.hypot(yy - 240, xx - 320)
    ring = (radius < 100) & (radius >= 50)
    image = np.full((480, 640, 3), 100, np.uint8)
    image[ring] = (230, 200, 40)
    assert hole_fraction([ring]) == pytest.approx(0.25, abs=0.01)
    assert hole_fraction([ring[:, :300]]) == 0.0  # half a ring encloses nothing
    model = colour_model([image], [ring])
    through = radius < 40
    as_ring = detect(image, model, DetectorConfig(), holes=hole_fraction([ring]))
    assert as_ring and not as_ring[0].mask[through].any() and mask_iou(as_ring[0].mask, ring) > 0.9
    as_disc = detect(image, model, DetectorConfig())  # taken for a solid object: the hole is filled
    assert as_disc and as_disc[0].mask[through].all()


def test_a_mask_showing_one_side_scores_against_the_views_that_show_it():
    """An object red on one side and blue on the other, seen from each side once: a query mask
    that shows only the red side matches the red view fully, while the pooled histogram of both
    views dilutes it (Bhattacharyya sqrt(1/2)); a grey blob matches no view. Views with an empty
    mask are left out, and a view set with no object pixels at all is refused."""
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[...] = (200, 30, 30)
    blue[...] = (30, 30, 200)
    full = np.ones((64, 64), bool)
    pooled = colour_model([red, blue], [full, full])
    views = view_models([red, blue, blue], [full, full, np.zeros_like(full)])
    assert len(views.colours) == 2 and views.textures.shape == (2, len(TEXTURE_EDGES) + 1)
    per_view = detection_score(red, full, pooled, None, views, DetectorConfig(score_views=1))
    pooled_score = detection_score(red, full, pooled, None, None, DetectorConfig())
    assert pooled_score == pytest.approx(colour_similarity(colour_model([red], [full]), pooled))
    assert per_view == pytest.approx(1.0, abs=1e-3) and pooled_score == pytest.approx(np.sqrt(0.5), abs=0.02)
    # the mean of the best two views: the blue one, which shares no colour with it, halves it
    both = detection_score(red, full, pooled, None, views, DetectorConfig(score_views=2))
    assert both == pytest.approx(0.5, abs=1e-3)
    grey = np.full((64, 64, 3), 128, np.uint8)
    assert detection_score(grey, full, pooled, None, views, DetectorConfig(score_views=1)) < 0.2
    with pytest.raises(InputError, match="no object pixels"):
        view_models([red], [np.zeros_like(full)])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="score_views"):
            DetectorConfig(score_views=bad)


def test_a_sliver_that_vanishes_at_the_work_width_still_scores():
    """A cut whose pixels all fall between the work image's samples (a one-pixel line on an odd
    row, halved to 320 wide) has no texture histogram: it scores on nothing (0), it does not stop
    the detection with "no object pixels" as its texture model once did; the image's bins binned
    once (ImageBins) score any mask as binning it afresh does."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    sliver = np.zeros((480, 640), bool)
    sliver[101, 200:260] = True
    model = colour_model([image], [np.ones((480, 640), bool)])
    texture = texture_model([image], [np.ones((480, 640), bool)])
    views = view_models([image], [np.ones((480, 640), bool)])
    cfg = DetectorConfig()
    assert detection_score(image, sliver, model, texture, views, cfg) == 0.0
    assert detection_score(image, sliver, model, texture, None, cfg) == 0.0
    bins = ImageBins.of(image, cfg.work_width)
    blob = np.zeros((480, 640), bool)
    blob[100:200, 300:420] = True
    assert detection_score(image, blob, model, texture, views, cfg, bins) == pytest.approx(
        detection_score(image, blob, model, texture, views, cfg)) and \
        detection_score(image, blob, model, texture, views, cfg) > 0.5


def test_per_view_models_are_stored_and_checked(built_duck, duck_refs, tmp_path):
    """store_detector_model keeps one colour and texture model per reference view, which
    survive the 3DGO file; an older 3DGO without them is scored on its pooled models; corrupt
    ones are refused by name."""
    _, loaded = duck_refs
    obj = built_duck.to("cpu")
    obj.meta = dict(built_duck.meta)
    store_detector_model(obj, [i for i, _ in loaded], [m for _, m in loaded])
    save_gaussians(obj, str(tmp_path / "duck.safetensors"))
    frontend = WeightFreeFrontEnd()
    prepared = frontend.prepare(load_gaussians(str(tmp_path / "duck.safetensors")), with_bank=False)
    assert prepared.views.colours.shape == (len(loaded), N_HS)
    assert np.allclose(prepared.views.colours.sum(axis=1), 1.0, atol=1e-3)
    image, mask = loaded[0]
    found = frontend.detect(image, prepared)
    assert found and found[0].score > 0.85 and mask_iou(found[0].mask, mask > 0) > 0.8
    del obj.meta[VIEW_COLOURS_KEY]
    assert frontend.prepare(obj, with_bank=False).views is None
    for key, bad, match in ((VIEW_COLOURS_KEY, [[1.0] * 7], "colour"), (VIEW_COLOURS_KEY, [[float("nan")] * N_HS], "colour"),
                            (VIEW_COLOURS_KEY, "red", "colour"), (VIEW_TEXTURES_KEY, [[-1.0] * 6] * len(loaded), "texture")):
        obj.meta = dict(built_duck.meta)
        store_detector_model(obj, [i for i, _ in loaded], [m for _, m in loaded])
        obj.meta[key] = bad
        with pytest.raises(InputError, match=f"per-view detector {match}"):
            frontend.prepare(obj, with_bank=False)
    obj.meta[VIEW_TEXTURES_KEY] = [[1.0] * 6]
    obj.meta[VIEW_COLOURS_KEY] = [[1.0] * N_HS] * 2
    with pytest.raises(InputError, match="2 per-view colour models but 1 texture"):
        frontend.prepare(obj, with_bank=False)


def test_the_hole_fraction_is_stored_and_checked(built_duck, duck_refs):
    """store_detector_model keeps the hole fraction (the duck has none); an older 3DGO without it
    is taken as hole-free, a corrupt value is refused by name."""
    _, loaded = duck_refs
    obj = built_duck.to("cpu")
    obj.meta = dict(built_duck.meta)
    store_detector_model(obj, [i for i, _ in loaded], [m for _, m in loaded])
    frontend = WeightFreeFrontEnd()
    assert obj.meta[HOLES_KEY] < DetectorConfig.holed_object_fraction
    del obj.meta[HOLES_KEY]
    assert frontend.prepare(obj, with_bank=False).holes == 0.0
    for bad in (float("nan"), -0.5, "many", True):
        obj.meta[HOLES_KEY] = bad
        with pytest.raises(InputError, match="hole fraction"):
            frontend.prepare(obj, with_bank=False)


def test_detector_rejects_bad_images(duck_refs):
    _, loaded = duck_refs
    model = colour_model([i for i, _ in loaded], [m for _, m in loaded])
    with pytest.raises(InputError, match="uint8"):
        detect(np.zeros((48, 64, 3), np.float32), model)
    with pytest.raises(InputError, match="too small"):
        detect(np.zeros((4, 4, 3), np.uint8), model)
    grey = np.full((480, 640, 3), 128, np.uint8)
    assert all(d.score < 0.5 for d in detect(grey, model, DetectorConfig()))


def test_candidates_put_whole_masks_before_ones_cut_off_by_the_border():
    """FrontEnd.candidates: scored, then whole before truncated (whatever their scores), then cut to
    max_candidates; the ordering the Estimator and the detector node share."""
    from gspose_ros.core.detect import Detection
    from gspose_ros.core.frontend import WeightFreeFrontEnd

    def detection(x0, y0, x1, y1, score):
        mask = np.zeros((480, 640), bool)
        mask[y0:y1, x0:x1] = True
        return Detection(mask, np.array([x0, y0, x1, y1], float), score)

    at_left, at_bottom = detection(0, 100, 60, 200, 0.99), detection(300, 400, 380, 480, 0.97)
    whole, weak = detection(200, 150, 300, 250, 0.90), detection(400, 50, 450, 90, 0.70)

    class FixedDetections(WeightFreeFrontEnd):  # the ordering alone, on detections of known boxes
        def detect(self, image, prepared, max_candidates=3):
            return [at_left, at_bottom, whole, weak][:max_candidates]

    frontend, image = FixedDetections(), np.zeros((480, 640, 3), np.uint8)

    def picked(min_score, max_candidates):  # by score: each fixed detection has its own
        return [d.score for d in frontend.candidates(image, None, min_score, max_candidates)]

    assert picked(0.85, 3) == [whole.score, at_left.score, at_bottom.score]
    assert picked(0.85, 1) == [whole.score]
    assert picked(0.5, 2) == [whole.score, weak.score]  # a weak whole mask before cut-off ones
    assert picked(0.995, 2) == []


def test_a_mask_cut_off_by_the_border_must_out_check_a_whole_one_clearly():
    """retrieve_best: a truncated mask's check is handicapped by TRUNCATED_HANDICAP (its box and
    area bias the retrieved translation and scale), so it wins only by a clear margin."""
    from gspose_ros.core.frontend import TRUNCATED_HANDICAP, WeightFreeFrontEnd
    from gspose_ros.core.retrieve import PoseCheck, PoseHypothesis

    cut_off, whole = np.zeros((480, 640), bool), np.zeros((480, 640), bool)
    cut_off[100:200, 0:60] = True
    whole[150:250, 200:300] = True

    class FixedChecks(WeightFreeFrontEnd):  # retrieval's verdicts given, the choice between masks alone
        def __init__(self, scores):
            super().__init__()
            self.scores = scores

        def retrieve(self, obj, prepared, image, mask, K, top_k=32, aligned=0):
            score = self.scores[0 if mask[:, 0].any() else 1]
            return [PoseHypothesis(np.eye(4), 0.5, score, score, PoseCheck(score, 0.0, 0.0))]

    image, K = np.zeros((480, 640, 3), np.uint8), np.eye(3)
    # aligned=0: no 3DGO to align the winner's hypotheses with (the choice is made before that)
    close = FixedChecks([1.32, 1.31])  # the duck's case: a yellow blob off the edge, just ahead
    assert close.retrieve_best(None, None, image, [cut_off, whole], K, aligned=0)[0] == 1
    clear = FixedChecks([1.31 + 2 * TRUNCATED_HANDICAP, 1.31])  # the box's case: its own mask, cut off
    assert clear.retrieve_best(None, None, image, [cut_off, whole], K, aligned=0)[0] == 0
    # the margin is a parameter (EstimatorConfig.truncated_handicap, the retrieval node's): 0 = no handicap
    assert close.retrieve_best(None, None, image, [cut_off, whole], K, aligned=0, truncated_handicap=0.0)[0] == 0
    # retrieve_ranked: every mask, in the order retrieve_best chooses by (what the second pass refines in turn)
    assert [i for i, _, _ in close.retrieve_ranked(None, None, image, [cut_off, whole], K)] == [1, 0]
    assert [i for i, _, _ in clear.retrieve_ranked(None, None, image, [cut_off, whole], K)] == [0, 1]
    assert [i for i, _, _ in clear.retrieve_ranked(None, None, image, [whole], K)] == [0]
    for bad in (-0.1, 2.0, float("nan")):
        with pytest.raises(InputError, match="truncated_handicap"):
            EstimatorConfig(truncated_handicap=bad)


def test_estimator_poses_objects_without_ground_truth(estimator, dataset):
    pts = bop.load_model_points(dataset, 3)
    d = bop.load_models_info(dataset)[3]["diameter"] / 1000
    errors = []
    for f in bop.load_split_frames(dataset, "test", 3):
        image, _ = f.load()
        poses = estimator.estimate(image, f.K, ["duck"])
        assert len(poses) <= 1 and all(p.object_id == "duck" and 0 <= p.score <= 1 for p in poses)
        errors.append(metrics.add(poses[0].T, f.T, pts) if poses else np.inf)
    assert np.mean(np.array(errors) < 0.1 * d) >= 0.5, errors


def test_estimator_finds_two_objects_in_one_image(estimator, dataset):
    both = 0
    for key in range(3):
        frames = {obj_id: [f for f in bop.load_split_frames(dataset, "test_multi", obj_id) if f.im_id == key][0]
                  for obj_id in (2, 3)}
        image, _ = frames[3].load()
        found = {p.object_id for p in estimator.estimate(image, frames[3].K)}
        both += found == {"duck", "bracket"}
    assert both >= 2


def test_estimator_mostly_reports_not_found_on_object_free_clutter(estimator):
    """8 searches (4 clutter images x 2 objects) with the quickly-built test objects: measured 3
    false poses (full builds: 1 in 30, RESULTS.md). A regression in the not-found check shows here."""
    rng = np.random.default_rng(11)
    reports = [r for _ in range(4) for r in estimator.estimate_reports(synth.random_background(rng), synth.DEFAULT_K)]
    assert len(reports) == 8 and sum(r.pose is not None for r in reports) <= 3, reports
    # a refused pose is kept beside "not found" for diagnosis, and it is one that checked too poorly
    min_score = estimator.config.min_score
    assert all(r.rejected is None or (r.pose is None and r.rejected.score < min_score) for r in reports)


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "x" * 65, "-rf", "dück", None, 3])
def test_object_ids_are_checked(bad):
    with pytest.raises(InputError, match="object id"):
        check_object_id(bad)


def test_a_pose_without_a_mask_is_not_reported_as_certain(built_duck, dataset):
    f = bop.load_split_frames(dataset, "test", 3)[0]
    image, gt_mask = f.load()
    T0 = perturb_pose(f.T, np.random.default_rng(0), max_rot_deg=10)
    cfg = cascade_refine_config()
    T, confidence, check = refine_and_check(built_duck, image, gt_mask, mask_box(gt_mask), T0, f.K, cfg)
    assert check is not None and confidence == check.confidence and np.all(np.isfinite(T))
    # no mask, nothing to check against: the refinement's own fit, never an unverified 1.0
    T, confidence, check = refine_and_check(built_duck, image, None, mask_box(gt_mask), T0, f.K, cfg)
    assert check is None and 0.0 <= confidence < 1.0 and np.all(np.isfinite(T))


def test_open_mask_drops_thin_leaks_and_keeps_the_body():
    """Retrieval's view of a detection: a GrabCut leak along a 3-px line is gone, the body stays."""
    body = np.zeros((200, 240), bool)
    body[60:140, 50:130] = True
    leaky = body.copy()
    leaky[98:101, 130:230] = True  # a thin line of the object's colour, grown into the mask
    opened = open_mask(leaky, 0.06)  # disc of ~5 px on this 80-px body
    assert not opened[:, 135:].any()
    assert (opened & body).sum() >= 0.97 * body.sum() and (opened & ~body).sum() <= 10  # a stub where it joined
    assert np.array_equal(open_mask(leaky, 0.0), leaky)
    speck = np.zeros((50, 50), bool)
    speck[10:13, 10:13] = True  # nothing would survive the opening: the mask is kept as it is
    assert np.array_equal(open_mask(speck, 0.3), speck)
    for bad in (-0.1, 0.5, float("nan")):
        with pytest.raises(InputError, match="retrieval_opening"):
            EstimatorConfig(retrieval_opening=bad)


def test_grabcut_core_leaves_out_what_hangs_off_the_seed_by_a_thin_neck():
    """The detector's sure-object core: a seed that ran from the object along a 4-px neck into a
    smaller background blob of the object's colours keeps only the object's body as sure object
    (neck and blob stay probable, for GrabCut to decide); erosion alone kept the blob."""
    body = np.zeros((160, 200), bool)
    body[40:120, 20:100] = True
    seed = body.copy()
    seed[78:82, 100:130] = True  # the neck
    seed[60:100, 130:170] = True  # background of the object's colours
    core = _sure_core(seed, 0.3)
    assert not core[:, 100:].any()
    assert core[50:110, 30:90].all() and not (core & ~body).any()
    eroded = _sure_core(seed, 0.0)
    assert eroded[70:90, 140:160].all()  # erosion alone: the blob is sure object
    speck = np.zeros((50, 50), bool)
    speck[10:14, 10:14] = True  # nothing survives the opening: eroded as before (empty here)
    assert np.array_equal(_sure_core(speck, 0.3), _sure_core(speck, 0.0))


def test_objects_without_a_usable_colour_model_are_refused(built_duck):
    est = Estimator()
    for meta, match in (({}, "no detector colour model"), ({COLOUR_KEY: [1.0] * 7}, "7 bins"),
                        ({COLOUR_KEY: [float("nan")] * 512}, "no detector colour model")):
        obj = built_duck.to("cpu")
        obj.meta = {**built_duck.meta, **meta}
        if not meta:
            obj.meta.pop(COLOUR_KEY, None)
        with pytest.raises(InputError, match=match):
            est.add_object("duck", obj)
    assert est.object_ids() == []


def test_estimator_rejects_unknown_objects_and_bad_queries(estimator):
    image = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(InputError, match="unknown object"):
        estimator.estimate(image, synth.DEFAULT_K, ["nope"])
    with pytest.raises(InputError):
        estimator.estimate(image, np.zeros((3, 3)))
    with pytest.raises(InputError, match="uint8"):
        estimator.estimate(image.astype(np.float64), synth.DEFAULT_K)


def test_a_flipped_pose_gets_a_second_opinion_by_its_check_or_its_edges(built_duck, dataset):
    """second_opinion: a first pose that is the duck flipped (a half turn about its vertical axis)
    gives way to the alternative refined from near the truth, which checks clearly better; a right
    first pose is kept against a flipped alternative by either rule; and where the flip checks as
    well as the truth (frame 2 of this quick fit: 0.69 against 0.69), the clearly-better rule keeps
    the first while the edge rule sees the truth's inner edges match and takes it."""
    from gspose_ros.core.geometry import rotation_error_deg
    from gspose_ros.core.retrieve import PoseHypothesis, alternative_hypotheses, alternative_hypothesis

    config = cascade_refine_config()

    def frame_and_poses(im):
        f = bop.load_split_frames(dataset, "test", 3)[im]
        image, gt = f.load()
        flip = f.T.copy()
        flip[:3, :3] = f.T[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
        near = perturb_pose(f.T, np.random.default_rng(3), max_rot_deg=8, max_depth_frac=0.02, max_lateral_frac=0.01)
        return f, image, gt, mask_box(gt), flip, near

    def refined(image, gt, box, T, K):
        T, confidence, check = refine_and_check(built_duck, image, gt, box, T, K, config)
        return ObjectPose("duck", T, confidence, gt, box, {}, check)

    # the clearly-better rule alone, below alternative_below
    score_rule = EstimatorConfig(alternative_edge_margin=0.0, alternative_confident_margin=0.0)
    edge_rule = EstimatorConfig(alternative_below=0.0, alternative_confident_margin=0.0)  # the stronger-edges rule alone
    f, image, gt, box, flip, near = frame_and_poses(1)
    first_flip = refined(image, gt, box, flip, f.K)
    kept = second_opinion(built_duck, image, gt, box, f.K, first_flip, near, config, score_rule)
    assert kept is not first_flip and rotation_error_deg(kept.T, f.T) < 10 and kept.score > first_flip.score + 0.03
    # every first pose counts as confident (alternative_below 0): the wider margin decides
    margin = kept.score - first_flip.score
    for confident_margin, wins in ((margin - 0.01, True), (margin + 0.01, False), (0.0, False)):
        confident_rule = EstimatorConfig(alternative_below=0.0, alternative_edge_margin=0.0,
                                         alternative_confident_margin=confident_margin)
        again = second_opinion(built_duck, image, gt, box, f.K, first_flip, near, config, confident_rule)
        assert (again is not first_flip) == wins, confident_margin
    first_right = refined(image, gt, box, near, f.K)
    for rules in (score_rule, edge_rule, EstimatorConfig()):
        assert second_opinion(built_duck, image, gt, box, f.K, first_right, flip, config, rules) is first_right
    f, image, gt, box, flip, near = frame_and_poses(2)
    first_flip = refined(image, gt, box, flip, f.K)
    assert second_opinion(built_duck, image, gt, box, f.K, first_flip, near, config, score_rule) is first_flip
    # where the checks tie, the edges decide: the flip puts the beak where the image has none
    # (measured: edge strength at 128 px 0.46 against the flip's 0.15)
    kept = second_opinion(built_duck, image, gt, box, f.K, first_flip, near, config, edge_rule)
    assert kept is not first_flip and rotation_error_deg(kept.T, f.T) < 10
    fine = QueryCrop(image, gt, box, f.K, size=CHOOSE_SIZE)
    assert fine.check(built_duck, kept.T).edge_strength > fine.check(built_duck, first_flip.T).edge_strength + 0.1
    # the alternative is the best-ranked hypothesis >= 90 deg from every refined one
    hypotheses = [PoseHypothesis(T, 0.0, 0.0, 0.0, None) for T in (f.T, near, flip)]
    assert alternative_hypothesis(hypotheses, [f.T]) is hypotheses[2]
    assert alternative_hypothesis(hypotheses[:2], [f.T]) is None
    # the challengers: the best >= alternative_near_deg away (a neighbouring basin), then the best
    # >= 90 deg away where that is another hypothesis
    tilted = f.T.copy()
    tilted[:3, :3] = Rotation.from_euler("x", 40, degrees=True).as_matrix() @ f.T[:3, :3]
    ranked = [PoseHypothesis(T, 0.0, 0.0, 0.0, None) for T in (f.T, near, tilted, flip)]

    def picked(got):  # indices into ranked (the hypotheses themselves hold arrays: no ==)
        return [next(i for i, h in enumerate(ranked + hypotheses) if h is g) for g in got]

    assert picked(alternative_hypotheses(ranked, [f.T])) == [2, 3]
    assert picked(alternative_hypotheses(ranked, [f.T], near_deg=0.0)) == [3]
    assert picked(alternative_hypotheses(hypotheses, [f.T])) == [4 + 2]  # the nearest distinct one is the flip
    assert alternative_hypotheses(hypotheses[:2], [f.T]) == []
    # a pose that passes min_score is challenged by both; one below it by the flip alone
    accepted, rejected = (ObjectPose("duck", f.T, score, gt, box, {}) for score in (0.9, 0.6))
    assert [T is flip for T in challengers(accepted, [tilted, flip], [f.T], EstimatorConfig())] == [False, True]
    assert [T is flip for T in challengers(rejected, [tilted, flip], [f.T], EstimatorConfig())] == [True]
    for bad in (-1.0, 90.0, float("nan")):
        with pytest.raises(InputError, match="alternative_near_deg"):
            EstimatorConfig(alternative_near_deg=bad)
    with pytest.raises(InputError, match="alternative_margin"):
        EstimatorConfig(alternative_margin=float("nan"))
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(InputError, match="alternative_edge_margin"):
            EstimatorConfig(alternative_edge_margin=bad)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(InputError, match="recut_texture_threshold"):
            EstimatorConfig(recut_texture_threshold=bad)
    # the edge rule is sought at any confidence; the clearly-better rule alone only below its bar
    confident = ObjectPose("duck", f.T, 0.9, gt, box, {})
    assert seeks_second_opinion(confident, EstimatorConfig()) and not seeks_second_opinion(confident, score_rule)
    assert seeks_second_opinion(confident, replace(score_rule, alternative_confident_margin=0.06))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="alternative_confident_margin"):
            EstimatorConfig(alternative_confident_margin=bad)
    assert seeks_second_opinion(replace(confident, score=0.7), score_rule) and not seeks_second_opinion(None, edge_rule)


def test_a_leaky_detection_mask_is_cut_again_around_a_rough_pose(built_duck, dataset):
    # the leak the estimator's second pass is for: GrabCut spilling into background next to the
    # object. Around the render at a pose ~10 deg off, the re-cut must lose the leak.
    f = bop.load_split_frames(dataset, "test", 3)[1]
    image, gt = f.load()
    x0, y0, x1, y1 = mask_box(gt).astype(int)
    leaky = gt.copy()
    leaky[y0:y1, x1:min(x1 + (x1 - x0) // 2, gt.shape[1])] = True
    T_rough = perturb_pose(f.T, np.random.default_rng(1), max_rot_deg=10, max_depth_frac=0.03, max_lateral_frac=0.01)
    cut = cut_around_pose(image, built_duck, T_rough, f.K, SegmentConfig())
    assert mask_iou(cut, gt) > 0.85 and mask_iou(cut, gt) > mask_iou(leaky, gt) + 0.1, (mask_iou(cut, gt), mask_iou(leaky, gt))


def test_a_second_pass_pose_counts_only_above_its_bar(built_duck, dataset):
    """second_pass_pose (Estimator._recut, the refiner node): the pose refined from a re-cut mask's
    hypothesis comes back with its check against that mask when it reaches the bar, else None."""
    from gspose_ros.core.geometry import rotation_error_deg

    f = bop.load_split_frames(dataset, "test", 3)[1]
    image, gt = f.load()
    box = mask_box(gt)
    T_near = perturb_pose(f.T, np.random.default_rng(2), max_rot_deg=8, max_depth_frac=0.03, max_lateral_frac=0.01)
    config = cascade_refine_config()
    pose = second_pass_pose("duck", built_duck, image, gt, box, f.K, T_near, config, 0.3, 0.8)
    assert pose is not None and pose.score >= 0.3 and pose.detection_score == 0.8
    assert np.array_equal(pose.T_initial, T_near) and pose.mask is gt and rotation_error_deg(pose.T, f.T) < 5
    assert QueryCrop(image, gt, box, f.K).check(built_duck, pose.T).confidence == pytest.approx(pose.score)
    assert second_pass_pose("duck", built_duck, image, gt, box, f.K, T_near, config, pose.score + 0.01) is None
    for bad in (-1.0, 181.0, float("nan")):
        with pytest.raises(InputError, match="recut_agreement_deg"):
            EstimatorConfig(recut_agreement_deg=bad)


def test_of_two_refined_poses_the_one_that_explains_the_detection_is_kept(built_duck, dataset):
    f = bop.load_split_frames(dataset, "test", 3)[2]
    image, gt = f.load()
    box = mask_box(gt)
    # the same pose turned half a turn about the object's own vertical axis: a flip
    flip = f.T.copy()
    flip[:3, :3] = f.T[:3, :3] @ np.diag([-1.0, 1.0, -1.0])
    poses = [ObjectPose("duck", T, score, gt, box, {}) for T, score in ((flip, 0.7), (f.T, 0.6))]
    chosen = choose_refined(built_duck, image, gt, box, f.K, poses)
    assert chosen is poses[1] and chosen.score == 0.6  # kept with its own confidence
    assert choose_refined(built_duck, image, gt, box, f.K, poses[:1]) is poses[0]
    assert choose_refined(built_duck, image, gt, box, f.K, []) is None
    with pytest.raises(InputError, match="hypotheses"):  # 0 used to be read as 1 silently
        EstimatorConfig(hypotheses=0)
