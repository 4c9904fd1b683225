"""Image losses for fitting and refinement: SSIM, MS-SSIM, PSNR.

SSIM uses a uniform 7x7 window (scikit-image's default) computed with running
sums: on a CPU that is an order of magnitude cheaper than Gaussian grouped
convolutions (pytorch-msssim) or avg_pool2d, which dominated refinement time.

Pose refinement on the CPU needs the loss's gradient only with respect to the
rendered image (the pose Jacobian comes from the forward-mode rasterizer), so
the refinement losses also exist as numba kernels with analytic gradients
(`appearance_loss_and_grad`): ~1 ms at 64 px where torch's forward and
backward take ~6 ms, nearly all of it per-operation overhead on small images.
The torch versions stay the definition (autograd, GPU); tests hold the two equal.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from .errors import InputError

WIN = 7
C1 = 0.01**2
C2 = 0.03**2
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


def _nchw(img: torch.Tensor) -> torch.Tensor:
    return img.permute(2, 0, 1)[None] if img.ndim == 3 else img[None, None]


def _box_filter_valid(t: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over k x k windows (valid region) via running sums: O(1) per pixel, cheap backward."""
    c = F.pad(t.cumsum(-1), (1, 0))
    t = (c[..., k:] - c[..., :-k]) / k
    c = F.pad(t.cumsum(-2), (0, 0, 1, 0))
    return (c[..., k:, :] - c[..., :-k, :]) / k


def _ssim_maps(x: torch.Tensor, y: torch.Tensor):
    """(ssim map, contrast-structure map) over valid 7x7 windows of NCHW images in [0, 1]."""
    c = x.shape[1]
    # one separable box filter over all five statistics at once: fewer, cheaper kernel calls
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    pooled = _box_filter_valid(stats, WIN)
    mx, my, exx, eyy, exy = pooled.split(c, 1)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    cs = (2 * sxy + C2) / (sxx + syy + C2)
    return ((2 * mx * my + C1) / (mx * mx + my * my + C1)) * cs, cs


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two (H, W, C) or (H, W) images in [0, 1]."""
    return _ssim_maps(_nchw(a), _nchw(b))[0].mean()


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM; uses as many of the 5 scales as the image size allows (weights renormalised)."""
    x, y = _nchw(a), _nchw(b)
    levels = 1
    while levels < len(MS_WEIGHTS) and min(x.shape[-2:]) // 2**levels >= WIN:
        levels += 1
    weights = torch.tensor(MS_WEIGHTS[:levels], dtype=x.dtype)
    weights = weights / weights.sum()
    value = torch.ones((), dtype=x.dtype)
    for level in range(levels):
        s, cs = _ssim_maps(x, y)
        if level == levels - 1:
            value = value * torch.relu(s.mean()) ** weights[level]
        else:
            value = value * torch.relu(cs.mean()).clamp(min=1e-6) ** weights[level]
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return value


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - ssim(a, b)


def ms_ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - ms_ssim(a, b)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of (H, W, 3) images in [0, 1], optionally only inside a boolean mask."""
    err = (a - b) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10.0 * torch.log10(1.0 / mse.clamp(min=1e-12)))


REFINE_LOSSES = ("ssim", "l1ssim")


def _check_loss(kind: str) -> None:
    if kind not in REFINE_LOSSES:
        raise InputError(f"unknown refinement loss {kind!r} ({', '.join(REFINE_LOSSES)})")


def appearance_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Refinement's image loss: "ssim" (1-SSIM)+(1-MS-SSIM), the paper's refinement loss;
    "l1ssim" L1 + (1-SSIM), the paper's tracking loss. (H, W, 3) images in [0, 1]."""
    _check_loss(kind)
    if kind == "ssim":
        return ssim_loss(pred, target) + ms_ssim_loss(pred, target)
    return (pred - target).abs().mean() + ssim_loss(pred, target)


# --- the same losses with analytic gradients, for the CPU refinement path -----------------


@njit(cache=True)
def _integral(a: np.ndarray) -> np.ndarray:
    """(C, H+1, W+1) summed-area table of a (C, H, W) array."""
    c, h, w = a.shape
    s = np.zeros((c, h + 1, w + 1))
    for k in range(c):
        for i in range(h):
            row = 0.0
            for j in range(w):
                row += a[k, i, j]
                s[k, i + 1, j + 1] = s[k, i, j + 1] + row
    return s


@njit(cache=True)
def _window_sum(s: np.ndarray, ch: int, i0: int, j0: int, i1: int, j1: int) -> float:
    return s[ch, i1, j1] - s[ch, i0, j1] - s[ch, i1, j0] + s[ch, i0, j0]


