"""Object detection by segmentation (GS-Pose stage 2), weight-free backend.

The object's colour distribution and local texture strength, learned from its
masked reference views, are back-projected onto the query (each pixel's
likelihood of the object's colour and texture against the query's own
statistics); connected regions of likely-object pixels, holes filled, are the
proposals, each refined to a mask by GrabCut in a padded box. A
proposal is only a candidate: the estimator confirms or rejects it by
retrieval and render-and-compare, which is where "not found" is decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes, convolve1d

from .colour import HSV_BINS, N_HS, N_HSV, N_TEXTURE, grabcut_foreground, histogram, hsv_bins, texture_bins
from .errors import InputError
from .geometry import mask_box, mask_iou
from .segment import open_mask


@dataclass
class DetectorConfig:
    # proposals are found on a copy this wide: fast, and blobs are smoother. Registration learns
    # the texture model at the default width (texture_model): another width here sees the
    # object's texture at another scale, which weakens that cue
    work_width: int = 320
    prob_threshold: float = 0.55  # object-colour posterior needed for a proposal pixel
    # a proposal is the seed region with its holes filled: the object's own colours that the
    # scene shares (the box's purple print against purple clutter) leave holes in the seed, which
    # GrabCut's sure core then lacked. Measured (RESULTS.md, 60 frames, with the texture model):
    # right masks among the box's candidates 85 -> 90 %, poses unchanged. Objects with real holes
    # (a roll of tape) are not filled: see holed_object_fraction
    fill_seed_holes: bool = True
    # an object whose reference masks have holes over more than this share of their filled area
    # (median over the views: hole_fraction) has real holes, which filling would close: its seeds
    # keep their holes. The test objects' co-segmented masks: median 0, worst view 0.4 %; a ring
    # of half its outer radius: 25 %
    holed_object_fraction: float = 0.02
    # a detection's score is its colour similarity to the references times its texture
    # similarity (when the object has a texture model): blobs of the object's colours but not its
    # texture score lower. Measured (RESULTS.md, 60 frames, bar 0.82 -> 0.7): ADD(-S)@0.1d the
    # same 83.3 %, false poses 3 -> 0 of 120 absent-object searches, 1.16 -> 0.94 s per object and
    # image (fewer wrong blobs pass to retrieval)
    texture_in_score: bool = True
    # ... and the similarity is to the object as seen from a few reference views, not to the
    # pooled histogram of all of them: the mean of the detection's `score_views` best per-view
    # similarities (ViewModels; the pooled model for 3DGOs registered without them). A query
    # shows one side of the object, whose colours the pooled histogram dilutes with every other
    # side's: the box's right masks scored 0.58-0.68 against its pooled model in three test
    # frames (below min_detection_score) while wrong blobs of its pastel colours scored up to 0.8.
    # Measured over the 240 test frames of four scene sets (all detections; co-segmented and
    # ground-truth reference masks alike): a right detection outscored every wrong one in 97.4 %
    # of the frames pooled, 100 % per view (1, 3 or 8 views alike); mean of 3: less hangs on one
    # view's mask. Pipeline 201 -> 206 of 240 (RESULTS.md, eighteenth session)
    score_views: int = 3
    min_area_fraction: float = 0.001  # proposals smaller than this share of the image are ignored
    max_proposals: int = 3
    # GrabCut works in the proposal box scaled by this. A wider crop gives GrabCut's background
    # colour model more of the scene around the object, so neighbouring clutter of the object's
    # colours is more often known as background. Measured (RESULTS.md, 60 frames, pipeline
    # ADD(-S)@0.1d): 1.6 -> 81.7 %, 1.8 -> 86.7, 2.0 -> 86.7 (duck 70 -> 85 %), 2.2 -> 83.3;
    # three-object images 86.7 -> 90.0 % at 2.0
    box_pad: float = 2.0
    # GrabCut's sure-object cores, one cut per proposal and core: the largest piece of the seed
    # opened with a disc of each value x sqrt(seed area), then eroded (0: the seed only eroded). A
    # seed of the object's colours often runs into neighbouring background along a thin neck (the
    # box: pastel texture against pastel clutter); with the seed merely eroded, those tendrils
    # stayed sure object and GrabCut had to keep them. Opened, they are only probable object,
    # which GrabCut drops where their colours and edges say background. Where the opened core loses
    # part of the object (a face of the box split from the rest by a dark edge), the eroded one
    # keeps it: both cuts are candidates, and retrieval's check picks. Measured (RESULTS.md, 60
    # frames): 0.3 alone took right masks among the candidates (IoU >= 0.9) 46 -> 48 and the
    # pipeline 76.7 -> 78.3 %; (0.3, 0) 80.0 % (cand 93 -> 97 %). Tight box masks score lower in
    # colour similarity (0.84 instead of the leaked 0.89), hence the colour-only bar went to 0.82
    core_openings: tuple[float, ...] = (0.3, 0.0)
    # a cut overlapping an earlier one of the same proposal by this IoU or more adds nothing
    same_cut_iou: float = 0.9
    grabcut_size: int = 160  # GrabCut crop side (pixels): its cost grows with the area
    grabcut_iters: int = 3
    # GrabCut seeds its colour models with OpenCV's global random generator: reseeded before every
    # call, the same image always gives the same masks (unseeded, the duck's ADD@0.1d over 20
    # frames moved between 20 % and 45 % from run to run)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.score_views, bool) or not isinstance(self.score_views, int) or self.score_views < 1:
            raise InputError(f"score_views must be an integer >= 1 (reference views a mask is scored against), "
                             f"got {self.score_views!r}")


@dataclass
class Detection:
    mask: np.ndarray  # (H, W) bool, full image
    box: np.ndarray  # (4,) x0, y0, x1, y1 (exclusive), pixels
    # similarity of the mask to the object's references, in [0, 1] (detection_score): colour x
    # texture (DetectorConfig.texture_in_score), colour alone for objects without a texture model
    score: float


def colour_model(images, masks) -> np.ndarray:
    """The object's HSV colour histogram over its masked reference pixels (the detector's
    object representation, stored with the 3DGO)."""
    total = np.zeros(N_HSV)
    for image, mask in zip(images, masks):
        total += np.bincount(hsv_bins(image)[mask > 0], minlength=N_HSV)
    if total.sum() == 0:
        raise InputError("no object pixels in the reference masks: cannot learn the object's colours")
    return (total / total.sum()).astype(np.float32)


def hole_fraction(masks) -> float:
    """Median over the reference masks of the share of each filled mask that is hole: how much
    of the object's outline encloses background (DetectorConfig.holed_object_fraction)."""
    shares = []
    for mask in masks:
        mask = np.asarray(mask) > 0
        filled = binary_fill_holes(mask)
        shares.append(float((filled & ~mask).sum() / max(int(filled.sum()), 1)))
    if not shares:
        raise InputError("no reference masks: cannot tell whether the object has holes")
    return float(np.median(shares))


