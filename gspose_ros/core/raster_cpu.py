"""Fast CPU rasterizer for projected 2D Gaussians: numba kernels + a torch autograd Function.

Same algorithm as gsplat/3DGS: Gaussians binned into 8x8 tiles in depth order
(smaller than gsplat's 16: on a CPU the per-pixel list walk dominates, and at
refinement crop sizes footprints are ~10 px, so smaller tiles mean shorter lists),
front-to-back alpha compositing per pixel with early termination when the
transmittance drops below 1e-4, and the reverse traversal for gradients.
Tiles run in parallel; each worker accumulates gradients in its own buffer so
no atomics are needed. Pixel centres are at integer + 0.5 (as gsplat).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

TILE = 8
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


@njit(cache=True)
def _bin_tiles(means2d, radii, depths, width, height, tile):
    ntx = (width + tile - 1) // tile
    nty = (height + tile - 1) // tile
    order = np.argsort(depths, kind="mergesort")
    counts = np.zeros(ntx * nty + 1, dtype=np.int64)
    rect = np.zeros((means2d.shape[0], 4), dtype=np.int64)
    for g in order:
        r = radii[g]
        if r <= 0:
            continue
        x0 = max(0, int(np.floor((means2d[g, 0] - r) / tile)))
        x1 = min(ntx - 1, int(np.floor((means2d[g, 0] + r) / tile)))
        y0 = max(0, int(np.floor((means2d[g, 1] - r) / tile)))
        y1 = min(nty - 1, int(np.floor((means2d[g, 1] + r) / tile)))
        rect[g, 0], rect[g, 1], rect[g, 2], rect[g, 3] = x0, x1, y0, y1
        for ty in range(y0, y1 + 1):
            for tx in range(x0, x1 + 1):
                counts[ty * ntx + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    lists = np.empty(offsets[-1], dtype=np.int32)
    for g in order:
        if radii[g] <= 0:
            continue
        for ty in range(rect[g, 2], rect[g, 3] + 1):
            for tx in range(rect[g, 0], rect[g, 1] + 1):
                t = ty * ntx + tx
                lists[fill[t]] = g
                fill[t] += 1
    return offsets, lists


# Columns of the packed per-tile-entry table: everything the inner loop reads,
# stored in list order so each tile streams through contiguous memory.
MX, MY, CA, CB, CC, OP, THR, CR, CG, CBL, DEPTH = range(11)


@njit(parallel=True, cache=True)
def _pack(lists, means2d, conics, colors, opacities, depths):
    packed = np.empty((lists.shape[0], 11), dtype=means2d.dtype)
    for k in prange(lists.shape[0]):
        g = lists[k]
        packed[k, MX] = means2d[g, 0]
        packed[k, MY] = means2d[g, 1]
        packed[k, CA] = conics[g, 0]
        packed[k, CB] = conics[g, 1]
        packed[k, CC] = conics[g, 2]
        packed[k, OP] = opacities[g]
        # alpha = op*exp(power) < ALPHA_MIN  <=>  power < log(ALPHA_MIN/op): lets pixels
        # outside the footprint skip exp(), the dominant cost on a CPU.
        packed[k, THR] = np.log(ALPHA_MIN / opacities[g]) - 1e-6
        packed[k, CR] = colors[g, 0]
        packed[k, CG] = colors[g, 1]
        packed[k, CBL] = colors[g, 2]
        packed[k, DEPTH] = depths[g]
    return packed


def _constants(dtype):
    """Constants typed like the data: numba types bare Python floats as float64, which would
    silently promote float32 kernels to float64 arithmetic."""
    return np.array([0.0, 0.5, 1.0, ALPHA_MIN, ALPHA_MAX, T_MIN], dtype=dtype)


@njit(parallel=True, cache=True)
def _forward(packed, offsets, width, height, tile, const, out_rgb, out_T, out_depth, out_last):
    zero, half, one, alpha_min, alpha_max, t_min = const[0], const[1], const[2], const[3], const[4], const[5]
    ntx = (width + tile - 1) // tile
    nty = (height + tile - 1) // tile
    centres = np.arange(max(width, height)).astype(const.dtype) + half
    for t in prange(ntx * nty):
        ty, tx = t // ntx, t % ntx
        start, end = offsets[t], offsets[t + 1]
        for py in range(ty * tile, min(height, (ty + 1) * tile)):
            for px in range(tx * tile, min(width, (tx + 1) * tile)):
                fx, fy = centres[px], centres[py]
                T = one
                r = zero
                gr = zero
                b = zero
                d = zero
                last = start
                for k in range(start, end):
                    dx = fx - packed[k, MX]
                    dy = fy - packed[k, MY]
                    power = -half * (packed[k, CA] * dx * dx + packed[k, CC] * dy * dy) - packed[k, CB] * dx * dy
                    if power > zero or power < packed[k, THR]:
                        continue
                    alpha = min(alpha_max, packed[k, OP] * np.exp(power))
                    if alpha < alpha_min:
                        continue
                    next_T = T * (one - alpha)
                    if next_T < t_min:
                        break
                    w = alpha * T
                    r += packed[k, CR] * w
                    gr += packed[k, CG] * w
                    b += packed[k, CBL] * w
                    d += packed[k, DEPTH] * w
                    T = next_T
                    last = k + 1
                out_rgb[py, px, 0] = r
                out_rgb[py, px, 1] = gr
                out_rgb[py, px, 2] = b
                out_T[py, px] = T
                out_depth[py, px] = d
                out_last[py, px] = last


@njit(parallel=True, cache=True)
def _backward(packed, offsets, lists, width, height, tile, const,
              final_T, last_idx, grad_rgb, grad_alpha, nworkers,
              g_means2d, g_conics, g_colors, g_opacities):
    zero, half, one, alpha_min, alpha_max = const[0], const[1], const[2], const[3], const[4]
    centres = np.arange(max(width, height)).astype(const.dtype) + half
    ntx = (width + tile - 1) // tile
    nty = (height + tile - 1) // tile
    ntiles = ntx * nty
    for w_id in prange(nworkers):
        for t in range(w_id, ntiles, nworkers):
            ty, tx = t // ntx, t % ntx
            start = offsets[t]
            for py in range(ty * tile, min(height, (ty + 1) * tile)):
                for px in range(tx * tile, min(width, (tx + 1) * tile)):
                    last = last_idx[py, px]
                    if last <= start:
                        continue
                    fx, fy = centres[px], centres[py]
                    Tf = final_T[py, px]
                    T = Tf
                    dr, dg, db = grad_rgb[py, px, 0], grad_rgb[py, px, 1], grad_rgb[py, px, 2]
                    dA = grad_alpha[py, px]
                    acc_r = zero
                    acc_g = zero
                    acc_b = zero
                    prev_alpha = zero
                    prev_r = zero
                    prev_g = zero
                    prev_b = zero
                    for k in range(last - 1, start - 1, -1):
                        dx = fx - packed[k, MX]
                        dy = fy - packed[k, MY]
                        a, bb, c = packed[k, CA], packed[k, CB], packed[k, CC]
                        power = -half * (a * dx * dx + c * dy * dy) - bb * dx * dy
                        if power > zero or power < packed[k, THR]:
                            continue
                        g = lists[k]
                        G = np.exp(power)
                        raw = packed[k, OP] * G
                        alpha = min(alpha_max, raw)
                        if alpha < alpha_min:
                            continue
                        T = T / (one - alpha)
                        wgt = alpha * T
                        g_colors[w_id, g, 0] += wgt * dr
                        g_colors[w_id, g, 1] += wgt * dg
                        g_colors[w_id, g, 2] += wgt * db
                        # colour of everything behind this Gaussian, normalised by what reaches it
                        acc_r = prev_alpha * prev_r + (one - prev_alpha) * acc_r
                        acc_g = prev_alpha * prev_g + (one - prev_alpha) * acc_g
                        acc_b = prev_alpha * prev_b + (one - prev_alpha) * acc_b
                        cr, cg, cb = packed[k, CR], packed[k, CG], packed[k, CBL]
                        d_alpha = T * ((cr - acc_r) * dr + (cg - acc_g) * dg + (cb - acc_b) * db)
                        d_alpha += dA * Tf / (one - alpha)
                        prev_alpha, prev_r, prev_g, prev_b = alpha, cr, cg, cb
                        if raw > alpha_max:
                            continue  # clamped: no gradient into opacity or shape
                        g_opacities[w_id, g] += G * d_alpha
                        d_power = raw * d_alpha
                        g_means2d[w_id, g, 0] += d_power * (a * dx + bb * dy)
                        g_means2d[w_id, g, 1] += d_power * (bb * dx + c * dy)
                        g_conics[w_id, g, 0] -= half * dx * dx * d_power
                        g_conics[w_id, g, 1] -= dx * dy * d_power
                        g_conics[w_id, g, 2] -= half * dy * dy * d_power


def _np(t: torch.Tensor, dtype=np.float64) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))


class RasterizeCPU(torch.autograd.Function):
    """(means2d, conics, colors, opacities, depths, radii) -> premultiplied rgb, alpha, depth."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, width: int, height: int):
        # float32 tensors run float32 kernels (the fast path); float64 ones run float64 (parity tests)
        dtype = np.float32 if means2d.dtype == torch.float32 else np.float64
        m, cn, cl, op, dp = (_np(x, dtype) for x in (means2d, conics, colors, opacities, depths))
        offsets, lists = _bin_tiles(m, _np(radii, np.int64), dp, width, height, TILE)
        packed = _pack(lists, m, cn, cl, op, dp)
        rgb = np.zeros((height, width, 3), dtype)
        final_T = np.ones((height, width), dtype)
        depth = np.zeros((height, width), dtype)
        last = np.zeros((height, width), dtype=np.int64)
        with numba.parallel_chunksize(1):  # tiles differ a lot in cost: hand them out one at a time
            _forward(packed, offsets, width, height, TILE, _constants(dtype), rgb, final_T, depth, last)
        ctx.arrays = (packed, offsets, lists, final_T, last)
        ctx.n = m.shape[0]
        ctx.size = (width, height)
        ctx.dtype = means2d.dtype
        to = lambda a: torch.from_numpy(a).to(means2d.dtype)  # noqa: E731
        depth_t = to(depth)
        ctx.mark_non_differentiable(depth_t)  # depth is for display and init, not for losses
        return to(rgb), to(1.0 - final_T), depth_t

    @staticmethod
    def backward(ctx, grad_rgb, grad_alpha, grad_depth):
        packed, offsets, lists, final_T, last = ctx.arrays
        width, height = ctx.size
        n = ctx.n
        workers = numba.get_num_threads()
        dtype = packed.dtype
        g_m = np.zeros((workers, n, 2), dtype)
        g_cn = np.zeros((workers, n, 3), dtype)
        g_cl = np.zeros((workers, n, 3), dtype)
        g_op = np.zeros((workers, n), dtype)
        grad_rgb = _np(grad_rgb, dtype) if grad_rgb is not None else np.zeros((height, width, 3), dtype)
        grad_alpha = _np(grad_alpha, dtype) if grad_alpha is not None else np.zeros((height, width), dtype)
        _backward(packed, offsets, lists, width, height, TILE, _constants(dtype), final_T, last,
                  grad_rgb, grad_alpha, workers, g_m, g_cn, g_cl, g_op)
        to = lambda a: torch.from_numpy(a.sum(0)).to(ctx.dtype)  # noqa: E731
        return to(g_m), to(g_cn), to(g_cl), to(g_op), None, None, None, None


