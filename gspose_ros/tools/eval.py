"""gspose-eval: pose accuracy on BOP-format data.

Reference views come from --ref-split (images and GT poses: the registration
input; masks from the split's mask_visib with --ref-masks given, from
co-segmentation with --ref-masks none), queries from --test-split.
--init gt-perturbed refines from the GT pose perturbed by a seeded random
rotation/translation, with the split's mask_visib standing in for the detector.
Splits without mask_visib are judged on the model's silhouette at the true pose
(ObjectTruth.load_frame; occlusion ignored).
--init pipeline runs the whole cascade (detect, retrieve, refine) with every
evaluated object registered at once and no ground truth at inference; a pose
reported for an object that is not in the image counts as a false positive,
and --background-images adds object-free clutter images for the same count.
Its table has two detection columns: `cand`, the detector stage alone (the
candidate mask retrieval chose overlaps mask_visib with IoU >= 0.5, whether or
not its refined pose then passed the not-found check), and `det`, the same for
reported poses only. Below the table each object's frames are counted by outcome,
the first stage that went wrong (frame_outcome): no candidate, wrong candidate,
poor mask, wrong pose, right pose rejected, or posed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..core import bop, metrics, synth
from ..core.build import BuildConfig, build_gaussian_object, heldout_psnr
from ..core.errors import InputError
from ..core.estimator import Estimator, EstimatorConfig
from ..core.frontend import BACKENDS, FrontEnd, FrontEndConfig, WeightFreeFrontEnd, store_detector_model
from ..core.gaussians import load_gaussians, save_gaussians
from ..core.geometry import mask_iou
from ..core.refine import CASCADE_POLISH_FINE_ITERS, RefineConfig, cascade_refine_config, perturb_pose, refine_pose
from ..core.views import validate_views

INITS = ("gt-perturbed", "pipeline")


def select_references(frames, num_refs: int):
    """num_refs views spread evenly over the split; the rest (up to 8) are held out for PSNR."""
    if num_refs > len(frames):
        raise InputError(f"--num-refs {num_refs} but the reference split has only {len(frames)} views")
    idx = np.unique(np.linspace(0, len(frames) - 1, num_refs).round().astype(int))
    rest = [i for i in range(len(frames)) if i not in set(idx)]
    held = [frames[i] for i in rest[:: max(1, len(rest) // 8)][:8]] if rest else []
    return [frames[i] for i in idx], held


@dataclass
class ObjectTruth:
    """What an object's poses are judged by: model points (ADD), diameter, symmetry, and the mesh
    that stands in for mask_visib in splits without masks."""

    points: np.ndarray
    diameter: float  # m
    symmetric: bool
    vertices: np.ndarray
    faces: np.ndarray

    @classmethod
    def load(cls, root: str, obj_id: int, info: dict) -> ObjectTruth:
        vertices, faces = bop.load_model_mesh(root, obj_id)
        # models_info's diameter (mm) when it has one; a models_info without it is still BOP enough
        diameter = info["diameter"] / 1000.0 if "diameter" in info else metrics.model_diameter(vertices)
        if not np.isfinite(diameter) or diameter <= 0:
            raise InputError(f"object {obj_id}: diameter {diameter} m is not positive (models_info.json or model)")
        return cls(bop.subsample_points(vertices), diameter, bop.is_symmetric(info), vertices, faces)

    def load_frame(self, frame: bop.BopFrame) -> tuple[np.ndarray, np.ndarray]:
        """(image, object mask), the mask as `mask` gives it."""
        image, _ = frame.load()
        return image, self.mask(frame, image.shape[:2])

    def mask(self, frame: bop.BopFrame, shape: tuple[int, int]) -> np.ndarray:
        """The frame's object mask: mask_visib, or the model's silhouette at the true pose where the
        split has none (occlusion then ignored). `shape`: the frame's image size."""
        mask = frame.load_mask()
        if mask is None:
            mask = bop.model_silhouette(self.vertices, self.faces, frame.T, frame.K, shape)
        return mask

    def errors(self, T: np.ndarray, frame: bop.BopFrame) -> dict:
        return metrics.pose_errors(T, frame.T, self.points, frame.K, self.diameter, self.symmetric)