@njit(cache=True)
def _ssim_and_grad(x: np.ndarray, y: np.ndarray, luminance: bool):
    """Mean SSIM (luminance=True) or mean contrast-structure term over the valid WIN x WIN
    windows of (C, H, W) float64 images, and its gradient with respect to x: the torch
    _ssim_maps differentiated by hand (d/d mean_x, d/d E[x^2], d/d E[xy] per window, then
    the adjoint of the box filter: every pixel gathers the windows that cover it)."""
    c, h, w = x.shape
    k = WIN
    hv, wv = h - k + 1, w - k + 1
    inv = 1.0 / (k * k)
    sx, sy, sxx, syy, sxy = _integral(x), _integral(y), _integral(x * x), _integral(y * y), _integral(x * y)
    d_mx, d_exx, d_exy = np.zeros((c, hv, wv)), np.zeros((c, hv, wv)), np.zeros((c, hv, wv))
    total = 0.0
    for ch in range(c):
        for i in range(hv):
            for j in range(wv):
                mx = _window_sum(sx, ch, i, j, i + k, j + k) * inv
                my = _window_sum(sy, ch, i, j, i + k, j + k) * inv
                vx = _window_sum(sxx, ch, i, j, i + k, j + k) * inv - mx * mx
                vy = _window_sum(syy, ch, i, j, i + k, j + k) * inv - my * my
                cov = _window_sum(sxy, ch, i, j, i + k, j + k) * inv - mx * my
                a2, b2 = 2 * cov + C2, vx + vy + C2
                cs = a2 / b2
                dcs_dmx = (2 * mx * a2 - 2 * my * b2) / (b2 * b2)  # through vx and cov
                lum, dlum_dmx = 1.0, 0.0
                if luminance:
                    a1, b1 = 2 * mx * my + C1, mx * mx + my * my + C1
                    lum = a1 / b1
                    dlum_dmx = (2 * my * b1 - 2 * mx * a1) / (b1 * b1)
                total += lum * cs
                d_mx[ch, i, j] = dlum_dmx * cs + lum * dcs_dmx
                d_exx[ch, i, j] = -lum * a2 / (b2 * b2)
                d_exy[ch, i, j] = lum * 2 / b2
    n = c * hv * wv
    g_mx, g_exx, g_exy = _integral(d_mx), _integral(d_exx), _integral(d_exy)
    grad = np.zeros((c, h, w))
    scale = inv / n
    for ch in range(c):
        for i in range(h):
            i0, i1 = max(0, i - k + 1), min(hv, i + 1)
            for j in range(w):
                j0, j1 = max(0, j - k + 1), min(wv, j + 1)
                grad[ch, i, j] = scale * (_window_sum(g_mx, ch, i0, j0, i1, j1)
                                          + 2 * x[ch, i, j] * _window_sum(g_exx, ch, i0, j0, i1, j1)
                                          + y[ch, i, j] * _window_sum(g_exy, ch, i0, j0, i1, j1))
    return total / n, grad


def _pool2(x: np.ndarray) -> np.ndarray:
    """F.avg_pool2d(x, 2) of a (C, H, W) array (odd edges dropped, as there)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return 0.25 * (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2])


def _pool2_adjoint(grad: np.ndarray, shape: tuple) -> np.ndarray:
    out = np.zeros(shape)
    h, w = grad.shape[-2] * 2, grad.shape[-1] * 2
    out[..., :h, :w] = 0.25 * np.repeat(np.repeat(grad, 2, -2), 2, -1)
    return out


def _ms_ssim_and_grad(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """ms_ssim of (C, H, W) float64 images and its gradient with respect to x."""
    levels = 1
    while levels < len(MS_WEIGHTS) and min(x.shape[-2:]) // 2**levels >= WIN:
        levels += 1
    weights = np.array(MS_WEIGHTS[:levels]) / sum(MS_WEIGHTS[:levels])
    terms, grads, shapes = [], [], []
    for level in range(levels):
        last = level == levels - 1
        term, grad = _ssim_and_grad(x, y, last)
        floor = 0.0 if last else 1e-6  # relu / clamp as in ms_ssim: no gradient below
        if term <= floor:
            term, grad = floor, np.zeros_like(grad)
        terms.append(term)
        grads.append(grad)
        shapes.append(x.shape)
        if not last:
            x, y = _pool2(x), _pool2(y)
    value = float(np.prod(np.array(terms) ** weights))
    total = None  # d value / d term_l = value * w_l / term_l, pushed back through the pools
    for level in reversed(range(levels)):
        grad = grads[level] * (value * weights[level] / terms[level] if terms[level] > 0 else 0.0)
        total = grad if total is None else grad + _pool2_adjoint(total, shapes[level])
    return value, total


def appearance_loss_and_grad(kind: str, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """appearance_loss of (H, W, 3) float images and its gradient with respect to pred (H, W, 3)."""
    _check_loss(kind)
    x = np.ascontiguousarray(np.asarray(pred, dtype=np.float64).transpose(2, 0, 1))
    y = np.ascontiguousarray(np.asarray(target, dtype=np.float64).transpose(2, 0, 1))
    value, grad = _ssim_and_grad(x, y, True)
    value, grad = 1.0 - value, -grad
    if kind == "ssim":
        ms, ms_grad = _ms_ssim_and_grad(x, y)
        value, grad = value + 1.0 - ms, grad - ms_grad
    else:
        diff = x - y
        value, grad = value + float(np.abs(diff).mean()), grad + np.sign(diff) / diff.size
    return value, grad.transpose(1, 2, 0)
