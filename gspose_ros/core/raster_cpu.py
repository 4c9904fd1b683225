"""Fast CPU rasterizer for projected 2D Gaussians: numba kernels + a torch autograd Function.

Same algorithm as gsplat/3DGS: Gaussians binned into 16x16 tiles in depth order,
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

TILE = 16
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
    packed = np.empty((lists.shape[0], 11))
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
        packed[k, THR] = np.log(ALPHA_MIN / opacities[g]) - 1e-9
        packed[k, CR] = colors[g, 0]
        packed[k, CG] = colors[g, 1]
        packed[k, CBL] = colors[g, 2]
        packed[k, DEPTH] = depths[g]
    return packed


@njit(parallel=True, cache=True)
def _forward(packed, offsets, width, height, tile, out_rgb, out_T, out_depth, out_last):
    ntx = (width + tile - 1) // tile
    nty = (height + tile - 1) // tile
    for t in prange(ntx * nty):
        ty, tx = t // ntx, t % ntx
        start, end = offsets[t], offsets[t + 1]
        for py in range(ty * tile, min(height, (ty + 1) * tile)):
            for px in range(tx * tile, min(width, (tx + 1) * tile)):
                fx, fy = px + 0.5, py + 0.5
                T = 1.0
                r = 0.0
                gr = 0.0
                b = 0.0
                d = 0.0
                last = start
                for k in range(start, end):
                    dx = fx - packed[k, MX]
                    dy = fy - packed[k, MY]
                    power = -0.5 * (packed[k, CA] * dx * dx + packed[k, CC] * dy * dy) - packed[k, CB] * dx * dy
                    if power > 0.0 or power < packed[k, THR]:
                        continue
                    alpha = min(ALPHA_MAX, packed[k, OP] * np.exp(power))
                    if alpha < ALPHA_MIN:
                        continue
                    next_T = T * (1.0 - alpha)
                    if next_T < T_MIN:
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
def _backward(packed, offsets, lists, width, height, tile,
              final_T, last_idx, grad_rgb, grad_alpha, nworkers,
              g_means2d, g_conics, g_colors, g_opacities):
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
                    fx, fy = px + 0.5, py + 0.5
                    Tf = final_T[py, px]
                    T = Tf
                    dr, dg, db = grad_rgb[py, px, 0], grad_rgb[py, px, 1], grad_rgb[py, px, 2]
                    dA = grad_alpha[py, px]
                    acc_r = 0.0
                    acc_g = 0.0
                    acc_b = 0.0
                    prev_alpha = 0.0
                    prev_r = 0.0
                    prev_g = 0.0
                    prev_b = 0.0
                    for k in range(last - 1, start - 1, -1):
                        dx = fx - packed[k, MX]
                        dy = fy - packed[k, MY]
                        a, bb, c = packed[k, CA], packed[k, CB], packed[k, CC]
                        power = -0.5 * (a * dx * dx + c * dy * dy) - bb * dx * dy
                        if power > 0.0 or power < packed[k, THR]:
                            continue
                        g = lists[k]
                        G = np.exp(power)
                        raw = packed[k, OP] * G
                        alpha = min(ALPHA_MAX, raw)
                        if alpha < ALPHA_MIN:
                            continue
                        T = T / (1.0 - alpha)
                        wgt = alpha * T
                        g_colors[w_id, g, 0] += wgt * dr
                        g_colors[w_id, g, 1] += wgt * dg
                        g_colors[w_id, g, 2] += wgt * db
                        # colour of everything behind this Gaussian, normalised by what reaches it
                        acc_r = prev_alpha * prev_r + (1.0 - prev_alpha) * acc_r
                        acc_g = prev_alpha * prev_g + (1.0 - prev_alpha) * acc_g
                        acc_b = prev_alpha * prev_b + (1.0 - prev_alpha) * acc_b
                        cr, cg, cb = packed[k, CR], packed[k, CG], packed[k, CBL]
                        d_alpha = T * ((cr - acc_r) * dr + (cg - acc_g) * dg + (cb - acc_b) * db)
                        d_alpha += dA * Tf / (1.0 - alpha)
                        prev_alpha, prev_r, prev_g, prev_b = alpha, cr, cg, cb
                        if raw > ALPHA_MAX:
                            continue  # clamped: no gradient into opacity or shape
                        g_opacities[w_id, g] += G * d_alpha
                        d_power = raw * d_alpha
                        g_means2d[w_id, g, 0] += d_power * (a * dx + bb * dy)
                        g_means2d[w_id, g, 1] += d_power * (bb * dx + c * dy)
                        g_conics[w_id, g, 0] += -0.5 * dx * dx * d_power
                        g_conics[w_id, g, 1] += -dx * dy * d_power
                        g_conics[w_id, g, 2] += -0.5 * dy * dy * d_power


def _np(t: torch.Tensor, dtype=np.float64) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))


class RasterizeCPU(torch.autograd.Function):
    """(means2d, conics, colors, opacities, depths, radii) -> premultiplied rgb, alpha, depth."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, radii, width: int, height: int):
        m, cn, cl, op, dp = (_np(x) for x in (means2d, conics, colors, opacities, depths))
        offsets, lists = _bin_tiles(m, _np(radii, np.int64), dp, width, height, TILE)
        packed = _pack(lists, m, cn, cl, op, dp)
        rgb = np.zeros((height, width, 3))
        final_T = np.ones((height, width))
        depth = np.zeros((height, width))
        last = np.zeros((height, width), dtype=np.int64)
        _forward(packed, offsets, width, height, TILE, rgb, final_T, depth, last)
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
        g_m = np.zeros((workers, n, 2))
        g_cn = np.zeros((workers, n, 3))
        g_cl = np.zeros((workers, n, 3))
        g_op = np.zeros((workers, n))
        grad_rgb = _np(grad_rgb) if grad_rgb is not None else np.zeros((height, width, 3))
        grad_alpha = _np(grad_alpha) if grad_alpha is not None else np.zeros((height, width))
        _backward(packed, offsets, lists, width, height, TILE, final_T, last,
                  grad_rgb, grad_alpha, workers, g_m, g_cn, g_cl, g_op)
        to = lambda a: torch.from_numpy(a.sum(0)).to(ctx.dtype)  # noqa: E731
        return to(g_m), to(g_cn), to(g_cl), to(g_op), None, None, None, None


def rasterize_cpu(means2d, conics, colors, opacities, depths, radii, width, height):
    return RasterizeCPU.apply(means2d, conics, colors, opacities, depths, radii, int(width), int(height))