def reference_views(args, refs, log, obj_id, frontend: FrontEnd):
    """The registration input: GT masks (--ref-masks given) or co-segmented ones (none)."""
    if args.ref_masks == "given":
        return bop.load_views(refs), None
    images = [f.load()[0] for f in refs]
    seg = frontend.cosegment(images, [f.T for f in refs], [f.K for f in refs])
    log(f"  obj {obj_id}: co-segmentation confidence median {np.median(seg.confidences):.2f}, "
        f"min {seg.confidences.min():.2f}")
    return validate_views(images, seg.masks, [f.T for f in refs], [f.K for f in refs]), seg.confidences


def get_object(args, obj_id, truth: ObjectTruth, log, frontend: FrontEnd | None = None):
    """Build (or load the cached) 3DGO of obj_id; returns (object, build seconds, held-out PSNR list).
    `frontend` co-segments the references when they come without masks (default: weight-free).
    The held-out PSNR is taken inside mask_visib, or the model's silhouette where there is none."""
    frontend = frontend or WeightFreeFrontEnd()
    segmenter = "" if args.ref_masks == "given" or frontend.name == "weight_free" else f"_{frontend.name}"
    name = f"obj_{obj_id:06d}_{args.num_refs}refs_{args.ref_masks}masks{segmenter}.safetensors"
    cache = os.path.join(args.model_dir, name) if args.model_dir else None
    frames = bop.load_split_frames(args.root, args.ref_split, obj_id)
    refs, held = select_references(frames, args.num_refs)
    if cache and os.path.isfile(cache) and not args.rebuild:
        obj = load_gaussians(cache)
        build_s = obj.meta.get("build_seconds", float("nan"))
    else:
        views, seg_confidences = reference_views(args, refs, log, obj_id, frontend)
        cfg = BuildConfig(iterations=args.build_iters)
        last = [0.0]

        def progress(p):
            if p.elapsed_s - last[0] > 15 or p.iteration == p.total:
                last[0] = p.elapsed_s
                log(f"  obj {obj_id}: build {p.iteration}/{p.total} loss {p.loss:.4f} gaussians {p.n_gaussians} {p.elapsed_s:.0f}s")

        result = build_gaussian_object(views, cfg, progress=progress)
        obj, build_s = result.gaussians, result.seconds
        store_detector_model(obj, [v.image for v in views], [v.mask for v in views])
        if seg_confidences is not None:
            obj.meta["mask_confidence_median"] = float(np.median(seg_confidences))
        if cache:
            os.makedirs(args.model_dir, exist_ok=True)
            save_gaussians(obj, cache)
    psnrs = []
    if held:
        loaded = [truth.load_frame(f) for f in held]
        psnrs = heldout_psnr(obj, validate_views([i for i, _ in loaded], [m for _, m in loaded],
                                                 [f.T for f in held], [f.K for f in held]))
    return obj, build_s, psnrs


def evaluate_object(args, obj_id, info, log):
    truth = ObjectTruth.load(args.root, obj_id, info)
    obj, build_s, psnrs = get_object(args, obj_id, truth, log)
    frames = bop.load_split_frames(args.root, args.test_split, obj_id)[: args.max_frames]
    rng = np.random.default_rng(args.seed + obj_id)
    cfg = RefineConfig(max_steps=args.refine_steps)
    rows = []
    for f in frames:
        image, mask = truth.load_frame(f)
        T_init = perturb_pose(f.T, rng)
        t0 = time.perf_counter()
        r = refine_pose(obj, image, mask, T_init, f.K, cfg)
        row = {"scene_id": f.scene_id, "im_id": f.im_id, "seconds": time.perf_counter() - t0, "iterations": r.iterations,
               "confidence": r.confidence, "ok": r.ok,
               "init": truth.errors(T_init, f), **truth.errors(r.T, f)}
        rows.append(row)
        log(f"  obj {obj_id} im {f.im_id}: ADD {row['add'] * 1000:.1f} mm (init {row['init']['add'] * 1000:.1f}), "
            f"R {row['r_err_deg']:.1f} deg, {row['iterations']} it, {row['seconds']:.2f} s")
    summary = {
        "obj_id": obj_id, "symmetric": truth.symmetric, "frames": len(rows), "num_refs": args.num_refs,
        "add_0.1d": float(np.mean([r["add_0.1d"] for r in rows])),
        "init_add_0.1d": float(np.mean([r["init"]["add_0.1d"] for r in rows])),
        "proj2d_5px": float(np.mean([r["proj2d_5px"] for r in rows])),
        "5cm5deg": float(np.mean([r["5cm5deg"] for r in rows])),
        "refine_seconds_mean": float(np.mean([r["seconds"] for r in rows])),
        "build_seconds": build_s, "heldout_psnr_db": float(np.mean(psnrs)) if psnrs else None,
        "n_gaussians": len(obj),
    }
    return summary, rows


