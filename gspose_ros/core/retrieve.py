"""Initial pose by rotation-aware template retrieval (GS-Pose stage 3), weight-free backend.

Templates are renders of the 3DGO from viewpoints spread over the sphere with
the object on the optical axis (so egocentric = allocentric rotation), each
also rotated in the image plane. A descriptor per template (silhouette +
normalised colour of the object-centred crop, L2-normalised) is matched to the
query's by cosine similarity. As in the paper, the translation comes from the
mask: the scale ratio delta_s = sqrt(query mask area / template mask area)
sets the depth, the box centre (plus the template's origin offset) the ray.
The top-k hypotheses are checked by rendering their silhouettes; the best IoU wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .errors import InputError
from .gaussians import GaussianObject
from .geometry import allocentric_to_egocentric, crop_window_from_box, make_pose, mask_box, project
from .render import look_at_pose, render
from .views import crop_image

DESC_SIZE = 24
TEMPLATE_SIZE = 96
PAD = 1.2


@dataclass
class TemplateBank:
    descriptors: np.ndarray  # (M, D) unit vectors
    rotations: np.ndarray  # (M, 3, 3) allocentric rotations
    areas: np.ndarray  # (M,) mask area in template pixels
    origin_offsets: np.ndarray  # (M, 2) object origin minus mask-box centre, in units of box side
    box_sides: np.ndarray  # (M,) mask box side (template pixels)
    distance: float  # template camera distance (m)
    focal: float  # template focal length (px)


@dataclass
class PoseHypothesis:
    T: np.ndarray
    similarity: float  # descriptor cosine similarity
    iou: float  # silhouette IoU of its render with the query mask
    score: float  # iou + 0.5 * grey-level NCC: the ranking


def _orientation_histograms(gray: np.ndarray, weight: np.ndarray, cells: int = 4, bins: int = 8) -> np.ndarray:
    """HOG-like: gradient-magnitude-weighted orientation histograms over cells x cells cells."""
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy) * weight
    ang = (np.arctan2(gy, gx) + np.pi) / (2 * np.pi) * bins
    b = np.minimum(ang.astype(np.int64), bins - 1)
    size = gray.shape[0] // cells
    hist = np.zeros((cells, cells, bins), dtype=np.float32)
    for i in range(cells):
        for j in range(cells):
            sl = (slice(i * size, (i + 1) * size), slice(j * size, (j + 1) * size))
            hist[i, j] = np.bincount(b[sl].reshape(-1), weights=mag[sl].reshape(-1), minlength=bins)
    return hist.reshape(-1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def describe(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(descriptor, box) of an object given its RGB image (uint8 or float) and boolean mask.

    Three unit-normalised parts: the silhouette, brightness/contrast-normalised colour, and
    gradient orientations inside the object (texture and inner edges, robust to lighting)."""
    box = mask_box(mask)
    if box is None:
        return None
    window = crop_window_from_box(box, DESC_SIZE, PAD)
    m = crop_image(mask.astype(np.float32), window, cv2.INTER_AREA)
    c = crop_image(rgb.astype(np.float32), window, cv2.INTER_AREA) * m[..., None]
    inside = m > 0.5
    if inside.sum() > 3:
        mean, std = c[inside].mean(0), c[inside].std(0) + 1e-3
        c = np.where(inside[..., None], (c - mean) / std, 0.0)
    g_window = crop_window_from_box(box, 32, PAD)
    gray = cv2.cvtColor(crop_image(rgb.astype(np.float32), g_window, cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    g_mask = crop_image(mask.astype(np.float32), g_window, cv2.INTER_AREA)
    eroded = cv2.erode(g_mask, np.ones((3, 3), np.uint8))  # inner gradients, not the outline
    d = np.concatenate([1.0 * _unit(m - m.mean()).reshape(-1), 0.6 * _unit(c.reshape(-1)),
                        1.0 * _unit(_orientation_histograms(gray, eroded))])
    return _unit(d), box


def build_template_bank(obj: GaussianObject, n_viewpoints: int = 200, n_inplane: int = 12) -> TemplateBank:
    """Render n_viewpoints views; in-plane rotations are image rotations about the crop centre."""
    distance = 4.0 * obj.diameter
    focal = TEMPLATE_SIZE * distance / (1.3 * obj.diameter)  # object spans ~75 % of the template
    K = np.array([[focal, 0, (TEMPLATE_SIZE - 1) / 2], [0, focal, (TEMPLATE_SIZE - 1) / 2], [0, 0, 1.0]])
    descs, rots, areas, offsets, sides = [], [], [], [], []
    centre = ((TEMPLATE_SIZE - 1) / 2, (TEMPLATE_SIZE - 1) / 2)
    for i in range(n_viewpoints):
        el = np.degrees(np.arcsin(1 - 2 * (i + 0.5) / n_viewpoints))
        az = np.degrees(i * np.pi * (3 - np.sqrt(5))) % 360
        T = look_at_pose(distance, az, el)
        with torch.no_grad():
            out = render(obj, torch.from_numpy(T).float(), torch.from_numpy(K).float(), TEMPLATE_SIZE, TEMPLATE_SIZE)
        rgb, alpha = out.rgb.clamp(0, 1).numpy() * 255, out.alpha.numpy()
        for j in range(n_inplane):
            angle = 360.0 * j / n_inplane
            A = cv2.getRotationMatrix2D(centre, angle, 1.0)  # counter-clockwise in the image
            r_rgb = cv2.warpAffine(rgb.astype(np.float32), A, (TEMPLATE_SIZE, TEMPLATE_SIZE))
            r_mask = cv2.warpAffine(alpha.astype(np.float32), A, (TEMPLATE_SIZE, TEMPLATE_SIZE)) > 0.5
            described = describe(r_rgb, r_mask)
            if described is None:
                continue
            d, box = described
            # a counter-clockwise image rotation is a rotation about the optical axis by -angle
            c, s = np.cos(np.radians(-angle)), np.sin(np.radians(-angle))
            Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
            side = max(box[2] - box[0], box[3] - box[1])
            box_centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            origin = project(np.zeros((1, 3)), make_pose(Rz @ T[:3, :3], Rz @ T[:3, 3]), K)[0]
            descs.append(d)
            rots.append(Rz @ T[:3, :3])
            areas.append(float(r_mask.sum()))
            offsets.append((origin - box_centre) / side)
            sides.append(side)
    return TemplateBank(np.stack(descs), np.stack(rots), np.array(areas), np.stack(offsets), np.array(sides),
                        distance, focal)


def _pose_from_template(bank: TemplateBank, idx: int, mask: np.ndarray, box: np.ndarray, K: np.ndarray) -> np.ndarray:
    delta_s = np.sqrt(mask.sum() / bank.areas[idx])  # query / template scale
    f = 0.5 * (K[0, 0] + K[1, 1])
    z = bank.distance * (f / bank.focal) / delta_s
    side = max(box[2] - box[0], box[3] - box[1])
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) + bank.origin_offsets[idx] * side
    t = z * np.linalg.solve(K, np.array([centre[0], centre[1], 1.0]))
    return allocentric_to_egocentric(make_pose(bank.rotations[idx], t))


def _ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if where.sum() < 4:
        return 0.0
    x, y = a[where] - a[where].mean(), b[where] - b[where].mean()
    return float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-9))


