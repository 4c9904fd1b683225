"""Initial pose by rotation-aware template retrieval (GS-Pose stage 3), weight-free backend.

Templates are renders of the 3DGO from viewpoints spread over the sphere with
the object on the optical axis (so egocentric = allocentric rotation), each
also rotated in the image plane. Retrieval matches silhouettes first: the query's
lighting is unknown and differs from the references', and measured on
pyrender queries, colour and shading descriptors alone ranked the right template
far down (hundreds) while the silhouette kept it in the first few dozen. A
textured object's silhouette is ambiguous, though (a box looks alike from many
sides), and an imperfect detected mask pushes the right template out of those
dozens; chromaticity (colour with intensity divided out) added to the silhouette
brings it back. The candidates are therefore taken alternately from the two
rankings, silhouette and silhouette + chromaticity: for a textured box the share
of queries whose chosen rotation is within 20 deg rose from 3/10 to 6/10 (detected
masks), and a uniformly coloured object (whose chromaticity is noise) keeps its
silhouette candidates.
As in the paper, the translation comes from the mask: the scale ratio
delta_s = sqrt(query mask area / template mask area) sets the depth, the box
centre (plus the template's origin offset) the ray. The top-k hypotheses are
then re-ranked by a quick render-and-compare that is robust to lighting
(hypothesis_score): silhouette similarity and IoU, agreement of chromaticity
(colour with the intensity divided out) and of edge strength inside the object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property

import cv2
import numpy as np
import torch

from .detect import touches_border
from .errors import InputError
from .gaussians import GaussianObject
from .geometry import allocentric_to_egocentric, crop_window_from_box, make_pose, mask_box, project, rotation_error_deg
from .render import look_at_pose, render
from .views import crop_image

DESC_SIZE = 24  # silhouette descriptor side (pixels)
TEMPLATE_SIZE = 96
PAD = 1.2
CHECK_SIZE = 64  # render-and-compare crop side
# crop side at which refined poses of one detection are compared with each other: refined poses
# are aligned to a pixel, so the finer outline and inner edges of a flip show. Measured on the 43
# frames (/tmp/ds2, 64 co-segmented refs) whose three best distinct hypotheses refined to both
# right and wrong poses: PoseCheck.score picks a right one in 38 at 64 px, 42 at 128 and 192 px
CHOOSE_SIZE = 128
# crop side at which a retrieved hypothesis's translation is aligned to the query mask
# (QueryCrop.align): small renders of a 3DGO come out fatter than the object (at 64 px, aligning to
# them cut the right initial poses with true masks from 42 to 4 of 60), fine ones do not. Measured on
# /tmp/ds2 (64 co-segmented refs, 20 frames per object, the detected masks; RESULTS.md): initial poses
# within ADD(-S)@0.1d 27 -> 33 at 128 px, 36 at 192 px, 33 at 256 px (2 iterations; 3 gave the same)
ALIGN_SIZE = 192
ALIGN_ITERATIONS = 2


@dataclass
class TemplateBank:
    descriptors: np.ndarray  # (M, D) unit vectors
    rotations: np.ndarray  # (M, 3, 3) allocentric rotations
    areas: np.ndarray  # (M,) mask area in template pixels
    origin_offsets: np.ndarray  # (M, 2) object origin minus mask-box centre, in units of box side
    distance: float  # template camera distance (m)
    focal: float  # template focal length (px)
    colour: np.ndarray | None = None  # (M, D') unit chromaticity descriptors (weight-free bank)


@dataclass
class PoseHypothesis:
    T: np.ndarray
    similarity: float  # the backend's descriptor cosine similarity (weight-free: silhouette)
    iou: float  # silhouette IoU of its render with the query mask
    score: float  # hypothesis_score: the ranking
    check: PoseCheck | None = None  # the render-and-compare evidence at T (unrefined)


def describe(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(descriptor, box) of a boolean/float object mask: its silhouette in a square box crop,
    mean-removed and unit-normalised; None for an empty mask."""
    box = mask_box(mask > 0.5)
    if box is None:
        return None
    window = crop_window_from_box(box, DESC_SIZE, PAD)
    m = crop_image(mask.astype(np.float32), window, cv2.INTER_AREA).reshape(-1)
    d = m - m.mean()
    return d / (np.linalg.norm(d) + 1e-9), box


