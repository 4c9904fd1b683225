"""Reading and writing the BOP dataset layout.

ROOT/models/obj_XXXXXX.ply (mm), ROOT/models/models_info.json,
ROOT/<split>/<scene:06d>/{rgb/, mask_visib/, scene_camera.json, scene_gt.json}.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import cv2
import numpy as np
import trimesh

from .errors import InputError
from .geometry import pose_from_bop
from .views import validate_views


@dataclass
class BopFrame:
    scene_id: int
    im_id: int
    rgb_path: str
    mask_path: str | None
    K: np.ndarray
    T: np.ndarray  # ground-truth T_camera_object, metres

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        img = cv2.imread(self.rgb_path, cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot read image {self.rgb_path}")
        mask = None
        if self.mask_path is not None:
            mask = cv2.imread(self.mask_path, cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise InputError(f"cannot read mask {self.mask_path}")
            mask = mask > 127
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), mask


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise InputError(f"BOP file missing: {path}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"BOP file is not valid JSON: {path}: {exc}") from exc


def load_models_info(root: str) -> dict[int, dict]:
    info = _read_json(os.path.join(root, "models", "models_info.json"))
    return {int(k): v for k, v in info.items()}


def load_model_points(root: str, obj_id: int, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """Model vertices in metres (BOP models are in millimetres), subsampled for ADD."""
    path = os.path.join(root, "models", f"obj_{obj_id:06d}.ply")
    if not os.path.isfile(path):
        raise InputError(f"BOP model missing: {path}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:
        raise InputError(f"corrupt BOP model {path}: {exc}") from exc
    pts = np.asarray(mesh.vertices, dtype=np.float64) / 1000.0
    if len(pts) == 0:
        raise InputError(f"BOP model {path} has no vertices")
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    return pts


def load_split_frames(root: str, split: str, obj_id: int) -> list[BopFrame]:
    """Every annotated instance of obj_id in a split (first instance per image)."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise InputError(f"BOP split not found: {split_dir}")
    frames = []
    for scene in sorted(os.listdir(split_dir)):
        sdir = os.path.join(split_dir, scene)
        if not scene.isdigit() or not os.path.isdir(sdir):
            continue
        cams = _read_json(os.path.join(sdir, "scene_camera.json"))
        gts = _read_json(os.path.join(sdir, "scene_gt.json"))
        for im_key in sorted(gts, key=int):
            for inst, gt in enumerate(gts[im_key]):
                if int(gt["obj_id"]) != obj_id:
                    continue
                im_id = int(im_key)
                rgb = os.path.join(sdir, "rgb", f"{im_id:06d}.png")
                if not os.path.exists(rgb):
                    rgb = os.path.join(sdir, "rgb", f"{im_id:06d}.jpg")
                mask = os.path.join(sdir, "mask_visib", f"{im_id:06d}_{inst:06d}.png")
                K = np.asarray(cams[im_key]["cam_K"], dtype=np.float64).reshape(3, 3)
                frames.append(BopFrame(int(scene), im_id, rgb, mask if os.path.exists(mask) else None, K,
                                       pose_from_bop(gt["cam_R_m2c"], gt["cam_t_m2c"])))
                break
    if not frames:
        raise InputError(f"no instances of object {obj_id} in {split_dir}")
    return frames


def load_views(frames: list[BopFrame]):
    """Frames with masks as validated PosedViews (the registration input)."""
    loaded = [f.load() for f in frames]
    if any(m is None for _, m in loaded):
        raise InputError("reference views need masks (mask_visib)")
    return validate_views([i for i, _ in loaded], [m for _, m in loaded], [f.T for f in frames], [f.K for f in frames])


def is_symmetric(info: dict) -> bool:
    return bool(info.get("symmetries_discrete") or info.get("symmetries_continuous"))