# Why a frame did or did not end within ADD(-S)@0.1d, by the first stage that went wrong
# (judged with the ground truth the cascade never sees): what to work on next
OUTCOMES = ("posed", "no candidate", "wrong candidate", "poor mask", "wrong pose", "right pose rejected")
GOOD_MASK_IOU = 0.85  # a candidate below this overlaps the object but leaks or misses enough to mislead


def frame_outcome(detected: bool, candidate_iou: float, posed: bool, rejected_right: bool) -> str:
    """posed: reported within 0.1 d; no candidate: nothing passed the detection score; wrong
    candidate: the chosen mask is not the object (IoU < 0.5); right pose rejected: a pose within
    0.1 d checked below min_score; poor mask: the chosen mask overlaps the object but IoU <
    GOOD_MASK_IOU; wrong pose: a good mask, yet retrieval and refinement ended elsewhere."""
    if posed:
        return "posed"
    if not detected:
        return "no candidate"
    if candidate_iou < 0.5:
        return "wrong candidate"
    if rejected_right:
        return "right pose rejected"
    return "poor mask" if candidate_iou < GOOD_MASK_IOU else "wrong pose"


def _report_score(report) -> float | None:
    """The check score of a search's pose, reported or rejected; None when no candidate gave one."""
    pose = report.pose if report.pose is not None else report.rejected
    return None if pose is None else float(pose.score)


