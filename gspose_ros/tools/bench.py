"""gspose-bench: speed of the engine, printed as JSON (and written to results/bench.json).

Renderer forward+backward (pose gradient) at 128/224-px crops for 5k/20k/50k
Gaussians, the fast CPU rasterizer against the dense PyTorch oracle on the
same scene, 3DGO build time for 64 views, refinement time per frame, the whole
cascade per 640x480 frame (by stage; and with two hypotheses refined), tracking
rate at 128-px crops, peak memory. On a CUDA machine the gsplat backend is
measured too; otherwise the output says the GPU path is unmeasured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace

import numba
import numpy as np
import torch

from ..core import bop, synth
from ..core.build import BuildConfig, build_gaussian_object
from ..core.estimator import Estimator
from ..core.frontend import store_detector_model
from ..core.gaussians import GaussianObject, rgb_to_sh0
from ..core.refine import RefineConfig, perturb_pose, refine_pose
from ..core.render import look_at_pose, render
from ..core.track import Tracker, smooth_trajectory


def surface_scene(n: int, seed: int = 0, device="cpu") -> GaussianObject:
    """n opaque Gaussians on an ellipsoid shell (10x7x5 cm), sized to tile it: a stand-in 3DGO."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    means = d * torch.tensor([0.05, 0.035, 0.025])
    area = 4 * np.pi * 0.037**2
    s = float(np.sqrt(area / n))
    sh = torch.zeros(n, 4, 3)
    sh[:, 0] = rgb_to_sh0(torch.rand(n, 3, generator=g))
    obj = GaussianObject(means, torch.full((n, 3), np.log(0.7 * s)), torch.randn(n, 4, generator=g),
                         torch.full((n,), 1.5), sh, meta={"diameter": 0.1})
    return obj.to(device)


def time_render(obj, size, backend, repeats, device):
    K = torch.tensor([[size * 2.2, 0, size / 2], [0, size * 2.2, size / 2], [0, 0, 1.0]], device=device)
    T0 = torch.tensor(look_at_pose(0.25, 30, 20), dtype=torch.float32, device=device)
    g = obj.activated()
    times = []
    for i in range(repeats + 1):
        T = T0.clone().requires_grad_(True)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = render(g, T, K, size, size, backend=backend)
        (out.rgb.sum() + out.alpha.sum()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first call compiles/caches
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def bench_renderer(device, quick):
    res = {}
    backend = "gsplat" if device == "cuda" else "cpu"
    for n in (5000, 20000, 50000):
        obj = surface_scene(n, device=device)
        for size in (128, 224):
            res[f"{backend}_fwd_bwd_ms_{n // 1000}k_{size}px"] = time_render(obj, size, backend, 3 if quick else 10, device)
    obj = surface_scene(5000, device="cpu")
    fast = time_render(obj, 128, "cpu", 3 if quick else 10, "cpu")
    dense = time_render(obj, 128, "dense", 2 if quick else 3, "cpu")
    res["cpu_vs_dense_5k_128px"] = {"cpu_ms": fast, "dense_ms": dense, "speedup": dense / fast}
    return res


def bench_pipeline(quick):
    """Build, refine and track the built-in duck from a synthetic BOP capture."""
    res = {}
    with tempfile.TemporaryDirectory() as root:
        synth.generate_dataset(root, obj_ids=(3,), n_refs=64, n_tests=5 if quick else 10)
        frames = bop.load_split_frames(root, "train", 3)
        views = bop.load_views(frames)
        cfg = BuildConfig(iterations=300 if quick else BuildConfig.iterations)
        t = time.perf_counter()
        obj = build_gaussian_object(views, cfg).gaussians
        res["build_seconds_64_views"] = time.perf_counter() - t
        res["build_iterations"] = cfg.iterations
        res["n_gaussians"] = len(obj)
        rng = np.random.default_rng(0)
        tests = bop.load_split_frames(root, "test", 3)
        times = []
        for f in tests:
            img, m = f.load()
            r = refine_pose(obj, img, m, perturb_pose(f.T, rng), f.K, RefineConfig())
            times.append(r.seconds)
        res["refine_ms_per_frame"] = 1000 * float(np.mean(times))
        # the whole cascade with no ground truth: detect + retrieve + refine per 640x480 frame
        store_detector_model(obj, [v.image for v in views], [v.mask for v in views])
        estimator = Estimator()
        estimator.add_object("duck", obj)
        reports = [estimator.estimate_reports(f.load()[0], f.K)[0] for f in tests]
        res["estimate_seconds_per_frame"] = float(np.mean([r.timings["total"] for r in reports]))
        # alternative: the second opinion, recut: the second pass on a re-cut mask, both for poses
        # that checked poorly (0 where none ran)
        res["estimate_stage_seconds"] = {k: float(np.mean([r.timings.get(k, 0.0) for r in reports]))
                                         for k in ("detect", "retrieve", "refine", "alternative", "recut")}
        res["estimate_second_opinion_fraction"] = float(np.mean(["alternative" in r.timings for r in reports]))
        res["estimate_second_pass_fraction"] = float(np.mean(["recut" in r.timings for r in reports]))
        res["estimate_found_fraction"] = float(np.mean([r.pose is not None for r in reports]))
        # the same frames with two distinct hypotheses refined per detection (what that setting costs)
        # (same estimator, object already prepared: only the setting the estimate reads changes)
        estimator.config = replace(estimator.config, hypotheses=2)
        res["estimate_seconds_per_frame_2_hypotheses"] = float(np.mean(
            [estimator.estimate_reports(f.load()[0], f.K)[0].timings["total"] for f in tests]))
        poses = smooth_trajectory(tests[0].T, 30 if quick else 90, rng)
        seq = synth.render_sequence(synth.duck_object(), poses)
        tracker = Tracker(obj)
        tracker.reset(poses[0])
        step_times, kept = [], 0
        for (img, _), T_gt in zip(seq[1:], poses[1:]):
            r = tracker.step(img, tests[0].K)
            step_times.append(r.seconds)
            kept += r.kept
        res["tracking_fps_128px"] = 1.0 / float(np.median(step_times))
        res["tracking_kept_fraction"] = kept / len(step_times)
        res["tracking_final_t_err_mm"] = float(np.linalg.norm(tracker.T[:3, 3] - poses[-1][:3, 3]) * 1000)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gspose-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and a short build (smoke run)")
    p.add_argument("--skip-pipeline", action="store_true", help="renderer timings only")
    p.add_argument("--out", default="results/bench.json")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {"device": device, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "numba_threads": numba.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "quick": a.quick}
    out["renderer"] = bench_renderer(device, a.quick)
    if device == "cpu":
        out["gpu"] = "unmeasured: no CUDA device on this machine"
    if not a.skip_pipeline:
        out["pipeline"] = bench_pipeline(a.quick)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