def rasterize_cpu(means2d, conics, colors, opacities, depths, radii, width, height):
    return RasterizeCPU.apply(means2d, conics, colors, opacities, depths, radii, int(width), int(height))


# ---------------------------------------------------------------------------
# Forward-mode (Jacobian) rendering for Gauss-Newton pose alignment.
# The pose is perturbed as T(xi) = [exp(w^) R | t + t_z * tau], xi = (w, tau),
# linearised at xi = 0 (see refine.apply_delta, the same parametrisation).
# ---------------------------------------------------------------------------


@njit(cache=True)
def _mm(A, B, out):
    """out = A @ B for small dense matrices, without allocating (pass B.T for A @ B^T)."""
    for i in range(A.shape[0]):
        for j in range(B.shape[1]):
            acc = 0.0
            for k in range(A.shape[1]):
                acc += A[i, k] * B[k, j]
            out[i, j] = acc


@njit(parallel=True, cache=True)
def project_with_jacobians(means, cov_obj, opacities, R, t, fx, fy, cx, cy, width, height, eps2d, near, workers):
    """Projection (as render.project_gaussians: means2d, conics, depths, radii) plus per-Gaussian
    d(means2d)/dxi (N,2,6) and d(conic)/dxi (N,3,6): the Gauss-Newton path, with no torch.

    cx, cy are in the rasterizer's pixel-centre convention. Derivations:
    p = R m + t; dp/dw_k = e_k x (R m), dp/dtau = t_z I; cov_cam V = R S R^T,
    dV/dw_k = E_k V - V E_k; cov2d M = J V J^T + eps I with J the EWA Jacobian at the
    (fov-clamped) point; conic = M^-1, dconic = -M^-1 dM M^-1.
    """
    n = means.shape[0]
    d_mean = np.zeros((n, 2, 6))
    d_conic = np.zeros((n, 3, 6))
    means2d = np.zeros((n, 2))
    conics = np.zeros((n, 3))
    depths = np.zeros(n)
    radii = np.zeros(n, dtype=np.int64)
    tan_fx, tan_fy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_neg, lim_x_pos = cx / fx + 0.3 * tan_fx, (width - cx) / fx + 0.3 * tan_fx
    lim_y_neg, lim_y_pos = cy / fy + 0.3 * tan_fy, (height - cy) / fy + 0.3 * tan_fy
    tz0 = t[2]
    E = np.zeros((3, 3, 3))  # generators: E[k] @ v = e_k x v
    E[0, 1, 2], E[0, 2, 1] = -1.0, 1.0
    E[1, 0, 2], E[1, 2, 0] = 1.0, -1.0
    E[2, 0, 1], E[2, 1, 0] = -1.0, 1.0
    for w_id in prange(workers):
        # scratch buffers, allocated once per worker
        dp = np.zeros((3, 6))
        tmp = np.zeros((3, 3))
        V = np.zeros((3, 3))
        J = np.zeros((2, 3))
        dJ = np.zeros((2, 3))
        JV = np.zeros((2, 3))
        dJV = np.zeros((2, 3))
        JE = np.zeros((2, 3))
        M = np.zeros((2, 2))
        A = np.zeros((2, 2))
        B = np.zeros((2, 2))
        X = np.zeros((2, 2))
        for i in range(w_id, n, workers):
            q0 = R[0, 0] * means[i, 0] + R[0, 1] * means[i, 1] + R[0, 2] * means[i, 2]
            q1 = R[1, 0] * means[i, 0] + R[1, 1] * means[i, 1] + R[1, 2] * means[i, 2]
            q2 = R[2, 0] * means[i, 0] + R[2, 1] * means[i, 1] + R[2, 2] * means[i, 2]
            x, y, z = q0 + t[0], q1 + t[1], q2 + t[2]
            depths[i] = z
            if z <= near or opacities[i] < ALPHA_MIN:
                continue
            dp[:] = 0.0
            dp[1, 0], dp[2, 0] = -q2, q1
            dp[0, 1], dp[2, 1] = q2, -q0
            dp[0, 2], dp[1, 2] = -q1, q0
            dp[0, 3], dp[1, 4], dp[2, 5] = tz0, tz0, tz0
            for k in range(6):  # means2d uses the unclamped point
                d_mean[i, 0, k] = fx * (dp[0, k] / z - x * dp[2, k] / (z * z))
                d_mean[i, 1, k] = fy * (dp[1, k] / z - y * dp[2, k] / (z * z))
            rx, ry = x / z, y / z
            cl_x = rx < -lim_x_neg or rx > lim_x_pos
            cl_y = ry < -lim_y_neg or ry > lim_y_pos
            xc = z * min(max(rx, -lim_x_neg), lim_x_pos)
            yc = z * min(max(ry, -lim_y_neg), lim_y_pos)
            J[:] = 0.0
            J[0, 0], J[0, 2] = fx / z, -fx * xc / (z * z)
            J[1, 1], J[1, 2] = fy / z, -fy * yc / (z * z)
            _mm(R, cov_obj[i], tmp)
            _mm(tmp, R.T, V)
            _mm(J, V, JV)
            _mm(JV, J.T, M)
            m00, m11 = M[0, 0] + eps2d, M[1, 1] + eps2d
            m01 = 0.5 * (M[0, 1] + M[1, 0])
            det = m00 * m11 - m01 * m01
            if det <= 1e-10:
                continue
            i00, i01, i11 = m11 / det, -m01 / det, m00 / det
            u, v = fx * x / z + cx, fy * y / z + cy
            lam_max = 0.5 * (m00 + m11) + np.sqrt(max(0.25 * (m00 - m11) ** 2 + m01 * m01, 0.0))
            r = np.ceil(np.sqrt(max(2.0 * np.log(opacities[i] / ALPHA_MIN), 0.0)) * np.sqrt(lam_max))
            if u + r <= 0 or u - r >= width or v + r <= 0 or v - r >= height:
                continue
            means2d[i, 0], means2d[i, 1] = u, v
            conics[i, 0], conics[i, 1], conics[i, 2] = i00, i01, i11
            radii[i] = int(r)
            for k in range(6):
                dz = dp[2, k]
                dxc = (xc / z) * dz if cl_x else dp[0, k]
                dyc = (yc / z) * dz if cl_y else dp[1, k]
                dJ[:] = 0.0
                dJ[0, 0] = -fx * dz / (z * z)
                dJ[0, 2] = -fx * (dxc / (z * z) - 2.0 * xc * dz / (z * z * z))
                dJ[1, 1] = -fy * dz / (z * z)
                dJ[1, 2] = -fy * (dyc / (z * z) - 2.0 * yc * dz / (z * z * z))
                _mm(dJ, V, dJV)
                _mm(dJV, J.T, A)  # dJ V J^T
                _mm(JV, dJ.T, B)  # J V dJ^T
                d00 = A[0, 0] + B[0, 0]
                d11 = A[1, 1] + B[1, 1]
                d01 = 0.5 * (A[0, 1] + B[0, 1] + A[1, 0] + B[1, 0])
                if k < 3:  # J dV J^T = X + X^T with X = J E_k V J^T
                    _mm(J, E[k], JE)
                    _mm(JE, V, dJV)
                    _mm(dJV, J.T, X)
                    d00 += 2.0 * X[0, 0]
                    d11 += 2.0 * X[1, 1]
                    d01 += X[0, 1] + X[1, 0]
                # dconic = -Minv dM Minv, Minv = [[i00, i01], [i01, i11]]
                t00 = i00 * d00 + i01 * d01
                t01 = i00 * d01 + i01 * d11
                t10 = i01 * d00 + i11 * d01
                t11 = i01 * d01 + i11 * d11
                d_conic[i, 0, k] = -(t00 * i00 + t01 * i01)
                d_conic[i, 1, k] = -(t00 * i01 + t01 * i11)
                d_conic[i, 2, k] = -(t10 * i01 + t11 * i11)
    return means2d, conics, depths, radii, d_mean, d_conic


