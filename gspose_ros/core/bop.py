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
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), self.load_mask()

    def load_mask(self) -> np.ndarray | None:
        """mask_visib as (H, W) bool, or None where the split has none."""
        if self.mask_path is None:
            return None
        mask = cv2.imread(self.mask_path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise InputError(f"cannot read mask {self.mask_path}")
        return mask > 127


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


def load_model_mesh(root: str, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertices in metres (BOP models are in millimetres), triangle indices) of an object's model."""
    path = os.path.join(root, "models", f"obj_{obj_id:06d}.ply")
    if not os.path.isfile(path):
        raise InputError(f"BOP model missing: {path}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:
        raise InputError(f"corrupt BOP model {path}: {exc}") from exc
    vertices = np.asarray(mesh.vertices, dtype=np.float64) / 1000.0
    if len(vertices) == 0:
        raise InputError(f"BOP model {path} has no vertices")
    return vertices, np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)


def subsample_points(points: np.ndarray, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """At most max_points of the points, drawn without replacement (seeded): what ADD is taken over."""
    if len(points) > max_points:
        points = points[np.random.default_rng(seed).choice(len(points), max_points, replace=False)]
    return points


def load_model_points(root: str, obj_id: int, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """Model vertices in metres, subsampled for ADD."""
    return subsample_points(load_model_mesh(root, obj_id)[0], max_points, seed)


def model_silhouette(vertices: np.ndarray, faces: np.ndarray, T: np.ndarray, K: np.ndarray,
                     shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the model's triangles filled at pose T. Stands in for mask_visib where a
    split has none, so it ignores occlusion by other objects."""
    p = vertices @ T[:3, :3].T + T[:3, 3]
    mask = np.zeros(shape, np.uint8)
    tris = faces[(p[faces, 2] > 1e-6).all(axis=1)]  # triangles wholly in front of the camera
    if len(tris):
        uv = (p @ K.T)[:, :2] / p[:, 2:3].clip(min=1e-6)
        # 4 fractional bits: sub-pixel vertices, so thin triangles are not rounded away
        polygons = np.round(uv[tris] * 16).clip(-2**24, 2**24).astype(np.int32)
        for triangle in polygons:  # one at a time: fillPoly over many polygons leaves their overlaps empty
            cv2.fillConvexPoly(mask, triangle, 1, lineType=cv2.LINE_8, shift=4)
    return mask > 0


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