def describe_colour(rgb: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Chromaticity (r, g) pattern inside the mask, in the same box crop as `describe`:
    mean-removed inside the mask, zero outside, unit-normalised. rgb: uint8, or float in [0, 1]."""
    window = crop_window_from_box(box, DESC_SIZE, PAD)
    crop = crop_image(rgb, window, cv2.INTER_AREA).astype(np.float32) / (255.0 if rgb.dtype == np.uint8 else 1.0)
    chroma = chromaticity(crop)[..., :2]
    inside = crop_image(mask.astype(np.float32), window, cv2.INTER_AREA) > 0.5
    d = np.zeros_like(chroma)
    if inside.any():
        d[inside] = chroma[inside] - chroma[inside].mean(0)
    d = d.reshape(-1)
    return d / (np.linalg.norm(d) + 1e-9)


def candidate_templates(bank: TemplateBank, sims: np.ndarray, colour: np.ndarray | None, k: int) -> list[int]:
    """k distinct template indices, taken alternately from the ranking by `sims` (the query's
    descriptor similarities) and by sims + chromaticity similarity (sims alone without colour)."""
    by_shape = np.argsort(-sims)
    if colour is None or bank.colour is None:
        return [int(i) for i in by_shape[:k]]
    by_both = np.argsort(-(sims + bank.colour @ colour))
    picked: dict[int, None] = {}
    for a, b in zip(by_shape, by_both):
        for idx in (int(a), int(b)):
            if len(picked) < k:
                picked.setdefault(idx)
        if len(picked) >= k:
            break
    return list(picked)


@dataclass
class TemplateView:
    """One retrieval template: a render of the 3DGO with the object on the optical axis
    (so its egocentric rotation is allocentric), possibly rotated in the image plane."""

    rgb: np.ndarray | None  # (S, S, 3) float32 in [0, 1], black background (None once described)
    alpha: np.ndarray | None  # (S, S) float32
    rotation: np.ndarray  # (3, 3) allocentric rotation
    origin_offset: np.ndarray  # (2,) object origin minus mask-box centre, in units of box side
    area: float  # mask area (pixels)

    def described(self) -> TemplateView:
        """The geometry alone: a bank keeps thousands of templates, not their images."""
        return replace(self, rgb=None, alpha=None)


@dataclass
class TemplateCamera:
    """The camera templates are rendered with: what converts a template match to a depth."""

    distance: float  # m, object origin on the optical axis
    focal: float  # px
    size: int  # image side, px

    @property
    def K(self) -> np.ndarray:
        c = (self.size - 1) / 2
        return np.array([[self.focal, 0, c], [0, self.focal, c], [0, 0, 1.0]])


def template_camera(obj: GaussianObject, size: int, span: float) -> TemplateCamera:
    """A camera at 4 diameters in which the object's diameter spans `span` of the image side."""
    distance = 4.0 * obj.diameter
    return TemplateCamera(distance, span * size * distance / obj.diameter, size)


def template_views(obj: GaussianObject, camera: TemplateCamera, n_viewpoints: int,
                   n_inplane: int) -> Iterator[TemplateView]:
    """Renders from n_viewpoints spread over the sphere (Fibonacci), each rotated in-plane
    n_inplane times, one at a time (consumers keep descriptors, not images)."""
    size, K = camera.size, camera.K
    centre = ((size - 1) / 2, (size - 1) / 2)
    for i in range(n_viewpoints):
        el = np.degrees(np.arcsin(1 - 2 * (i + 0.5) / n_viewpoints))
        az = np.degrees(i * np.pi * (3 - np.sqrt(5))) % 360
        T = look_at_pose(camera.distance, az, el)
        with torch.no_grad():
            out = render(obj, torch.from_numpy(T).float(), torch.from_numpy(K).float(), size, size,
                         background=torch.zeros(3))
        rgb, alpha = out.rgb.clamp(0, 1).numpy().astype(np.float32), out.alpha.numpy().astype(np.float32)
        for j in range(n_inplane):
            angle = 360.0 * j / n_inplane
            A = cv2.getRotationMatrix2D(centre, angle, 1.0)  # counter-clockwise in the image
            r_alpha = cv2.warpAffine(alpha, A, (size, size))
            box = mask_box(r_alpha > 0.5)
            if box is None:
                continue
            # a counter-clockwise image rotation is a rotation about the optical axis by -angle
            c, s = np.cos(np.radians(-angle)), np.sin(np.radians(-angle))
            Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
            side = max(box[2] - box[0], box[3] - box[1])
            box_centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            origin = project(np.zeros((1, 3)), make_pose(Rz @ T[:3, :3], Rz @ T[:3, 3]), K)[0]
            yield TemplateView(cv2.warpAffine(rgb, A, (size, size)), r_alpha, Rz @ T[:3, :3],
                               (origin - box_centre) / side, float((r_alpha > 0.5).sum()))


def no_templates() -> InputError:
    return InputError("the object renders empty from every viewpoint: cannot build retrieval templates")


def template_bank(views: list[TemplateView], descriptors: np.ndarray, camera: TemplateCamera,
                  colour: np.ndarray | None = None) -> TemplateBank:
    return TemplateBank(np.asarray(descriptors, np.float32), np.stack([v.rotation for v in views]),
                        np.array([v.area for v in views]), np.stack([v.origin_offset for v in views]),
                        camera.distance, camera.focal, None if colour is None else np.asarray(colour, np.float32))


def build_template_bank(obj: GaussianObject, n_viewpoints: int = 400, n_inplane: int = 24) -> TemplateBank:
    """Silhouette + chromaticity templates (weight-free backend)."""
    camera = template_camera(obj, TEMPLATE_SIZE, 1 / 1.3)  # the object spans ~75 % of a template
    shapes, colours, kept = [], [], []
    for v in template_views(obj, camera, n_viewpoints, n_inplane):
        described = describe(v.alpha)
        if described is not None:
            shapes.append(described[0])
            colours.append(describe_colour(v.rgb, v.alpha, described[1]))
            kept.append(v.described())
    if not kept:
        raise no_templates()
    return template_bank(kept, np.stack(shapes), camera, np.stack(colours))


def _pose_from_template(bank: TemplateBank, idx: int, mask_area: float, box: np.ndarray, K: np.ndarray) -> np.ndarray:
    delta_s = np.sqrt(mask_area / bank.areas[idx])  # query / template scale
    f = 0.5 * (K[0, 0] + K[1, 1])
    z = bank.distance * (f / bank.focal) / delta_s
    side = max(box[2] - box[0], box[3] - box[1])
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) + bank.origin_offsets[idx] * side
    t = z * np.linalg.solve(K, np.array([centre[0], centre[1], 1.0]))
    return allocentric_to_egocentric(make_pose(bank.rotations[idx], t))