@njit(parallel=True, cache=True)
def _forward_jacobian(packed, lists, offsets, d_mean, d_conic, width, height, tile, out_rgb, out_T, out_drgb, out_dalpha):
    """Forward compositing (same rules as _forward) carrying 6 tangents per pixel:
    out_drgb (H,W,3,6) = d colour / d xi, out_dalpha (H,W,6) = d alpha / d xi.
    With w_i = alpha_i T_i and T_i = prod_{j<i}(1 - alpha_j):
    dT_i = -T_i * S_i, S_i = sum_{j<i} dalpha_j / (1 - alpha_j); dalpha_i = alpha_i * dpower_i (unclamped).
    """
    ntx = (width + tile - 1) // tile
    nty = (height + tile - 1) // tile
    for t in prange(ntx * nty):
        ty, tx = t // ntx, t % ntx
        start, end = offsets[t], offsets[t + 1]
        # per-pixel accumulators in local arrays, written out once per pixel: the inner loop
        # then touches no (H, W, 3, 6) output memory
        S = np.zeros(6)
        acc_r, acc_g, acc_b = np.zeros(6), np.zeros(6), np.zeros(6)
        for py in range(ty * tile, min(height, (ty + 1) * tile)):
            for px in range(tx * tile, min(width, (tx + 1) * tile)):
                fx, fy = px + 0.5, py + 0.5
                T = 1.0
                S[:] = 0.0
                acc_r[:] = 0.0
                acc_g[:] = 0.0
                acc_b[:] = 0.0
                r = 0.0
                gr = 0.0
                b = 0.0
                for k in range(start, end):
                    dx = fx - packed[k, MX]
                    dy = fy - packed[k, MY]
                    a, bb, c = packed[k, CA], packed[k, CB], packed[k, CC]
                    power = -0.5 * (a * dx * dx + c * dy * dy) - bb * dx * dy
                    if power > 0.0 or power < packed[k, THR]:
                        continue
                    raw = packed[k, OP] * np.exp(power)
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    next_T = T * (1.0 - alpha)
                    if next_T < T_MIN:
                        break
                    g = lists[k]
                    cr, cg, cb = packed[k, CR], packed[k, CG], packed[k, CBL]
                    w = alpha * T
                    inv_one_minus = 1.0 / (1.0 - alpha)
                    if raw > ALPHA_MAX:  # clamped: alpha does not move with the pose
                        for j in range(6):
                            dw = -T * alpha * S[j]
                            acc_r[j] += cr * dw
                            acc_g[j] += cg * dw
                            acc_b[j] += cb * dw
                    else:
                        pmx = a * dx + bb * dy  # d power / d mean_x
                        pmy = bb * dx + c * dy
                        hxx, hxy, hyy = 0.5 * dx * dx, dx * dy, 0.5 * dy * dy
                        for j in range(6):
                            dalpha = alpha * (pmx * d_mean[g, 0, j] + pmy * d_mean[g, 1, j] - hxx * d_conic[g, 0, j]
                                              - hxy * d_conic[g, 1, j] - hyy * d_conic[g, 2, j])
                            dw = T * (dalpha - alpha * S[j])
                            acc_r[j] += cr * dw
                            acc_g[j] += cg * dw
                            acc_b[j] += cb * dw
                            S[j] += dalpha * inv_one_minus
                    r += cr * w
                    gr += cg * w
                    b += cb * w
                    T = next_T
                out_rgb[py, px, 0] = r
                out_rgb[py, px, 1] = gr
                out_rgb[py, px, 2] = b
                out_T[py, px] = T
                for j in range(6):
                    out_drgb[py, px, 0, j] = acc_r[j]
                    out_drgb[py, px, 1, j] = acc_g[j]
                    out_drgb[py, px, 2, j] = acc_b[j]
                    out_dalpha[py, px, j] = T * S[j]


def render_with_jacobian(means, cov_obj, colors, opacities, R, t, K, width, height, eps2d, near):
    """Render at pose (R, t) with pose Jacobians; K in the rasterizer's pixel-centre convention.
    Returns (rgb (H,W,3), alpha (H,W), d rgb/d xi (H,W,3,6), d alpha/d xi (H,W,6)), numpy float64."""
    m, cn, dp, radii, d_mean, d_conic = project_with_jacobians(means, cov_obj, opacities, R, t, K[0, 0], K[1, 1],
                                                               K[0, 2], K[1, 2], width, height, eps2d, near,
                                                               numba.get_num_threads())
    offsets, lists = _bin_tiles(m, radii, dp, width, height, TILE)
    packed = _pack(lists, m, cn, colors, opacities, dp)
    rgb = np.zeros((height, width, 3))
    final_T = np.ones((height, width))
    drgb = np.zeros((height, width, 3, 6))
    dalpha = np.zeros((height, width, 6))
    with numba.parallel_chunksize(1):
        _forward_jacobian(packed, lists, offsets, d_mean, d_conic, width, height, TILE, rgb, final_T, drgb, dalpha)
    return rgb, 1.0 - final_T, drgb, dalpha
