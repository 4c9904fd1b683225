"""gspose-eval: pose accuracy on BOP-format data.

Reference views come from --ref-split (with their masks and GT poses: the
registration input), queries from --test-split. --init gt-perturbed refines
from the GT pose perturbed by a seeded random rotation/translation; the query
mask is the split's mask_visib (standing in for the detector).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ..core import bop, metrics
from ..core.build import BuildConfig, build_gaussian_object, heldout_psnr
from ..core.errors import InputError
from ..core.gaussians import load_gaussians, save_gaussians
from ..core.refine import RefineConfig, perturb_pose, refine_pose

INITS = ("gt-perturbed",)


def select_references(frames, num_refs: int):
    """num_refs views spread evenly over the split; the rest (up to 8) are held out for PSNR."""
    if num_refs > len(frames):
        raise InputError(f"--num-refs {num_refs} but the reference split has only {len(frames)} views")
    idx = np.unique(np.linspace(0, len(frames) - 1, num_refs).round().astype(int))
    rest = [i for i in range(len(frames)) if i not in set(idx)]
    held = [frames[i] for i in rest[:: max(1, len(rest) // 8)][:8]] if rest else []
    return [frames[i] for i in idx], held


def get_object(args, obj_id, log):
    """Build (or load the cached) 3DGO of obj_id; returns (object, build seconds, held-out PSNR list)."""
    cache = os.path.join(args.model_dir, f"obj_{obj_id:06d}_{args.num_refs}refs.safetensors") if args.model_dir else None
    frames = bop.load_split_frames(args.root, args.ref_split, obj_id)
    refs, held = select_references(frames, args.num_refs)
    if cache and os.path.isfile(cache) and not args.rebuild:
        obj = load_gaussians(cache)
        build_s = obj.meta.get("build_seconds", float("nan"))
    else:
        views = bop.load_views(refs)
        cfg = BuildConfig(iterations=args.build_iters)
        last = [0.0]

        def progress(p):
            if p.elapsed_s - last[0] > 15 or p.iteration == p.total:
                last[0] = p.elapsed_s
                log(f"  obj {obj_id}: build {p.iteration}/{p.total} loss {p.loss:.4f} gaussians {p.n_gaussians} {p.elapsed_s:.0f}s")

        result = build_gaussian_object(views, cfg, progress=progress)
        obj, build_s = result.gaussians, result.seconds
        if cache:
            os.makedirs(args.model_dir, exist_ok=True)
            save_gaussians(obj, cache)
    psnrs = heldout_psnr(obj, bop.load_views(held)) if held else []
    return obj, build_s, psnrs


def evaluate_object(args, obj_id, info, log):
    obj, build_s, psnrs = get_object(args, obj_id, log)
    points = bop.load_model_points(args.root, obj_id)
    diameter = info["diameter"] / 1000.0
    symmetric = bop.is_symmetric(info)
    frames = bop.load_split_frames(args.root, args.test_split, obj_id)[: args.max_frames]
    rng = np.random.default_rng(args.seed + obj_id)
    cfg = RefineConfig(max_steps=args.refine_steps)
    rows = []
    for f in frames:
        image, mask = f.load()
        T_init = perturb_pose(f.T, rng)
        t0 = time.perf_counter()
        r = refine_pose(obj, image, mask, T_init, f.K, cfg)
        row = {"scene_id": f.scene_id, "im_id": f.im_id, "seconds": time.perf_counter() - t0, "iterations": r.iterations,
               "confidence": r.confidence, "ok": r.ok,
               "init": metrics.pose_errors(T_init, f.T, points, f.K, diameter, symmetric),
               **metrics.pose_errors(r.T, f.T, points, f.K, diameter, symmetric)}
        rows.append(row)
        log(f"  obj {obj_id} im {f.im_id}: ADD {row['add'] * 1000:.1f} mm (init {row['init']['add'] * 1000:.1f}), "
            f"R {row['r_err_deg']:.1f} deg, {row['iterations']} it, {row['seconds']:.2f} s")
    summary = {
        "obj_id": obj_id, "symmetric": symmetric, "frames": len(rows), "num_refs": args.num_refs,
        "add_0.1d": float(np.mean([r["add_0.1d"] for r in rows])),
        "init_add_0.1d": float(np.mean([r["init"]["add_0.1d"] for r in rows])),
        "proj2d_5px": float(np.mean([r["proj2d_5px"] for r in rows])),
        "5cm5deg": float(np.mean([r["5cm5deg"] for r in rows])),
        "refine_seconds_mean": float(np.mean([r["seconds"] for r in rows])),
        "build_seconds": build_s, "heldout_psnr_db": float(np.mean(psnrs)) if psnrs else None,
        "n_gaussians": len(obj),
    }
    return summary, rows


def print_table(summaries, out=None):
    out = out or sys.stdout
    head = (f"{'obj':>4} {'frames':>6} {'refs':>4} {'ADD(-S)@0.1d':>12} {'init':>6} {'Proj2D@5px':>10} {'5cm5deg':>7} "
            f"{'refine s':>8} {'build s':>7} {'PSNR dB':>7}")
    print(head, file=out)
    for s in summaries:
        psnr = f"{s['heldout_psnr_db']:.1f}" if s["heldout_psnr_db"] is not None else "-"
        print(f"{s['obj_id']:>4} {s['frames']:>6} {s['num_refs']:>4} {100 * s['add_0.1d']:>11.1f}% {100 * s['init_add_0.1d']:>5.0f}% "
              f"{100 * s['proj2d_5px']:>9.1f}% {100 * s['5cm5deg']:>6.1f}% {s['refine_seconds_mean']:>8.2f} "
              f"{s['build_seconds']:>7.1f} {psnr:>7}", file=out)
    n = sum(s["frames"] for s in summaries)
    avg = sum(s["add_0.1d"] * s["frames"] for s in summaries) / max(n, 1)
    print(f"all  {n:>6}      {100 * avg:>11.1f}%", file=out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gspose-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="BOP dataset root (models/, <split>/...)")
    p.add_argument("--obj-id", default=None, help="comma-separated object ids (default: all in models_info.json)")
    p.add_argument("--ref-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--num-refs", type=int, default=64)
    p.add_argument("--init", choices=INITS, default="gt-perturbed")
    p.add_argument("--max-frames", type=int, default=20, help="queries per object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-iters", type=int, default=BuildConfig.iterations)
    p.add_argument("--refine-steps", type=int, default=RefineConfig.max_steps)
    p.add_argument("--model-dir", default=None, help="cache built 3DGOs here and reuse them")
    p.add_argument("--rebuild", action="store_true", help="ignore cached 3DGOs")
    p.add_argument("--out", default="results/eval.json", help="JSON with per-frame errors and summaries")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        infos = bop.load_models_info(args.root)
        ids = [int(x) for x in args.obj_id.split(",")] if args.obj_id else sorted(infos)
        missing = [i for i in ids if i not in infos]
        if missing:
            raise InputError(f"objects {missing} not in models_info.json")
        summaries, per_frame = [], {}
        for obj_id in ids:
            s, rows = evaluate_object(args, obj_id, infos[obj_id], log)
            summaries.append(s)
            per_frame[str(obj_id)] = rows
    except InputError as exc:
        print(f"gspose-eval: error: {exc}", file=sys.stderr)
        return 2
    print_table(summaries)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "summaries": summaries, "frames": per_frame}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
