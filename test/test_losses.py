import numpy as np
import torch
from scipy.ndimage import uniform_filter

from gspose_ros.core.losses import ms_ssim, psnr, ssim


def ssim_reference(x, y, win=7):
    """Independent SSIM (uniform window, valid region) with scipy, per channel, averaged."""
    values = []
    half = win // 2
    for c in range(x.shape[2]):
        a, b = x[..., c], y[..., c]
        f = lambda t: uniform_filter(t, win, mode="constant")[half:-half, half:-half]  # noqa: E731
        ma, mb = f(a), f(b)
        saa, sbb, sab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        values.append(((2 * ma * mb + 1e-4) * (2 * sab + 9e-4) / ((ma**2 + mb**2 + 1e-4) * (saa + sbb + 9e-4))).mean())
    return float(np.mean(values))


def test_ssim_matches_scipy_reference(rng):
    x = rng.uniform(0, 1, (40, 50, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    ours = float(ssim(torch.from_numpy(x), torch.from_numpy(y)))
    assert abs(ours - ssim_reference(x, y)) < 1e-9
    assert 0.2 < ours < 0.95


def test_ssim_and_ms_ssim_order_images_by_distortion(rng):
    x = torch.from_numpy(rng.uniform(0, 1, (128, 128, 3)))
    small = (x + 0.02 * torch.randn(x.shape, dtype=x.dtype)).clamp(0, 1)
    large = (x + 0.2 * torch.randn(x.shape, dtype=x.dtype)).clamp(0, 1)
    assert abs(float(ssim(x, x)) - 1) < 1e-9 and abs(float(ms_ssim(x, x)) - 1) < 1e-9
    assert ssim(x, small) > ssim(x, large)
    assert ms_ssim(x, small) > ms_ssim(x, large)
    # small images use fewer scales instead of failing
    assert 0 < float(ms_ssim(x[:20, :20], small[:20, :20])) < 1


def test_psnr_inside_mask():
    a = torch.zeros(10, 10, 3)
    b = torch.zeros(10, 10, 3)
    b[:5] = 0.1  # error only in the top half
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[5:] = True
    assert psnr(a, b, mask) > 100
    assert abs(psnr(a, b) - 10 * np.log10(1 / 0.005)) < 1e-4
