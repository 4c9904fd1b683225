import numpy as np
import pytest
import torch
from scipy.ndimage import uniform_filter

from gspose_ros.core.errors import InputError
from gspose_ros.core.losses import appearance_loss, appearance_loss_and_grad, ms_ssim, psnr, ssim


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


@pytest.mark.parametrize("kind", ["ssim", "l1ssim"])
@pytest.mark.parametrize("shape", [(64, 64), (45, 58)])  # odd sizes: MS-SSIM's pooling drops an edge
def test_numba_losses_match_torch_value_and_gradient(rng, kind, shape):
    """The CPU refinement path differentiates the losses by hand: value and gradient must equal autograd's."""
    x = rng.uniform(0, 1, shape + (3,))
    y = np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1)
    x[:10, :10] = y[:10, :10]  # equal pixels: L1's gradient there is 0 in both
    xt = torch.from_numpy(x).requires_grad_()
    loss = appearance_loss(kind, xt, torch.from_numpy(y))
    loss.backward()
    value, grad = appearance_loss_and_grad(kind, x, y)
    assert grad.shape == x.shape
    assert abs(value - float(loss.detach())) < 1e-10
    assert np.allclose(grad, xt.grad.numpy(), rtol=1e-8, atol=1e-14)
    assert np.abs(grad).max() > 0


def test_numba_losses_refuse_an_unknown_loss(rng):
    x = rng.uniform(0, 1, (16, 16, 3))
    with pytest.raises(InputError, match="unknown refinement loss 'l2'"):
        appearance_loss_and_grad("l2", x, x)
