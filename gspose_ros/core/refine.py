"""Render-and-compare pose refinement (GS-Pose stage 4) and its building blocks.

From an initial pose, a fixed object-centred crop of the query is compared with
renders of the 3DGO; a pose delta (rotation about the object origin, in the
camera frame, plus a depth-scaled translation) is optimised with AdamW and a
cosine schedule, stopping early when the loss stops changing.
Loss "ssim": (1-SSIM)+(1-MS-SSIM), the paper's refinement loss; "l1ssim":
L1 + (1-SSIM), the paper's tracking loss. Both add a silhouette term
(alpha vs query mask), which carries the pose for low-texture objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .geometry import CropWindow, check_intrinsics, check_pose, crop_window_from_pose
from .gaussians import GaussianObject
from .losses import ms_ssim_loss, ssim_loss
from .render import render
from .views import crop_image


@dataclass
class RefineConfig:
    crop_size: int = 128
    max_steps: int = 150  # paper: <= 400 on a GPU
    lr: float = 1e-2
    weight_decay: float = 0.0
    loss: str = "ssim"  # "ssim" (refinement) or "l1ssim" (tracking)
    mask_weight: float = 3.0
    min_steps: int = 40
    early_stop_window: int = 20
    early_stop_rel: float = 1e-3  # stop when the loss improved less than this over the window
    pad: float = 1.1  # window = projected bounding sphere; keeps the object at the scale the 3DGO was fitted at
    min_mask_iou: float = 0.5  # below: the result is flagged as a failure


@dataclass
class RefineResult:
    T: np.ndarray  # refined T_camera_object
    loss: float
    iterations: int
    mask_iou: float  # silhouette agreement of the final render with the query mask
    confidence: float  # in [0, 1]; mask_iou discounted by the final appearance loss
    ok: bool
    seconds: float


def _skew(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros((), dtype=w.dtype)
    return torch.stack([torch.stack([z, -w[2], w[1]]), torch.stack([w[2], z, -w[0]]), torch.stack([-w[1], w[0], z])])


def apply_delta(T0: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """T = [exp(rot^) R0 | t0 + tz0 * trans]: rotation about the object origin, translation in units of depth."""
    R = torch.linalg.matrix_exp(_skew(rot)) @ T0[:3, :3]
    t = T0[:3, 3] + T0[2, 3] * trans
    top = torch.cat([R, t[:, None]], 1)
    return torch.cat([top, T0[3:]], 0)


def prepare_query(image: np.ndarray, mask: np.ndarray | None, window: CropWindow):
    """Crop the query and its mask; returns float tensors (S,S,3) masked RGB and (S,S) mask."""
    rgb = crop_image(image, window).astype(np.float32) / 255.0
    if mask is None:
        m = np.ones(rgb.shape[:2], dtype=np.float32)
    else:
        m = crop_image(mask.astype(np.float32), window)
    rgb = rgb * m[..., None]
    return torch.from_numpy(rgb), torch.from_numpy(m)


def appearance_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "ssim":
        return ssim_loss(pred, target) + ms_ssim_loss(pred, target)
    if kind == "l1ssim":
        return (pred - target).abs().mean() + ssim_loss(pred, target)
    raise InputError(f"unknown refinement loss {kind!r} (ssim, l1ssim)")


def _check_query(image, mask, T_init, K):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"query image must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise InputError(f"query mask size {mask.shape} does not match image size {image.shape[:2]}")
        mask = mask > (127 if mask.dtype == np.uint8 else 0)
    return image, mask, check_pose(T_init, "initial pose"), check_intrinsics(K)


def refine_pose(obj: GaussianObject, image: np.ndarray, mask: np.ndarray | None, T_init, K,
                config: RefineConfig | None = None, window: CropWindow | None = None) -> RefineResult:
    """Refine T_init against the query image (+ object mask) by render-and-compare."""
    cfg = config or RefineConfig()
    start = time.perf_counter()
    image, mask, T_init, K = _check_query(image, mask, T_init, K)
    if T_init[2, 3] <= 0:
        raise InputError(f"initial pose puts the object behind the camera (t_z={T_init[2, 3]:.3f} m)")
    if window is None:
        window = crop_window_from_pose(T_init, K, obj.diameter / 2, cfg.crop_size, cfg.pad)
    target_rgb, target_mask = prepare_query(image, mask, window)
    Kc = torch.from_numpy(window.crop_intrinsics(K)).float()
    g = obj.activated()
    T0 = torch.from_numpy(T_init).float()
    rot = torch.zeros(3, requires_grad=True)
    trans = torch.zeros(3, requires_grad=True)
    opt = torch.optim.AdamW([rot, trans], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_steps)
    losses, best = [], (float("inf"), T0)
    steps = 0
    for steps in range(1, cfg.max_steps + 1):
        T = apply_delta(T0, rot, trans)
        out = render(g, T, Kc, cfg.crop_size, cfg.crop_size)
        loss = appearance_loss(cfg.loss, out.rgb, target_rgb)
        if mask is not None and cfg.mask_weight > 0:
            loss = loss + cfg.mask_weight * (out.alpha - target_mask).abs().mean()
        value = float(loss.detach())
        if value < best[0]:
            best = (value, T.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(value)
        w = cfg.early_stop_window
        if steps >= cfg.min_steps and len(losses) > w and losses[-w - 1] - min(losses[-w:]) < cfg.early_stop_rel * losses[-w - 1]:
            break
    T_best = best[1]
    iou = silhouette_iou(g, T_best, Kc, cfg.crop_size, target_mask if mask is not None else None)
    confidence = float(np.clip(iou * (1.0 - min(best[0], 1.0)), 0.0, 1.0))
    return RefineResult(T_best.double().numpy(), best[0], steps, iou, confidence, iou >= cfg.min_mask_iou,
                        time.perf_counter() - start)


def silhouette_iou(g, T, Kc, size, target_mask) -> float:
    """IoU between the render's silhouette (alpha > 0.5) and the query mask; 1.0 without a mask."""
    if target_mask is None:
        return 1.0
    with torch.no_grad():
        a = render(g, T, Kc, size, size).alpha > 0.5
    m = target_mask > 0.5
    union = (a | m).sum().item()
    return float((a & m).sum().item() / union) if union else 0.0


def perturb_pose(T, rng: np.random.Generator, max_rot_deg=20.0, max_depth_frac=0.10, max_lateral_frac=0.05):
    """GT perturbation for --init gt-perturbed: a rotation of up to max_rot_deg about a random
    axis, depth scaled by up to +-max_depth_frac, lateral shift up to +-max_lateral_frac of depth."""
    from scipy.spatial.transform import Rotation

    T = np.asarray(T, dtype=np.float64).copy()
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(-max_rot_deg, max_rot_deg))
    T[:3, :3] = Rotation.from_rotvec(axis * angle).as_matrix() @ T[:3, :3]
    z = T[2, 3]
    T[0, 3] += rng.uniform(-max_lateral_frac, max_lateral_frac) * z
    T[1, 3] += rng.uniform(-max_lateral_frac, max_lateral_frac) * z
    T[2, 3] = z * (1 + rng.uniform(-max_depth_frac, max_depth_frac))
    return T
