"""Image losses for fitting and refinement (SSIM/MS-SSIM from pytorch-msssim)."""

from __future__ import annotations

import torch
from pytorch_msssim import ms_ssim, ssim

# pytorch-msssim's MS-SSIM downsamples 4 times with a valid window: at 128-px crops
# the window must be <= 7 pixels, so one window size serves both losses.
WIN = 7


def _nchw(img: torch.Tensor) -> torch.Tensor:
    return img.permute(2, 0, 1)[None] if img.ndim == 3 else img[None, None]


def ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of two (H, W, C) images in [0, 1]."""
    return 1.0 - ssim(_nchw(a), _nchw(b), data_range=1.0, win_size=WIN)


def ms_ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - ms_ssim(_nchw(a), _nchw(b), data_range=1.0, win_size=WIN)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of (H, W, 3) images in [0, 1], optionally only inside a boolean mask."""
    err = (a - b) ** 2
    mse = err[mask].mean() if mask is not None else err.mean()
    return float(10.0 * torch.log10(1.0 / mse.clamp(min=1e-12)))