def evaluate_pipeline(args, ids, infos, log):
    """Every evaluated object registered in one Estimator; each test image is searched for all of them
    (--search all) or for those annotated in it (present)."""
    frontend = FrontEndConfig(backend=args.backend, learned={
        "model_weights": args.model_weights, "dinov2_weights": args.dinov2_weights, "device": args.device}
        if args.backend == "learned" else {})
    est = Estimator(EstimatorConfig(frontend=frontend, refine=cascade_refine_config(args.refine_steps, args.polish_fine_iters),
                                    min_detection_score=args.min_detection_score, min_score=args.min_score,
                                    max_candidates=args.max_candidates, recut_below=args.recut_below,
                                    recut_texture_threshold=args.recut_texture_threshold,
                                    recut_agreement_deg=args.recut_agreement_deg,
                                    alternative_below=args.alternative_below,
                                    alternative_confident_margin=args.alternative_confident_margin,
                                    alternative_edge_margin=args.alternative_edge_margin,
                                    alternative_near_deg=args.alternative_near_deg,
                                    hypotheses=args.hypotheses, retrieval_opening=args.retrieval_opening,
                                    truncated_handicap=args.truncated_handicap))
    # per object, once: what its poses and masks are judged by
    truth = {obj_id: ObjectTruth.load(args.root, obj_id, infos[obj_id]) for obj_id in ids}
    built = {}
    for obj_id in ids:
        obj, build_s, psnrs = get_object(args, obj_id, truth[obj_id], log, est.frontend)
        est.add_object(str(obj_id), obj)
        built[obj_id] = (obj, build_s, psnrs)
    # group the annotated instances by image: an image is searched once for every registered object
    images: dict[tuple, dict] = {}
    for obj_id in ids:
        for f in bop.load_split_frames(args.root, args.test_split, obj_id)[: args.max_frames]:
            images.setdefault((f.scene_id, f.im_id), {})[obj_id] = f
    rows = {obj_id: [] for obj_id in ids}
    false_positives, searches, object_seconds, absent_scores = 0, 0, [], []
    for key in sorted(images):
        present = images[key]
        first = next(iter(present.values()))
        image, _ = first.load()
        # every registered object is looked for (absent ones count false poses), or only the ones present
        searched = None if args.search == "all" else [str(obj_id) for obj_id in present]
        for report in est.estimate_reports(image, first.K, searched):
            obj_id = int(report.object_id)
            searches += 1
            object_seconds.append(report.timings["total"])
            if obj_id not in present:
                false_positives += report.pose is not None
                absent_scores.append(_report_score(report))
                continue
            f = present[obj_id]
            judge = truth[obj_id]
            gt_mask = judge.mask(f, image.shape[:2])  # the image itself is the one just searched
            pose = report.pose
            row = {"scene_id": f.scene_id, "im_id": f.im_id, "found": pose is not None, "timings": report.timings,
                   # the detector stage alone: the chosen candidate, whether or not its pose passed
                   "candidate_iou": mask_iou(report.detection.mask, gt_mask) if report.detection else 0.0}
            if pose is None:
                row.update({"det_iou": 0.0, "detected": False, "add_0.1d": False, "proj2d_5px": False, "5cm5deg": False,
                            "init": {"add_0.1d": False}, "score": 0.0})
            else:
                row.update({"det_iou": mask_iou(pose.mask, gt_mask), "score": pose.score,
                            "init": judge.errors(pose.T_initial, f), **judge.errors(pose.T, f)})
                row["detected"] = row["det_iou"] >= 0.5
            row["best_score"] = _report_score(report)  # reported or rejected: where the not-found bar cut
            rejected_right = report.rejected is not None and bool(judge.errors(report.rejected.T, f)["add_0.1d"])
            row["outcome"] = frame_outcome(report.detection is not None, row["candidate_iou"], bool(row["add_0.1d"]),
                                           rejected_right)
            rows[obj_id].append(row)
            add = f"ADD {row['add'] * 1000:.1f} mm" if pose is not None else "not found"
            log(f"  obj {obj_id} scene {f.scene_id} im {f.im_id}: {add}, det IoU {row['det_iou']:.2f}, "
                f"{report.timings['total']:.2f} s, {row['outcome']}")
    rng = np.random.default_rng(args.seed + 7)
    bg_false = 0
    background_scores = []
    for _ in range(args.background_images):
        image = synth.random_background(rng, image.shape[1], image.shape[0])
        reports = est.estimate_reports(image, first.K)
        bg_false += sum(r.pose is not None for r in reports)
        background_scores += [_report_score(r) for r in reports]
    summaries = []
    for obj_id in ids:
        r = rows[obj_id]
        obj, build_s, psnrs = built[obj_id]
        summaries.append({
            "obj_id": obj_id, "symmetric": truth[obj_id].symmetric, "frames": len(r), "num_refs": args.num_refs,
            "detected": float(np.mean([x["detected"] for x in r])),
            "candidate_hit": float(np.mean([x["candidate_iou"] >= 0.5 for x in r])),
            "outcomes": {name: sum(x["outcome"] == name for x in r) for name in OUTCOMES},
            "add_0.1d": float(np.mean([x["add_0.1d"] for x in r])),
            "init_add_0.1d": float(np.mean([x["init"]["add_0.1d"] for x in r])),
            "proj2d_5px": float(np.mean([x["proj2d_5px"] for x in r])),
            "5cm5deg": float(np.mean([x["5cm5deg"] for x in r])),
            "refine_seconds_mean": float(np.mean([x["timings"]["total"] for x in r])),
            "build_seconds": build_s, "heldout_psnr_db": float(np.mean(psnrs)) if psnrs else None,
            "n_gaussians": len(obj), "mask_confidence_median": obj.meta.get("mask_confidence_median"),
        })
    extra = {"absent_object_searches": searches - sum(len(r) for r in rows.values()),
             "absent_object_false_positives": false_positives,
             "background_images": args.background_images, "background_false_positives": bg_false,
             # the check score of every search's pose where nothing was there to find, reported or
             # rejected (None: no candidate got that far): what the not-found bar (--min-score) is set against
             "absent_object_scores": absent_scores, "background_scores": background_scores,
             "estimate_seconds_per_object_mean": float(np.mean(object_seconds)) if object_seconds else None}
    return summaries, rows, extra


