"""Renderer backends: the numba CPU rasterizer against the dense oracle, projection against gsplat's.

Gradients are checked against the oracle's torch autograd, not finite differences:
like 3DGS and gsplat, the renderer drops alpha below 1/255, so the image jumps
where a footprint boundary crosses a pixel, and those jumps dominate any
finite-difference quotient however small the step.
"""

import numpy as np
import pytest
import torch

from gspose_ros.core.errors import InputError
from gspose_ros.core.gaussians import GaussianObject, rgb_to_sh0
from gspose_ros.core.render import choose_backend, look_at_pose, project_gaussians, render, shifted_intrinsics

K = np.array([[150.0, 0, 31.5], [0, 150, 31.5], [0, 0, 1]])


def random_object(n=600, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return GaussianObject(
        means=((torch.rand(n, 3, generator=g) - 0.5) * 0.1).to(dtype),
        log_scales=(np.log(0.006) + 0.3 * torch.randn(n, 3, generator=g)).to(dtype),
        quats=torch.randn(n, 4, generator=g).to(dtype),
        opacity_logits=torch.randn(n, generator=g).to(dtype),
        sh=torch.cat([rgb_to_sh0(torch.rand(n, 1, 3, generator=g)), 0.1 * torch.randn(n, 3, 3, generator=g)], 1).to(dtype),
        meta={"diameter": 0.17},
    )


def render_with_grads(obj, backend, T0, bg=None):
    T = torch.tensor(T0, dtype=torch.float64, requires_grad=True)
    params = {k: v.clone().requires_grad_(True) for k, v in obj.tensors().items()}
    out = render(GaussianObject(**params, meta=obj.meta), T, K, 64, 64, background=bg, backend=backend)
    weights = torch.linspace(0, 1, 64, dtype=torch.float64)
    loss = (out.rgb * weights[:, None, None]).sum() + 0.3 * (out.alpha * weights[None, :]).sum()
    loss.backward()
    return out, T.grad, {k: p.grad for k, p in params.items()}


@pytest.mark.parametrize("azimuth", [30.0, 200.0])
def test_cpu_rasterizer_matches_dense_oracle(azimuth):
    obj = random_object()
    T0 = look_at_pose(0.4, azimuth, 20)
    a, ga, pa = render_with_grads(obj, "cpu", T0)
    b, gb, pb = render_with_grads(obj, "dense", T0)
    assert a.alpha.max() > 0.5  # the scene is really in view
    for x, y in ((a.rgb, b.rgb), (a.alpha, b.alpha), (a.depth, b.depth)):
        assert torch.allclose(x.detach(), y.detach(), atol=1e-9)
    assert torch.allclose(ga, gb, rtol=1e-7, atol=1e-6)
    assert ga.abs().max() > 1.0  # a real gradient, not zeros on both sides
    for k in pa:
        assert torch.allclose(pa[k], pb[k], rtol=1e-6, atol=1e-8), k


def test_background_composite():
    obj = random_object()
    T0 = look_at_pose(0.4, 30, 20)
    plain = render(obj, T0, K, 64, 64)
    white = render(obj, T0, K, 64, 64, background=[1.0, 1.0, 1.0])
    expect = plain.rgb + (1 - plain.alpha[..., None])
    assert torch.allclose(white.rgb, expect)


def test_projection_matches_gsplat():
    from gsplat.cuda._torch_impl import _fully_fused_projection

    obj = random_object(400)
    g = obj.activated()
    T = torch.tensor(look_at_pose(0.4, 45, 30), dtype=torch.float64)
    Ks = shifted_intrinsics(torch.tensor(K))
    ours = project_gaussians(g, T, Ks, 64, 64)
    from gspose_ros.core.gaussians import quat_to_rotmat

    M = quat_to_rotmat(g.quats) * g.scales[:, None, :]
    covars = M @ M.transpose(1, 2)
    radii, means2d, depths, conics, _ = _fully_fused_projection(g.means, covars, T[None], Ks[None], 64, 64)
    visible = radii[0].amax(-1) > 0
    assert visible.sum() > 100
    assert torch.allclose(ours.means2d[visible], means2d[0][visible], atol=1e-9)
    assert torch.allclose(ours.conics[visible], conics[0][visible], rtol=1e-6, atol=1e-9)
    assert torch.allclose(ours.depths, depths[0])


def test_backend_follows_device_not_imports():
    assert choose_backend(torch.device("cpu")) == "cpu"
    assert choose_backend(torch.device("cuda")) == "gsplat"
    with pytest.raises(InputError, match="CUDA"):
        choose_backend(torch.device("cpu"), "gsplat")
    with pytest.raises(InputError, match="unknown render backend"):
        choose_backend(torch.device("cpu"), "opengl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat parity needs a CUDA device")
def test_gsplat_matches_cpu_backend():
    obj = random_object(dtype=torch.float32)
    T0 = look_at_pose(0.4, 30, 20)
    cpu = render(obj, torch.tensor(T0, dtype=torch.float32), K, 64, 64)
    gpu = render(obj.to("cuda"), torch.tensor(T0, dtype=torch.float32, device="cuda"), K, 64, 64)
    assert torch.allclose(cpu.rgb, gpu.rgb.cpu(), atol=2e-3)
    assert torch.allclose(cpu.alpha, gpu.alpha.cpu(), atol=2e-3)


@pytest.mark.parametrize("T, K_, size, word", [
    (np.full((4, 4), np.nan), K, (64, 64), "NaN"),
    (look_at_pose(0.4, 0, 0), np.zeros((3, 3)), (64, 64), "degenerate"),
    (look_at_pose(0.4, 0, 0), K, (0, 64), "positive"),
    (look_at_pose(0.4, 0, 0), K, (100000, 100000), "too large"),
])
def test_render_rejects_bad_input(T, K_, size, word):
    with pytest.raises(InputError, match=word):
        render(random_object(10), T, K_, *size)


def test_forward_mode_jacobians_match_autograd():
    """The Gauss-Newton path: analytic projection Jacobians and the forward-mode rasterizer
    against torch autograd through the differentiable renderer."""
    from gspose_ros.core import raster_cpu as rc
    from gspose_ros.core.refine import apply_delta
    from gspose_ros.core.render import EPS2D, NEAR_PLANE

    g = random_object(300).activated()
    T0 = torch.tensor(look_at_pose(0.4, 30, 20))
    Kt = torch.tensor(K)
    Ks = shifted_intrinsics(Kt)
    gf = g.frozen_for_pose(T0)

    def projected(xi):
        pr = project_gaussians(gf, apply_delta(T0, xi[:3], xi[3:]), Ks, 64, 64)
        return torch.cat([pr.means2d, pr.conics], 1)

    jac = torch.autograd.functional.jacobian(projected, torch.zeros(6, dtype=torch.float64))
    arrays = [gf.means.numpy(), gf.covariances.numpy(), gf.opacities.numpy()]
    R, t = T0[:3, :3].numpy().copy(), T0[:3, 3].numpy().copy()
    m2d, conics, _, radii, dm, dc = rc.project_with_jacobians(*arrays, R, t, Ks[0, 0].item(), Ks[1, 1].item(), Ks[0, 2].item(),
                                                              Ks[1, 2].item(), 64, 64, EPS2D, NEAR_PLANE, 2)
    vis = radii > 0
    assert vis.sum() > 100
    ref = project_gaussians(gf, T0, Ks, 64, 64)
    assert np.array_equal(vis, (ref.radii > 0).numpy())
    assert np.allclose(m2d[vis], ref.means2d.numpy()[vis]) and np.allclose(conics[vis], ref.conics.numpy()[vis])
    assert np.allclose(np.concatenate([dm, dc], 1)[vis], jac.numpy()[vis], rtol=1e-8, atol=1e-8)

    rgb, alpha, drgb, dalpha = rc.render_with_jacobian(gf.means.numpy(), gf.covariances.numpy(), gf.colors.numpy(),
                                                       gf.opacities.numpy(), R, t, Ks.numpy(), 64, 64, EPS2D, NEAR_PLANE)
    gen = torch.Generator().manual_seed(3)
    W, Wa = torch.rand(64, 64, 3, generator=gen, dtype=torch.float64), torch.rand(64, 64, generator=gen, dtype=torch.float64)
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    out = render(gf, apply_delta(T0, xi[:3], xi[3:]), Kt, 64, 64)
    ((out.rgb * W).sum() + (out.alpha * Wa).sum()).backward()
    forward_mode = np.einsum("hwcj,hwc->j", drgb, W.numpy()) + np.einsum("hwj,hw->j", dalpha, Wa.numpy())
    assert np.allclose(rgb, out.rgb.detach().numpy(), atol=1e-12) and np.allclose(alpha, out.alpha.detach().numpy())
    assert np.allclose(forward_mode, xi.grad.numpy(), rtol=1e-7)
    assert np.abs(forward_mode).max() > 10
