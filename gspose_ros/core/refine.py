"""Render-and-compare pose refinement (GS-Pose stage 4) and its building blocks.

From an initial pose, a fixed object-centred crop of the query is compared with
renders of the 3DGO; a pose delta (rotation about the object origin, in the
camera frame, plus a depth-scaled translation) is optimised with AdamW and a
cosine schedule, stopping early when the loss stops changing.
Loss "ssim": (1-SSIM)+(1-MS-SSIM), the paper's refinement loss; "l1ssim":
L1 + (1-SSIM), the paper's tracking loss. Both add a silhouette term
(alpha vs query mask), which carries the pose for low-texture objects.

On the CPU the gradient does not come from autograd: the forward-mode rasterizer
gives d(image)/d(pose) directly (6 tangents per pixel, the Gauss-Newton polish's
Jacobians), the losses' numba kernels give d(loss)/d(image), and their product is
the exact gradient (`CpuPoseLoss`), at half the cost per step. On CUDA (gsplat)
refinement runs through autograd as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from .errors import InputError
from .gaussians import GaussianObject
from .geometry import CropWindow, check_intrinsics, check_pose, crop_window_from_pose, orthonormalize
from .losses import appearance_loss, appearance_loss_and_grad
from .raster_cpu import render_with_jacobian
from .render import EPS2D, NEAR_PLANE, dilation, render, shifted_intrinsics
from .views import crop_image


@dataclass
class AlignConfig:
    """Gauss-Newton (Levenberg-Marquardt) direct alignment: few, expensive-but-exact steps.

    Residuals: rendered colour x per-channel gain - masked query colour, and mask_weight *
    (alpha - mask); Jacobians come from the forward-mode rasterizer (CPU backend)."""

    crop_size: int = 128
    coarse_size: int = 64
    coarse_iters: int = 1
    fine_iters: int = 2
    mask_weight: float = 1.0
    damping: float = 1e-2  # initial LM lambda, relative to diag(H)
    pad: float = 1.1
    min_mask_iou: float = 0.5
    # the render's colours are scaled per channel, at every linearisation, by the gain that best
    # matches them to the query inside both silhouettes (least squares, clamped to
    # PHOTOMETRIC_GAIN_RANGE): the 3DGO bakes in the references' light, and raw colour residuals
    # pull the pose towards wherever the query's other light makes the shading agree. Measured
    # (/tmp/ds2, 64 co-segmented refs, true masks, cascade refinement from the true pose, 20
    # frames each): duck rotation errors 9.6 / 15.1 / 7.2 -> 2.8 / 8.4 / 6.5 deg on its three
    # drifting frames, from 15-deg perturbations 19 -> 20 within 0.1 d; box and bracket unchanged
    photometric_gain: bool = True


# the per-channel gain photometric_gain may apply: beyond it the silhouettes hardly overlap the
# same surface, and a free gain would let the colours fade out of the residual
PHOTOMETRIC_GAIN_RANGE = (0.5, 2.0)


@dataclass
class RefineConfig:
    crop_size: int = 128
    max_steps: int = 150  # paper: <= 400 on a GPU
    coarse_size: int = 64  # the first steps compare at this size: cheap, and a wider basin
    coarse_fraction: float = 0.5  # share of max_steps spent at coarse_size (0: none)
    lr: float = 2e-2  # also the largest first step (radians, depth fractions): sets the reach
    weight_decay: float = 0.0
    loss: str = "ssim"  # "ssim" (refinement) or "l1ssim" (tracking)
    mask_weight: float = 3.0
    min_steps: int = 40  # per stage, before early stopping may end it
    early_stop_window: int = 20
    early_stop_rel: float = 1e-3  # stop when the loss improved less than this over the window
    pad: float = 1.1  # window = projected bounding sphere; keeps the object at the scale the 3DGO was fitted at
    min_mask_iou: float = 0.5  # below: the result is flagged as a failure
    # Gauss-Newton polish after Adam (CPU backend): Adam with a large step finds the basin,
    # a few exact least-squares steps then settle depth and fine rotation, which Adam's
    # sign-like steps leave loose. None: no polish.
    polish: AlignConfig | None = field(default_factory=lambda: AlignConfig(coarse_iters=2, fine_iters=3))


# Gauss-Newton steps at 128 px that end the cascade's refinement (cascade_refine_config). Adam
# leaves the depth a few per cent too far (its 64-px renders are fatter: refine_pose), and on the
# bracket's thin parts 6 steps did not bring it back: seed-3 frames 10 and 11 ended at ADD 23 and
# 19 mm, ~2 cm too far (0.1 d = 15 mm), and went on converging with more steps (12: 13 and 10 mm);
# over the four scene sets 206 -> 208 of 240 (RESULTS.md, eighteenth session)
CASCADE_POLISH_FINE_ITERS = 12


def cascade_refine_config(max_steps: int = 40, polish_fine_iters: int = CASCADE_POLISH_FINE_ITERS) -> RefineConfig:
    """Refinement from a retrieved pose, inside the ~2 s/frame CPU budget (Estimator, refiner node):
    Adam at the coarse (64 px) size only, then a longer Gauss-Newton polish at both sizes (4 coarse
    + `polish_fine_iters` fine steps instead of 2 + 3). Measured from retrieved poses (10 frames per
    object, /tmp/ds2): 4 + 6 took the frames within 0.1 d from 6 to 8 (low-texture bracket) and 5 to
    6 (duck); moving Adam's 128-px steps to 64 px kept every pass and saved ~0.3 s. 4 + 12: RESULTS.md
    (eighteenth session)."""
    if polish_fine_iters < 1:
        raise InputError(f"polish_fine_iters must be >= 1 (Gauss-Newton steps at the full size), got {polish_fine_iters}")
    return RefineConfig(max_steps=max_steps, min_steps=min(20, max_steps), coarse_fraction=1.0,
                        polish=AlignConfig(coarse_iters=4, fine_iters=polish_fine_iters))


@dataclass
class RefineResult:
    T: np.ndarray  # refined T_camera_object
    loss: float
    iterations: int
    mask_iou: float  # silhouette agreement of the final render with the query mask
    confidence: float  # in [0, 1]; mask_iou discounted by the final appearance loss
    ok: bool
    seconds: float
    window: CropWindow | None = None  # the crop compared at crop_size
    alpha: np.ndarray | None = None  # the render's alpha at the returned pose, in `window`


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


def _so3_left_jacobian(phi: np.ndarray) -> np.ndarray:
    """J_l(phi): exp((phi + d)^) = exp((J_l(phi) d)^) exp(phi^) to first order."""
    theta = float(np.linalg.norm(phi))
    K = _skew(torch.from_numpy(phi)).numpy()
    if theta < 1e-8:
        return np.eye(3) + 0.5 * K
    return np.eye(3) + (1 - np.cos(theta)) / theta**2 * K + (theta - np.sin(theta)) / theta**3 * K @ K


def _jacobian_arrays(g) -> tuple[np.ndarray, ...]:
    """What render_with_jacobian takes from pose-frozen Gaussians: float64 means, object-frame
    covariances, colours and opacities."""
    return tuple(np.ascontiguousarray(x.double().numpy()) for x in (g.means, g.covariances, g.colors, g.opacities))


def _render_at(arrays, T: np.ndarray, Ks: np.ndarray, size: int, eps2d: float):
    """render_with_jacobian of _jacobian_arrays at pose T: (rgb, alpha, d rgb/d xi, d alpha/d xi).
    eps2d: the screen-space dilation, held fixed over a stage so that the Jacobians stay exact (Adam:
    EPS2D, see refine_pose; the polish: render.dilation at the stage's starting pose, which changes
    by a few per cent over a refinement)."""
    return render_with_jacobian(*arrays, T[:3, :3].copy(), T[:3, 3].copy(), Ks, size, size, eps2d, NEAR_PLANE)


class CpuPoseLoss:
    """The refinement loss at a pose and its exact gradient in apply_delta's (rot, trans), without
    autograd: the forward-mode rasterizer's pose Jacobians (perturbation xi = (w, tau) at the
    current pose, T(xi) = [exp(w^) R | t + t_z tau]) times the loss's gradient in the image."""

    def __init__(self, g, K_crop: torch.Tensor, size: int, target_rgb: torch.Tensor, target_mask: torch.Tensor | None,
                 loss: str, mask_weight: float, eps2d: float):
        self.arrays = _jacobian_arrays(g)
        self.eps2d = eps2d
        self.Ks = shifted_intrinsics(K_crop.double()).numpy()
        self.size, self.loss, self.mask_weight = size, loss, mask_weight
        self.target_rgb = target_rgb.double().numpy()
        self.target_mask = None if target_mask is None or mask_weight <= 0 else target_mask.double().numpy()

    def __call__(self, T0: np.ndarray, rot: np.ndarray, trans: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """(loss, d loss/d rot, d loss/d trans, alpha) at apply_delta(T0, rot, trans)."""
        T = _delta_pose_np(T0, np.concatenate([rot, trans]))
        rgb, alpha, drgb, dalpha = _render_at(self.arrays, T, self.Ks, self.size, self.eps2d)
        value, grad_rgb = appearance_loss_and_grad(self.loss, rgb, self.target_rgb)
        grad_xi = drgb.reshape(-1, 6).T @ grad_rgb.reshape(-1)
        if self.target_mask is not None:
            diff = alpha - self.target_mask
            value += self.mask_weight * float(np.abs(diff).mean())
            grad_xi += dalpha.reshape(-1, 6).T @ (self.mask_weight * np.sign(diff).reshape(-1) / diff.size)
        # xi is a perturbation at the current pose; rot and trans are deltas from T0 (chain rule)
        grad_rot = _so3_left_jacobian(rot).T @ grad_xi[:3]
        grad_trans = grad_xi[3:] * (T0[2, 3] / T[2, 3])
        return value, grad_rot, grad_trans, alpha


def _prepare_query(obj: GaussianObject, image, mask, T_init, K, crop_size: int, pad: float,
                   window: CropWindow | None):
    """Validate a refinement query; returns (image, bool mask or None, T_init, K, crop window)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"query image must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise InputError(f"query mask size {mask.shape} does not match image size {image.shape[:2]}")
        mask = mask > (127 if mask.dtype == np.uint8 else 0)
    T_init, K = check_pose(T_init, "initial pose"), check_intrinsics(K)
    if T_init[2, 3] <= 0:
        raise InputError(f"initial pose puts the object behind the camera (t_z={T_init[2, 3]:.3f} m)")
    if window is None:
        window = crop_window_from_pose(T_init, K, obj.diameter / 2, crop_size, pad)
    return image, mask, T_init, K, window


def _stages(cfg: RefineConfig) -> list[tuple[int, int]]:
    coarse = int(round(cfg.max_steps * cfg.coarse_fraction)) if cfg.coarse_size < cfg.crop_size else 0
    # a stage without steps would report its start (the initial pose) as its best: leave it out
    stages = [(size, n) for size, n in ((cfg.coarse_size, coarse), (cfg.crop_size, cfg.max_steps - coarse)) if n > 0]
    return stages or [(cfg.crop_size, 0)]


def refine_pose(obj: GaussianObject, image: np.ndarray, mask: np.ndarray | None, T_init, K,
                config: RefineConfig | None = None, window: CropWindow | None = None,
                polish: bool = True) -> RefineResult:
    """Refine T_init against the query image (+ object mask) by render-and-compare, coarse to fine.
    polish=False stops after Adam (polish_refined does the rest)."""
    cfg = config or RefineConfig()
    start = time.perf_counter()
    image, mask, T_init, K, window = _prepare_query(obj, image, mask, T_init, K, cfg.crop_size, cfg.pad, window)
    T0 = torch.from_numpy(T_init).float()
    g = obj.activated().frozen_for_pose(T0)
    on_cpu = g.means.device.type == "cpu"
    rot = torch.zeros(3, requires_grad=True)
    trans = torch.zeros(3, requires_grad=True)
    steps_done = 0
    for size, n_steps in _stages(cfg):
        stage_window = CropWindow(window.x0, window.y0, window.side, size)
        target_rgb, target_mask = prepare_query(image, mask, stage_window)
        Kc = torch.from_numpy(stage_window.crop_intrinsics(K)).float()
        # Adam renders with the fitted scale's dilation in pixels (EPS2D), not render.dilation: at the
        # coarse size that blurs the object twice as wide, a wider basin for Adam's search, at the
        # cost of a silhouette ~3 % too large (the depth ~3 % too far), which the polish, rendering
        # at the true dilation, removes. Measured (/tmp/ds3, box, 20 frames from perturbed truth):
        # with dilation() here 85 % within 0.1 d (Adam's basin narrower), with EPS2D 100 %
        eps2d = EPS2D
        cpu_loss = CpuPoseLoss(g, Kc, size, target_rgb, target_mask if mask is not None else None, cfg.loss,
                               cfg.mask_weight, eps2d) if on_cpu else None
        opt = torch.optim.AdamW([rot, trans], lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n_steps, 1))
        losses, best = [], (float("inf"), T0, None)  # losses of different sizes do not compare: best per stage
        for step in range(1, n_steps + 1):
            opt.zero_grad(set_to_none=True)
            if cpu_loss is not None:
                value, grad_rot, grad_trans, alpha = cpu_loss(T_init, rot.detach().double().numpy(),
                                                              trans.detach().double().numpy())
                rot.grad, trans.grad = torch.from_numpy(grad_rot).float(), torch.from_numpy(grad_trans).float()
                T, alpha = apply_delta(T0, rot.detach(), trans.detach()), torch.from_numpy(alpha).float()
            else:
                T = apply_delta(T0, rot, trans)
                out = render(g, T, Kc, size, size, eps2d=eps2d)
                loss = appearance_loss(cfg.loss, out.rgb, target_rgb)
                if mask is not None and cfg.mask_weight > 0:
                    loss = loss + cfg.mask_weight * (out.alpha - target_mask).abs().mean()
                value, alpha = float(loss.detach()), out.alpha.detach()
                loss.backward()
            if value < best[0]:
                best = (value, T.detach(), alpha)
            opt.step()
            sched.step()
            losses.append(value)
            steps_done += 1
            w = cfg.early_stop_window
            if step >= min(cfg.min_steps, n_steps) and len(losses) > w and \
                    losses[-w - 1] - min(losses[-w:]) < cfg.early_stop_rel * losses[-w - 1]:
                break
    best_loss, T_best, alpha = best
    T_out = orthonormalize(T_best.double().numpy())
    alpha = alpha.numpy() if alpha is not None else None
    iou = _iou(torch.from_numpy(alpha), target_mask) if mask is not None and alpha is not None else 1.0
    result = RefineResult(T_out, best_loss, steps_done, iou, _confidence(iou, best_loss), iou >= cfg.min_mask_iou,
                          time.perf_counter() - start, window, alpha)
    return polish_refined(obj, image, mask, K, result, cfg) if polish else result


def _confidence(iou: float, loss: float) -> float:
    return float(np.clip(iou * (1.0 - min(loss, 1.0)), 0.0, 1.0))


def polish_refined(obj: GaussianObject, image: np.ndarray, mask: np.ndarray | None, K, result: RefineResult,
                   config: RefineConfig) -> RefineResult:
    """The Gauss-Newton polish (config.polish, CPU backend) of an Adam result that refine_pose
    returned unpolished (polish=False): what refine_pose does after Adam, so refining in two calls
    gives the same pose as in one. The result itself where there is no polish to do."""
    if config.polish is None or obj.means.device.type != "cpu" or result.window is None:
        return result
    polished = align_pose(obj, image, mask, result.T, K, config.polish, result.window)
    T, iou, alpha = result.T, result.mask_iou, result.alpha
    if polished.mask_iou >= iou - 0.02:  # never trade a clearly better silhouette for it
        T, iou, alpha = polished.T, polished.mask_iou, polished.alpha
    return RefineResult(T, result.loss, result.iterations + polished.iterations, iou, _confidence(iou, result.loss),
                        iou >= config.min_mask_iou, result.seconds + polished.seconds, result.window, alpha)


def _iou(alpha, target_mask) -> float:
    a, m = alpha > 0.5, target_mask > 0.5
    union = (a | m).sum().item()
    return float((a & m).sum().item() / union) if union else 0.0


def perturb_pose(T, rng: np.random.Generator, max_rot_deg=20.0, max_depth_frac=0.10, max_lateral_frac=0.05):
    """GT perturbation for --init gt-perturbed: a rotation of up to max_rot_deg about a random
    axis, depth scaled by up to +-max_depth_frac, lateral shift up to +-max_lateral_frac of depth."""
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


def _delta_pose_np(T: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """numpy twin of apply_delta."""
    out = T.copy()
    out[:3, :3] = Rotation.from_rotvec(xi[:3]).as_matrix() @ T[:3, :3]
    out[:3, 3] = T[:3, 3] + T[2, 3] * xi[3:]
    return out


def photometric_gain(rgb: np.ndarray, alpha: np.ndarray, target_rgb: np.ndarray,
                     target_mask: np.ndarray | None) -> np.ndarray:
    """(3,) per-channel gain that best maps a render's colours onto the query's inside both
    silhouettes (least squares), clamped to PHOTOMETRIC_GAIN_RANGE; ones when they barely overlap."""
    both = (alpha > 0.5) & ((target_mask > 0.5) if target_mask is not None else True)
    if both.sum() < 16:
        return np.ones(3)
    pred, target = rgb[both], target_rgb[both]
    gain = (pred * target).sum(0) / ((pred * pred).sum(0) + 1e-9)
    return np.clip(gain, *PHOTOMETRIC_GAIN_RANGE)


def _linearise(arrays, T: np.ndarray, Ks: np.ndarray, size: int, eps2d: float,
               target_rgb: np.ndarray, target_mask: np.ndarray | None, mask_weight: float, gain: bool = False):
    """Render at T with pose Jacobians; return (loss, H, grad, alpha) of the least-squares problem.
    gain: colours compared after AlignConfig.photometric_gain (the gain held fixed in the Jacobian,
    as variable projection's usual approximation)."""
    rgb, alpha, drgb, dalpha = _render_at(arrays, T, Ks, size, eps2d)
    n = size * size
    if gain:
        g = photometric_gain(rgb, alpha, target_rgb, target_mask)
        rgb, drgb = rgb * g, drgb * g[:, None]
    r = (rgb - target_rgb).reshape(-1)
    J = drgb.reshape(-1, 6)
    loss = float(r @ r) / (3 * n)
    H = J.T @ J / (3 * n)
    grad = J.T @ r / (3 * n)
    if target_mask is not None and mask_weight > 0:
        ra = (alpha - target_mask).reshape(-1)
        Ja = dalpha.reshape(-1, 6)
        loss += mask_weight * float(ra @ ra) / n
        H += mask_weight * Ja.T @ Ja / n
        grad += mask_weight * Ja.T @ ra / n
    return loss, H, grad, alpha


def align_pose(obj: GaussianObject, image: np.ndarray, mask: np.ndarray | None, T_init, K,
               config: AlignConfig | None = None, window: CropWindow | None = None) -> RefineResult:
    """Levenberg-Marquardt pose alignment on the CPU renderer, coarse to fine (tracking's fast path)."""
    cfg = config or AlignConfig()
    start = time.perf_counter()
    image, mask, T_init, K, window = _prepare_query(obj, image, mask, T_init, K, cfg.crop_size, cfg.pad, window)
    g = obj.activated().frozen_for_pose(torch.from_numpy(T_init).float())
    arrays = _jacobian_arrays(g)
    T = T_init.copy()
    iterations = 0
    stages = [(s, n) for s, n in ((cfg.coarse_size, cfg.coarse_iters), (cfg.crop_size, cfg.fine_iters)) if n > 0]
    for stage, (size, iters) in enumerate(stages):
        sw = CropWindow(window.x0, window.y0, window.side, size)
        target_rgb, target_mask = (x.double().numpy() for x in prepare_query(image, mask, sw))
        target_mask = target_mask if mask is not None else None
        Kc = sw.crop_intrinsics(K)
        Ks = shifted_intrinsics(torch.from_numpy(Kc)).numpy()
        eps2d = dilation(obj, T, Kc)
        loss, H, grad, alpha = _linearise(arrays, T, Ks, size, eps2d, target_rgb, target_mask, cfg.mask_weight,
                                          cfg.photometric_gain)
        lam = cfg.damping
        for it in range(iters):
            iterations += 1
            try:
                xi = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), grad)
            except np.linalg.LinAlgError:
                break
            T_new = _delta_pose_np(T, xi)
            if stage == len(stages) - 1 and it == iters - 1:
                # the last step is taken unverified: verifying costs a full render with Jacobians
                T = T_new
                break
            # each linearisation verifies the previous step (Levenberg-Marquardt) and gives the next one
            new = _linearise(arrays, T_new, Ks, size, eps2d, target_rgb, target_mask, cfg.mask_weight,
                             cfg.photometric_gain)
            if new[0] < loss:
                T, (loss, H, grad, alpha) = T_new, new
                lam = max(lam / 3.0, 1e-6)
            else:
                lam *= 4.0
    iou = _iou(torch.from_numpy(alpha), torch.from_numpy(target_mask)) if target_mask is not None else 1.0
    confidence = float(np.clip(iou * (1.0 - min(loss * 10, 1.0)), 0.0, 1.0))
    return RefineResult(orthonormalize(T), loss, iterations, iou, confidence, iou >= cfg.min_mask_iou,
                        time.perf_counter() - start, window, alpha)