def print_table(summaries, out=None):
    out = out or sys.stdout
    head = (f"{'obj':>4} {'frames':>6} {'refs':>4} {'cand':>5} {'det':>5} {'ADD(-S)@0.1d':>12} {'init':>6} {'Proj2D@5px':>10} "
            f"{'5cm5deg':>7} {'time s':>8} {'build s':>7} {'PSNR dB':>7}")
    print(head, file=out)
    for s in summaries:
        psnr = f"{s['heldout_psnr_db']:.1f}" if s["heldout_psnr_db"] is not None else "-"
        det = f"{100 * s['detected']:.0f}%" if "detected" in s else "-"
        cand = f"{100 * s['candidate_hit']:.0f}%" if "candidate_hit" in s else "-"
        print(f"{s['obj_id']:>4} {s['frames']:>6} {s['num_refs']:>4} {cand:>5} {det:>5} {100 * s['add_0.1d']:>11.1f}% "
              f"{100 * s['init_add_0.1d']:>5.0f}% "
              f"{100 * s['proj2d_5px']:>9.1f}% {100 * s['5cm5deg']:>6.1f}% {s['refine_seconds_mean']:>8.2f} "
              f"{s['build_seconds']:>7.1f} {psnr:>7}", file=out)
    n = sum(s["frames"] for s in summaries)
    avg = sum(s["add_0.1d"] * s["frames"] for s in summaries) / max(n, 1)
    print(f"all  {n:>6}      {100 * avg:>11.1f}%", file=out)
    for s in summaries:
        if "outcomes" in s:
            counts = ", ".join(f"{k} {v}" for k, v in s["outcomes"].items() if v)
            print(f"obj {s['obj_id']} frames by outcome: {counts}", file=out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gspose-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="BOP dataset root (models/, <split>/...)")
    p.add_argument("--obj-id", default=None, help="comma-separated object ids (default: all in models_info.json)")
    p.add_argument("--ref-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--num-refs", type=int, default=64)
    p.add_argument("--init", choices=INITS, default="gt-perturbed",
                   help="gt-perturbed: refine from a perturbed GT pose with GT masks; pipeline: detect+retrieve+refine")
    p.add_argument("--ref-masks", choices=("given", "none"), default=None,
                   help="reference masks from mask_visib (given) or co-segmentation (none); default: none for "
                        "--init pipeline, given otherwise")
    p.add_argument("--search", choices=("all", "present"), default="all",
                   help="pipeline: look for every evaluated object in every test image (absent ones count false "
                        "poses; the cost grows with the square of the object count) or only for those present")
    p.add_argument("--background-images", type=int, default=10,
                   help="pipeline: object-free clutter images searched for every object (false-positive count)")
    p.add_argument("--backend", choices=BACKENDS, default="weight_free",
                   help="pipeline: front end (learned = the GS-Pose network; needs --model-weights)")
    p.add_argument("--model-weights", default="", help="learned: GS-Pose model_weights.pth / .safetensors")
    p.add_argument("--dinov2-weights", default="", help="learned: DINOv2 ViT-B/14 checkpoint, if not in model weights")
    p.add_argument("--device", default="cpu", help="learned: torch device of the network")
    p.add_argument("--min-detection-score", type=float, default=EstimatorConfig.min_detection_score,
                   help="pipeline: detections scoring less are not examined")
    p.add_argument("--max-candidates", type=int, default=EstimatorConfig.max_candidates,
                   help="pipeline: detections per object examined (each costs a retrieval)")
    p.add_argument("--min-score", type=float, default=EstimatorConfig.min_score,
                   help="pipeline: refined poses checking less are reported as not found")
    p.add_argument("--recut-below", type=float, default=EstimatorConfig.recut_below,
                   help="pipeline: poses checking less get a second pass on a mask re-cut around their render (0: none)")
    p.add_argument("--recut-agreement-deg", type=float, default=EstimatorConfig.recut_agreement_deg,
                   help="pipeline: a second-pass pose this close to an accepted first pose replaces it when it "
                        "checks >= --min-score (0: off)")
    p.add_argument("--recut-texture-threshold", type=float, default=EstimatorConfig.recut_texture_threshold,
                   help="pipeline: the second pass also tries the detection trimmed where P(object | texture) is "
                        "below this (0: off)")
    p.add_argument("--alternative-below", type=float, default=EstimatorConfig.alternative_below,
                   help="pipeline: first poses checking less give way to an alternative hypothesis checking better "
                        "by 0.03 at 64 and 128 px (above it: --alternative-confident-margin)")
    p.add_argument("--alternative-confident-margin", type=float,
                   default=EstimatorConfig.alternative_confident_margin,
                   help="pipeline: first poses checking --alternative-below or more give way to the alternative "
                        "if it checks better by this (0: off)")
    p.add_argument("--alternative-near-deg", type=float, default=EstimatorConfig.alternative_near_deg,
                   help="pipeline: the best hypothesis this far from the refined one is challenged with too, "
                        "before the one >= 90 deg away (0: off)")
    p.add_argument("--alternative-edge-margin", type=float, default=EstimatorConfig.alternative_edge_margin,
                   help="pipeline: the alternative checking about as well also wins when its inner edges match "
                        "better by this at 128 px (0: off)")
    p.add_argument("--retrieval-opening", type=float, default=EstimatorConfig.retrieval_opening,
                   help="pipeline: retrieve on the detection mask without parts thinner than this x sqrt(area) (0: off)")
    p.add_argument("--truncated-handicap", type=float, default=EstimatorConfig.truncated_handicap,
                   help="pipeline: check-score margin a mask cut off by the image border needs over a whole one")
    p.add_argument("--hypotheses", type=int, default=EstimatorConfig.hypotheses,
                   help="pipeline: distinct retrieval hypotheses refined per detection, the best kept (each costs a refinement)")
    p.add_argument("--max-frames", type=int, default=20, help="queries per object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-iters", type=int, default=BuildConfig.iterations)
    p.add_argument("--refine-steps", type=int, default=None,
                   help=f"Adam steps (default {RefineConfig.max_steps} for gt-perturbed, "
                        f"{EstimatorConfig().refine.max_steps} for pipeline)")
    p.add_argument("--polish-fine-iters", type=int, default=CASCADE_POLISH_FINE_ITERS,
                   help="pipeline: Gauss-Newton steps at 128 px ending each refinement (6 before the eighteenth session)")
    p.add_argument("--model-dir", default=None, help="cache built 3DGOs here and reuse them")
    p.add_argument("--rebuild", action="store_true", help="ignore cached 3DGOs")
    p.add_argument("--out", default="results/eval.json", help="JSON with per-frame errors and summaries")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    pipeline = args.init == "pipeline"
    if args.ref_masks is None:
        args.ref_masks = "none" if pipeline else "given"
    if args.refine_steps is None:
        args.refine_steps = EstimatorConfig().refine.max_steps if pipeline else RefineConfig.max_steps
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        infos = bop.load_models_info(args.root)
        ids = [int(x) for x in args.obj_id.split(",")] if args.obj_id else sorted(infos)
        missing = [i for i in ids if i not in infos]
        if missing:
            raise InputError(f"objects {missing} not in models_info.json")
        summaries, per_frame, extra = [], {}, {}
        if pipeline:
            summaries, rows, extra = evaluate_pipeline(args, ids, infos, log)
            per_frame = {str(k): v for k, v in rows.items()}
        else:
            for obj_id in ids:
                s, rows = evaluate_object(args, obj_id, infos[obj_id], log)
                summaries.append(s)
                per_frame[str(obj_id)] = rows
    except InputError as exc:
        print(f"gspose-eval: error: {exc}", file=sys.stderr)
        return 2
    print_table(summaries)
    if extra:
        print(f"false positives: {extra['absent_object_false_positives']}/{extra['absent_object_searches']} searches "
              f"for absent objects, {extra['background_false_positives']} poses on {extra['background_images']} "
              f"object-free images; estimate {extra['estimate_seconds_per_object_mean']:.2f} s per object and image")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "summaries": summaries, "frames": per_frame, **extra}, f, indent=1,
                      default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