def _gradients(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)


def edge_agreement(gray_a: np.ndarray, gray_b: np.ndarray, where: np.ndarray) -> tuple[float, float]:
    """(orientation, strength) agreement of two grey images' gradients over boolean `where`.
    orientation: mean squared cosine between the gradient directions, weighted by gradient
    strength, in [0, 1]: 1 when edges line up. Sign-free, so brightness, contrast and (mostly)
    shading changes leave it alone, while texture and inner edges must match; it only counts
    where both images have edges. strength: correlation of the gradient magnitudes over the
    interior of `where` (eroded: the silhouette's own outline is the IoU's business), in
    [-1, 1]: also low when one image has edges (an eye, a beak) where the other has none."""
    ax, ay = _gradients(gray_a)
    bx, by = _gradients(gray_b)
    na, nb = np.hypot(ax, ay), np.hypot(bx, by)
    cos2 = ((ax * bx + ay * by) / (na * nb + 1e-6)) ** 2
    weight = np.sqrt(na * nb) * where
    orientation = float((cos2 * weight).sum() / (weight.sum() + 1e-9))
    inner = cv2.erode(where.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    strength = 0.0
    if inner.sum() > 8:
        a, b = na[inner] - na[inner].mean(), nb[inner] - nb[inner].mean()
        strength = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-9))
    return orientation, strength


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    """r, g, b divided by their sum: unchanged when shading scales the intensity of white light."""
    return rgb / (rgb.sum(-1, keepdims=True) + 1e-3)


@dataclass
class PoseCheck:
    """How well a render at a pose explains the query: the render-and-compare verdict."""

    iou: float  # silhouette IoU with the query mask
    orientation: float  # gradient-orientation agreement inside both silhouettes, in [0, 1]
    chroma_error: float  # mean L1 chromaticity difference inside both silhouettes
    edge_strength: float = 0.0  # gradient-magnitude correlation inside both silhouettes, in [-1, 1]

    @property
    def score(self) -> float:
        """The verdict on a refined pose. Weights measured on pyrender queries: chromaticity
        separates texture flips (textured box: 25 % -> 92 % right choices), orientation breaks
        shape ties."""
        return self.iou + self.orientation - 3.0 * self.chroma_error

    @property
    def confidence(self) -> float:
        """score mapped to [0, 1] (2 = perfect silhouette and edges): what a pose is reported with."""
        return float(np.clip(self.score / 2.0, 0.0, 1.0))