def _work_image(image: np.ndarray, work_width: int) -> np.ndarray:
    """The image at the detector's working width (never enlarged): proposals and the texture
    model are both taken at this scale, so that texture strengths compare."""
    h, w = image.shape[:2]
    scale = min(1.0, work_width / w)
    return cv2.resize(image, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)


def _texture_counts(bins: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Texture-bin counts under `mask` (any size: resized to the binned image's, nearest)."""
    small_mask = cv2.resize(np.asarray(mask).astype(np.uint8), bins.shape[::-1], interpolation=cv2.INTER_NEAREST)
    return np.bincount(bins[small_mask > 0], minlength=N_TEXTURE).astype(np.float64)


def texture_model(images, masks, work_width: int = DetectorConfig.work_width) -> np.ndarray:
    """The object's histogram of local texture strength (colour.texture_bins) over its masked
    reference pixels, taken at the detector's working width: the second half of the detector's
    object representation. A textured object's pastel print and the smooth pastel shading of a
    busy background share colours but not texture (measured on the 20 box test frames: the best
    seed region's IoU with the object 0.62 -> 0.67 on average)."""
    total = np.zeros(N_TEXTURE)
    for image, mask in zip(images, masks):
        total += _texture_counts(texture_bins(_work_image(image, work_width)), mask)
    if total.sum() == 0:
        raise InputError("no object pixels in the reference masks: cannot learn the object's texture")
    return (total / total.sum()).astype(np.float32)


def texture_similarity(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Bhattacharyya coefficient of two texture-strength histograms, in [0, 1]."""
    return float(np.sqrt(np.asarray(hist_a) * np.asarray(hist_b)).sum())


def hue_saturation(hist: np.ndarray) -> np.ndarray:
    """Hue x saturation marginal(s) over value, each saturation bin shared half with its
    neighbours: the part of the colour that survives a change of lighting. Saturation still drifts
    a little with the light (the duck's yellow: 72 % of reference pixels in the top saturation
    bin, 1 % in a brightly lit query), and across a hard bin edge that drift halved the score of
    the right mask. `hist`: (..., N_HSV) -> (..., N_HS)."""
    hist = np.asarray(hist)
    hs = hist.reshape(hist.shape[:-1] + HSV_BINS).sum(axis=-1)
    return convolve1d(hs, [0.25, 0.5, 0.25], axis=-1, mode="nearest").reshape(hist.shape[:-1] + (N_HS,))


def colour_similarity(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Bhattacharyya coefficient of the (saturation-smoothed) hue x saturation marginals, in [0, 1]."""
    return float(np.sqrt(hue_saturation(hist_a) * hue_saturation(hist_b)).sum())


@dataclass
class ViewModels:
    """The detector's object representation per reference view: what the object looks like from
    each side (DetectorConfig.score_views), next to the pooled models that find its pixels."""

    colours: np.ndarray  # (V, N_HS) hue_saturation of each view's masked pixels
    textures: np.ndarray | None  # (V, N_TEXTURE) each view's texture histogram; None: colour alone

    def similarities(self, colour_hist: np.ndarray, texture_hist: np.ndarray | None) -> np.ndarray:
        """(V,) Bhattacharyya similarity of a mask's colour (x texture) histograms to each view."""
        sims = np.sqrt(self.colours * hue_saturation(colour_hist)[None]).sum(axis=1)
        if self.textures is not None and texture_hist is not None:
            sims = sims * np.sqrt(self.textures * np.asarray(texture_hist)[None]).sum(axis=1)
        return sims


def view_models(images, masks, work_width: int = DetectorConfig.work_width) -> ViewModels:
    """Per-view colour and texture models of the masked reference views (views whose mask is
    empty are left out); InputError when no view has object pixels."""
    colours, textures = [], []
    for image, mask in zip(images, masks):
        if not np.any(mask):
            continue
        colours.append(hue_saturation(colour_model([image], [mask])))
        textures.append(texture_model([image], [mask], work_width))
    if not colours:
        raise InputError("no object pixels in the reference masks: cannot learn the object's views")
    return ViewModels(np.asarray(colours, np.float32), np.asarray(textures, np.float32))


@dataclass
class ImageBins:
    """A query's per-pixel colour bins (full resolution) and texture bins (at the detector's
    working width, where the texture model was learned), binned once for all of its cuts:
    detection_score histograms each cut's pixels from them."""

    colour: np.ndarray  # (H, W) colour.hsv_bins
    texture: np.ndarray  # (h, w) colour.texture_bins of the work image

    @classmethod
    def of(cls, image: np.ndarray, work_width: int = DetectorConfig.work_width) -> "ImageBins":
        return cls(hsv_bins(image), texture_bins(_work_image(image, work_width)))

    def colour_histogram(self, mask: np.ndarray) -> np.ndarray:
        return histogram(self.colour, mask, N_HSV)

    def texture_histogram(self, mask: np.ndarray) -> np.ndarray:
        """Normalised; all zeros when no pixel of the mask survives the work width (a sliver)."""
        counts = _texture_counts(self.texture, mask)
        return counts / counts.sum() if counts.sum() > 0 else counts


def detection_score(image: np.ndarray, mask: np.ndarray, model: np.ndarray, texture: np.ndarray | None,
                    views: ViewModels | None, cfg: DetectorConfig, bins: ImageBins | None = None) -> float:
    """How much a mask looks like the object, in [0, 1] (Detection.score): colour x texture
    similarity (DetectorConfig.texture_in_score) to the `score_views` best-matching reference
    views, or to the pooled models when the object has no per-view ones. `bins`: the image's,
    when the caller scores several masks of it (ImageBins.of(image, cfg.work_width))."""
    bins = bins if bins is not None else ImageBins.of(image, cfg.work_width)
    colour_hist = bins.colour_histogram(mask)
    use_texture = texture is not None and cfg.texture_in_score
    texture_hist = bins.texture_histogram(mask) if use_texture else None
    if views is not None:
        sims = views.similarities(colour_hist, texture_hist)
        best = np.sort(sims)[::-1][: cfg.score_views]
        return float(best.mean())
    score = colour_similarity(colour_hist, model)
    if texture_hist is not None:
        score *= texture_similarity(texture_hist, texture)
    return score


def object_probability(image: np.ndarray, model: np.ndarray, texture: np.ndarray | None = None,
                       image_texture_bins: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel P(object | colour[, texture]): the object's colours (and texture strengths)
    weighed against the image's own, the two cues taken as independent (their likelihood ratios
    multiply). A joint colour x texture histogram spread the references' pixels over 6x as many
    bins and did worse (box seeds 0.55 IoU, duck 0.90, against 0.67 and 0.95).
    `image_texture_bins`: texture_bins(image), when the caller already has them."""
    bins = hsv_bins(image)
    colour_odds = (model / (histogram(bins, None, N_HSV) + 1e-6))[bins]
    if texture is not None:
        tbins = image_texture_bins if image_texture_bins is not None else texture_bins(image)
        colour_odds = colour_odds * (texture / (histogram(tbins, None, N_TEXTURE) + 1e-6))[tbins]
    return (colour_odds / (1.0 + colour_odds)).astype(np.float32)


def largest_piece(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected piece of a boolean mask; None when the mask is empty."""
    n, pieces, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask).astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    return pieces == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


# texture_trim's scale, at the detector's working width: the object's texture is weighed against
# the scene's within this many pixels around the mask (what a leak runs into), and the posterior
# is smoothed with this sigma (a single print-free patch on the object is not cut out)
TRIM_SURROUND = 31
TRIM_SIGMA = 3.0
# texture_trim trims only an object whose reference pixels are mostly textured: at least this share
# with a local grey-level deviation of 3 or more (TEXTURE_EDGES[1]). A smoother object's own shaded
# faces look like the smooth scene around them, and trimming cut them away instead of the leak:
# the duck (57 % textured) kept 22-95 % of right masks and one such fragment was posed wrong; the
# textured box (78 %) kept 55-98 %. The bracket: 46 %
TRIM_MIN_TEXTURED = 0.7


def texture_trim(image: np.ndarray, mask: np.ndarray, texture: np.ndarray | None, threshold: float,
                 work_width: int = DetectorConfig.work_width) -> np.ndarray | None:
    """The mask without the parts whose local texture is more the surrounding scene's than the
    object's (posterior P(object | texture strength) against the mask's surroundings, smoothed,
    below `threshold`), holes filled, largest piece; None when the object has no texture model or
    too little is left. GrabCut separates by colour alone, so a textured object's mask leaks
    into smooth background of its colours (the box's pastel print into pastel clutter); its
    texture tells them apart. Too strict for a mask that is already right (a face of the box in
    shadow loses its print): a second-pass candidate, judged by retrieval's check, not a fix.
    None too for an object less textured than TRIM_MIN_TEXTURED, whose texture cannot say it."""
    if texture is None or float(np.sum(texture[2:])) < TRIM_MIN_TEXTURED:
        return None
    mask = np.asarray(mask) > 0
    h, w = mask.shape
    small = _work_image(image, work_width)
    inside = cv2.resize(mask.astype(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    around = cv2.dilate(inside.astype(np.uint8), np.ones((TRIM_SURROUND, TRIM_SURROUND), np.uint8)) > 0
    bins = texture_bins(small)
    odds = (texture / (histogram(bins, around & ~inside, N_TEXTURE) + 1e-3))[bins]
    posterior = cv2.GaussianBlur((odds / (1.0 + odds)).astype(np.float32), (0, 0), TRIM_SIGMA)
    kept = largest_piece(binary_fill_holes(inside & (posterior > threshold)))
    if kept is None:
        return None
    trimmed = mask & (cv2.resize(kept.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0)
    return trimmed if trimmed.sum() >= 16 else None


def _sure_core(seed: np.ndarray, opening: float) -> np.ndarray:
    """The part of a boolean seed GrabCut must keep as object: the largest piece of the seed
    opened with a disc of `opening` x sqrt(seed area) (segment.open_mask: thin necks and what
    hangs off them go; the seed itself when too little survives), eroded by 2 px."""
    core = open_mask(seed, opening)
    core = largest_piece(core) if core.any() else core
    return cv2.erode(core.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def _grabcut(image: np.ndarray, seed: np.ndarray, box: np.ndarray, cfg: DetectorConfig,
             core_opening: float) -> np.ndarray | None:
    """Refine a seed region to an object mask inside its padded box, with the seed's core opened by
    `core_opening` (_sure_core) as sure object; None when GrabCut loses it."""
    h, w = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * cfg.box_pad / 2
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w, cx + half + 1)), int(min(h, cy + half + 1))
    scale = min(1.0, cfg.grabcut_size / max(x1 - x0, y1 - y0))
    size = (max(8, int(round((x1 - x0) * scale))), max(8, int(round((y1 - y0) * scale))))
    crop = cv2.resize(image[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    seed_crop = cv2.resize(seed[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    labels = np.full(crop.shape[:2], cv2.GC_PR_BGD, np.uint8)
    labels[seed_crop] = cv2.GC_PR_FGD
    labels[_sure_core(seed_crop, core_opening)] = cv2.GC_FGD
    border = np.ones(labels.shape, bool)
    border[2:-2, 2:-2] = False
    labels[border & ~seed_crop] = cv2.GC_BGD
    if not (labels == cv2.GC_FGD).any() and not (labels == cv2.GC_PR_FGD).any():
        return None
    fg = grabcut_foreground(crop, labels, cfg.grabcut_iters, cfg.seed)
    if fg is None:
        return None
    fg = largest_piece(fg)
    if fg is None:
        return None
    fg = fg.astype(np.uint8)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = cv2.resize(fg, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0
    return mask


def touches_border(mask: np.ndarray, margin: int = 2) -> bool:
    """Whether a mask reaches the outermost `margin` rows or columns of its image: cut off by the
    border, so its outline is partly the image's and not the object's."""
    mask = np.asarray(mask)
    return bool(mask[:margin].any() or mask[-margin:].any() or mask[:, :margin].any() or mask[:, -margin:].any())


def check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be HxWx3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if min(image.shape[:2]) < 16:
        raise InputError(f"image too small to search: {image.shape[1]}x{image.shape[0]}")
    return image


def detect(image: np.ndarray, model: np.ndarray, config: DetectorConfig | None = None,
           texture: np.ndarray | None = None, holes: float = 0.0, views: ViewModels | None = None) -> list[Detection]:
    """Candidate masks of the object with colour histogram `model` (and texture histogram
    `texture`, if the object has one) in an RGB image, best first. `holes`: the object's
    hole_fraction (a holed object's seeds are not filled); `views`: its per-view models, which
    score the masks (detection_score; None: the pooled models do)."""
    cfg = config or DetectorConfig()
    image = check_image(image)
    h, w = image.shape[:2]
    small = _work_image(image, cfg.work_width)
    scale = small.shape[1] / w
    # binned once: the proposals' texture cue and every cut's texture score (ImageBins) use them
    work_texture_bins = texture_bins(small)
    prob = cv2.GaussianBlur(object_probability(small, model, texture, work_texture_bins), (5, 5), 0)
    likely = (prob > cfg.prob_threshold).astype(np.uint8)
    likely = cv2.morphologyEx(likely, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    likely = cv2.morphologyEx(likely, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, comp, stats, _ = cv2.connectedComponentsWithStats(likely, connectivity=8)
    min_area = cfg.min_area_fraction * likely.size
    proposals = [(float(prob[comp == i].sum()), i) for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    fill_holes = cfg.fill_seed_holes and holes <= cfg.holed_object_fraction
    bins = ImageBins(hsv_bins(image), work_texture_bins)  # every cut is scored on them
    detections = []
    for _, i in sorted(proposals, reverse=True)[: cfg.max_proposals]:
        region = binary_fill_holes(comp == i) if fill_holes else comp == i
        seed = cv2.resize(region.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        x, y, bw, bh = stats[i, :4] / scale
        proposal_box = np.array([x, y, x + bw, y + bh])
        cuts: list[np.ndarray] = []
        for opening in cfg.core_openings:
            mask = _grabcut(image, seed, proposal_box, cfg, opening)
            if mask is None or mask.sum() < 16 or any(mask_iou(mask, c) >= cfg.same_cut_iou for c in cuts):
                continue
            cuts.append(mask)
            score = detection_score(image, mask, model, texture, views, cfg, bins)
            detections.append(Detection(mask, mask_box(mask), score))
    return sorted(detections, key=lambda d: -d.score)