def retrieve_pose(obj: GaussianObject, bank: TemplateBank, image: np.ndarray, mask: np.ndarray, K: np.ndarray,
                  top_k: int = 16) -> list[PoseHypothesis]:
    """Pose hypotheses for the masked object in `image`, best first by a quick render-and-compare
    (silhouette IoU + normalised cross-correlation of grey levels inside the query mask)."""
    mask = np.asarray(mask) > 0
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask size {mask.shape} does not match image size {image.shape[:2]}")
    described = describe(image, mask)
    if described is None or mask.sum() < 16:
        raise InputError("query mask is empty: nothing to retrieve a pose for")
    d, box = described
    sims = bank.descriptors @ d
    window = crop_window_from_box(box, 64, 1.4)
    Kc = torch.from_numpy(window.crop_intrinsics(K)).float()
    m = crop_image(mask.astype(np.float32), window) > 0.5
    query_gray = cv2.cvtColor(crop_image(image, window), cv2.COLOR_RGB2GRAY).astype(np.float32)
    hypotheses = []
    for idx in np.argsort(-sims)[:top_k]:
        T = _pose_from_template(bank, int(idx), mask, box, K)
        with torch.no_grad():
            out = render(obj, torch.from_numpy(T).float(), Kc, 64, 64)
        alpha = out.alpha.numpy() > 0.5
        union = (alpha | m).sum()
        iou = float((alpha & m).sum() / union) if union else 0.0
        gray = cv2.cvtColor(out.rgb.clamp(0, 1).numpy().astype(np.float32), cv2.COLOR_RGB2GRAY)
        score = iou + 0.5 * _ncc(gray, query_gray, alpha & m)
        hypotheses.append(PoseHypothesis(T, float(sims[idx]), iou, score))
    return sorted(hypotheses, key=lambda h: -h.score)