class QueryCrop:
    """The query around its mask box at a fixed size: what hypotheses are checked against."""

    def __init__(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray, K: np.ndarray, size: int = CHECK_SIZE):
        self.window = crop_window_from_box(box, size, 1.4)
        self.size = size
        self.K = torch.from_numpy(self.window.crop_intrinsics(K)).float()
        self.mask = crop_image(mask.astype(np.float32), self.window) > 0.5
        self._image = image

    # the appearance of the crop, made on first use: align() needs only the mask
    @cached_property
    def rgb(self) -> np.ndarray:
        return crop_image(self._image, self.window).astype(np.float32) / 255.0

    @cached_property
    def gray(self) -> np.ndarray:
        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)

    @cached_property
    def chroma(self) -> np.ndarray:
        return chromaticity(self.rgb)

    def check(self, obj: GaussianObject, T: np.ndarray) -> PoseCheck:
        with torch.no_grad():
            out = render(obj, torch.from_numpy(T).float(), self.K, self.size, self.size)
        alpha = out.alpha.numpy() > 0.5
        rgb = out.rgb.clamp(0, 1).numpy().astype(np.float32)
        union = (alpha | self.mask).sum()
        both = alpha & self.mask
        iou = float(both.sum() / union) if union else 0.0
        if both.sum() < 4:
            return PoseCheck(iou, 0.0, 1.0, 0.0)
        orientation, strength = edge_agreement(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), self.gray, both)
        chroma_error = float(np.abs(chromaticity(rgb) - self.chroma).sum(-1)[both].mean())
        return PoseCheck(iou, orientation, chroma_error, strength)

    def align(self, obj: GaussianObject, T: np.ndarray, iterations: int = ALIGN_ITERATIONS) -> np.ndarray:
        """T with its translation moved so that its render covers the query mask's area around
        the mask's centroid (the rotation is kept). Retrieval reads the translation off the mask's
        box and area through a template ~10 deg from the query, whose box and area differ from the
        object's at its true rotation; the hypothesis's own render does not. Scale sets the
        depth (image size ~ 1/z), the centroid shift the ray; each iteration renders once. Not for
        a mask cut off by the image border: there a closer object further out shows the same area
        and centroid (measured: it settled 28 mm too close)."""
        ys, xs = np.nonzero(self.mask)
        if len(xs) < 16:
            return T
        target, area = np.array([xs.mean(), ys.mean()]), float(len(xs))
        K = self.K.numpy().astype(np.float64)
        T = np.array(T, dtype=np.float64)
        for _ in range(iterations):
            if T[2, 3] <= 0:  # behind the camera: nothing to align
                break
            with torch.no_grad():
                out = render(obj, torch.from_numpy(T).float(), self.K, self.size, self.size)
            ys, xs = np.nonzero(out.alpha.numpy() > 0.5)
            if len(xs) < 16:
                break
            # clipped: a hypothesis comes from this mask's own area, so a large step is a bad render
            scale = float(np.clip(np.sqrt(area / len(xs)), 0.8, 1.25))
            origin = K @ T[:3, 3]
            uv = origin[:2] / origin[2] + target - np.array([xs.mean(), ys.mean()])
            T[:3, 3] = (T[2, 3] / scale) * np.linalg.solve(K, np.array([uv[0], uv[1], 1.0]))
        return T


def hypothesis_score(similarity: float, check: PoseCheck) -> float:
    """The ranking of unrefined hypotheses (templates ~10 deg apart, so never quite aligned).
    Orientation agreement needs edges aligned to a pixel or two, which a template is not, and
    under a light other than the references' (baked into the 3DGO's colours) it preferred the
    duck's smooth back to its face; the descriptor similarity and IoU tolerate the misalignment,
    chromaticity separates texture flips, and the edge-strength correlation asks whether the
    distinctive edges are there at all. Measured on /tmp/ds2 (64 co-segmented refs, 20 frames
    per object, top of 32 hypotheses within 15 deg, box / bracket / duck): with the detected
    mask 8/15/6 -> 8/18/10, with the true mask 20/16/8 -> 20/18/17 (score was PoseCheck.score)."""
    return 2.0 * check.iou + 2.0 * similarity - 3.0 * check.chroma_error + 0.5 * check.edge_strength


def far_from(T: np.ndarray, others, min_angle_deg: float) -> bool:
    """Whether rotation T is at least min_angle_deg from every pose in `others` (true for none)."""
    return all(rotation_error_deg(T, other) >= min_angle_deg for other in others)


def distinct_hypotheses(hypotheses: list[PoseHypothesis], n: int, min_angle_deg: float = 30.0) -> list[PoseHypothesis]:
    """The first n hypotheses (in ranking order) whose rotations differ pairwise by at least
    min_angle_deg: neighbouring templates (~10 deg apart) refine to the same pose, so refining
    more than one is only worth it across distinct rotations."""
    picked: list[PoseHypothesis] = []
    for h in hypotheses:
        if len(picked) >= n:
            break
        if far_from(h.T, [p.T for p in picked], min_angle_deg):
            picked.append(h)
    return picked


# an alternative hypothesis (alternative_hypothesis) is at least this far from every refined one:
# the wrong poses left with good masks are flips, 156-180 deg from the truth, whose silhouettes
# match as well; neighbours of the refined hypothesis (~10-60 deg) refine to the same pose
ALTERNATIVE_MIN_ANGLE_DEG = 90.0


def alternative_hypothesis(hypotheses: list[PoseHypothesis], refined: list[np.ndarray],
                           min_angle_deg: float = ALTERNATIVE_MIN_ANGLE_DEG) -> PoseHypothesis | None:
    """The best-ranked hypothesis at least min_angle_deg from every pose in `refined` (those the
    first refinement started from): a second opinion for a pose that checks poorly."""
    return next((h for h in hypotheses
                 if far_from(h.T, refined, min_angle_deg)), None)


def alternative_hypotheses(hypotheses: list[PoseHypothesis], refined: list[np.ndarray],
                           near_deg: float = 30.0) -> list[PoseHypothesis]:
    """The hypotheses a refined pose is challenged with (estimator.second_opinion), in order: the
    best-ranked one at least near_deg from every pose in `refined` (0: none), a neighbouring basin
    that refinement from a hypothesis ~30 deg off does not reach, then the best-ranked one at least
    ALTERNATIVE_MIN_ANGLE_DEG away (a flip) when that is another."""
    near = alternative_hypothesis(hypotheses, refined, near_deg) if near_deg > 0 else None
    far = alternative_hypothesis(hypotheses, refined)
    picked = [near] if near is not None else []
    if far is not None and far is not near:
        picked.append(far)
    return picked


def retrieve_pose(obj: GaussianObject, bank: TemplateBank, image: np.ndarray, mask: np.ndarray, K: np.ndarray,
                  top_k: int = 32, descriptor: np.ndarray | None = None, aligned: int = 1) -> list[PoseHypothesis]:
    """Pose hypotheses for the masked object in `image` (HxWx3 uint8 RGB), best first.
    `descriptor`: the query's, when the bank holds another backend's descriptors (default:
    the mask's silhouette). The `aligned` best distinct hypotheses (those refinement starts
    from) get their translation aligned to the mask (QueryCrop.align) and are checked again,
    unless the mask is cut off by the image border; the order stays the ranking's."""
    mask = np.asarray(mask) > 0
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask size {mask.shape} does not match image size {image.shape[:2]}")
    described = describe(mask.astype(np.float32)) if mask.sum() >= 16 else None
    if described is None:
        raise InputError("query mask is empty: nothing to retrieve a pose for")
    d, box = described
    colour = None
    if descriptor is not None:
        d = np.asarray(descriptor, np.float32)
        if d.shape != bank.descriptors.shape[1:]:
            raise InputError(f"query descriptor has shape {d.shape}, the template bank {bank.descriptors.shape[1:]}")
    elif bank.colour is not None:
        colour = describe_colour(image, mask, box)
    sims = bank.descriptors @ d
    query = QueryCrop(image, mask, box, K)
    area = float(mask.sum())
    hypotheses = []
    for idx in candidate_templates(bank, sims, colour, top_k):
        T = _pose_from_template(bank, int(idx), area, box, K)
        check = query.check(obj, T)
        hypotheses.append(PoseHypothesis(T, float(sims[idx]), check.iou, hypothesis_score(float(sims[idx]), check), check))
    hypotheses.sort(key=lambda h: -h.score)
    return align_hypotheses(obj, image, mask, K, hypotheses, aligned, query)


def align_hypotheses(obj: GaussianObject, image: np.ndarray, mask: np.ndarray, K: np.ndarray,
                     hypotheses: list[PoseHypothesis], n: int, query: QueryCrop | None = None) -> list[PoseHypothesis]:
    """The n best distinct hypotheses (those refinement starts from) with their translation
    aligned to the mask (QueryCrop.align) and checked again, in place; nothing for a mask cut off
    by the image border. The order stays the ranking's."""
    mask = np.asarray(mask) > 0
    box = mask_box(mask)
    if n <= 0 or box is None or touches_border(mask):
        return hypotheses
    fine = QueryCrop(image, mask, box, K, size=ALIGN_SIZE)
    query = query or QueryCrop(image, mask, box, K)
    for h in distinct_hypotheses(hypotheses, n):
        h.T = fine.align(obj, h.T)
        h.check = query.check(obj, h.T)
        h.iou = h.check.iou
    return hypotheses
