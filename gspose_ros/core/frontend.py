"""The front of the cascade behind one interface, with two backends (DESIGN.md):

    weight_free  colour co-segmentation, colour detector, silhouette template retrieval (CPU, no files)
    learned      GS-Pose's network: co-segmenter, query segmentation, RA-encoder retrieval
                 (checkpoints from local paths; CPU or CUDA)

Both give the same things: reference masks at registration (`cosegment`), per-object
state derived from a 3DGO (`prepare`), candidate masks in an image (`detect`) and pose
hypotheses for a mask (`retrieve`). The Estimator and the ROS nodes pick one with
`make_frontend`, so the two backends cannot drift apart between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .colour import N_HS, N_HSV, N_TEXTURE
from .detect import Detection, DetectorConfig, ViewModels, colour_model, detect, hole_fraction, texture_model, touches_border, view_models
from .errors import InputError
from .gaussians import GaussianObject
from .retrieve import PoseHypothesis, TemplateBank, align_hypotheses, build_template_bank, retrieve_pose
from .segment import CoSegmentation, SegmentConfig, cosegment, open_mask

BACKENDS = ("weight_free", "learned")
# PoseCheck.score a candidate mask cut off by the image border must beat a whole one's by
# (retrieve_best; the default of EstimatorConfig.truncated_handicap and of the retrieval node's parameter)
TRUNCATED_HANDICAP = 0.1
# where registration stores the weight-free detector's object representation in the 3DGO's metadata
COLOUR_KEY = "detector_colour_hsv"
TEXTURE_KEY = "detector_texture"  # absent from 3DGOs registered before it: they are detected by colour alone
HOLES_KEY = "detector_hole_fraction"  # absent from older 3DGOs: taken as 0 (no holes), as they were detected
# per-view models (detect.ViewModels): absent from older 3DGOs, whose masks are scored against the pooled models
VIEW_COLOURS_KEY = "detector_view_colours"
VIEW_TEXTURES_KEY = "detector_view_textures"


@dataclass
class FrontEndConfig:
    backend: str = "weight_free"
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    template_viewpoints: int = 400  # ~10 deg apart
    template_inplane: int = 24  # 15 deg apart
    # the learned backend's settings (LearnedConfig fields: model_weights, dinov2_weights, device, ...)
    learned: dict = field(default_factory=dict)


def store_detector_model(obj: GaussianObject, images, masks) -> None:
    """Learn the weight-free detector's object representation (colour and texture histograms,
    pooled and per view) from the masked reference views and keep it in the 3DGO's metadata,
    which the registry saves with it. The one place registration, evaluation and benchmark make it."""
    obj.meta[COLOUR_KEY] = colour_model(images, masks).tolist()
    obj.meta[TEXTURE_KEY] = texture_model(images, masks).tolist()
    obj.meta[HOLES_KEY] = hole_fraction(masks)
    views = view_models(images, masks)
    # 5 decimals: the metadata is JSON, and 64 views' histograms stay ~60 KB
    obj.meta[VIEW_COLOURS_KEY] = np.round(views.colours.astype(np.float64), 5).tolist()
    obj.meta[VIEW_TEXTURES_KEY] = np.round(views.textures.astype(np.float64), 5).tolist()


def _stored_histograms(obj: GaussianObject, key: str, what: str, n_bins: int, per_view: bool,
                       required: bool = False) -> np.ndarray | None:
    """The detector histogram(s) registration stored under `key`, each normalised: (n_bins,)
    pooled, or (views, n_bins) per view; None when absent and not `required` (a 3DGO registered
    before that model existed). Anything else is refused by name: another bin count would index
    the wrong bins and detect nonsense, not fail; NaN, negative or empty histograms score nothing."""
    values = obj.meta.get(key)
    if values is None and not required:
        return None
    models = f"per-view detector {what} models" if per_view else f"detector {what} model"
    try:
        arr = np.asarray(values if values is not None else [], dtype=np.float32)
    except (TypeError, ValueError):  # ragged lists, strings
        arr = np.zeros((0,), np.float32)
    shaped = arr.ndim == (2 if per_view else 1) and arr.size > 0
    if shaped and arr.shape[-1] != n_bins:
        raise InputError(f"3DGO's {models} {'have' if per_view else 'has'} {arr.shape[-1]} bins, this version uses "
                         f"{n_bins} (register it again with this version)")
    if not shaped or not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr.sum(axis=-1) <= 0):
        raise InputError(f"3DGO has no {models}, or unusable ones (want {'views x ' if per_view else ''}{n_bins}-bin "
                         "histograms; register it again with this version)")
    return arr / arr.sum(axis=-1, keepdims=True)


def object_colour(obj: GaussianObject) -> np.ndarray:
    return _stored_histograms(obj, COLOUR_KEY, "colour", N_HSV, per_view=False, required=True)


def object_texture(obj: GaussianObject) -> np.ndarray | None:
    """The detector's texture model, or None for a 3DGO registered before there was one."""
    return _stored_histograms(obj, TEXTURE_KEY, "texture", N_TEXTURE, per_view=False)


def object_views(obj: GaussianObject) -> ViewModels | None:
    """The detector's per-view models, or None for a 3DGO registered before there were any
    (its masks are then scored against the pooled models, which score right masks lower)."""
    colours = _stored_histograms(obj, VIEW_COLOURS_KEY, "colour", N_HS, per_view=True)
    if colours is None:
        return None
    textures = _stored_histograms(obj, VIEW_TEXTURES_KEY, "texture", N_TEXTURE, per_view=True)
    if textures is not None and len(textures) != len(colours):
        raise InputError(f"3DGO has {len(colours)} per-view colour models but {len(textures)} texture models "
                         "(register it again with this version)")
    return ViewModels(colours, textures)


def object_holes(obj: GaussianObject) -> float:
    """The share of the object's reference masks that is hole (detect.hole_fraction); 0 for a
    3DGO registered before it was kept."""
    value = obj.meta.get(HOLES_KEY, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:  # NaN fails too
        raise InputError(f"3DGO's detector hole fraction {value!r} is not a number in [0, 1] "
                         "(register it again with this version)")
    return float(value)


class FrontEnd:
    """What both backends share: retrieval = the backend's descriptor of the query against its
    template bank, translation from the mask, then render-and-compare ranking."""

    name = ""

    def cosegment(self, images, poses, Ks) -> CoSegmentation:
        raise NotImplementedError

    def prepare(self, obj: GaussianObject, with_bank: bool = True):
        """Per-object state (has .bank when with_bank)."""
        raise NotImplementedError

    def detect(self, image: np.ndarray, prepared, max_candidates: int | None = 3) -> list[Detection]:
        """Candidate masks of one object, best first (None: as many as the backend finds)."""
        raise NotImplementedError

    def candidates(self, image: np.ndarray, prepared, min_score: float, max_candidates: int) -> list[Detection]:
        """The detections worth a retrieval, in the order they are examined: those scoring at least
        min_score, whole ones before ones cut off by the image border (best score first within
        each), at most max_candidates. A truncated blob's outline is not an object's, and blobs
        of the object's colours running off the edge of busy scenes were 17 of the 28 wrong
        candidates over the 60 test frames (2 of the 57 right ones touched the border);
        in the three-object images the duck's right mask came third behind two such blobs.
        Shared by the Estimator and the detector node."""
        passed = [d for d in self.detect(image, prepared, None) if d.score >= min_score]
        passed.sort(key=lambda d: (touches_border(d.mask), -d.score))
        return passed[:max_candidates]

    def describe(self, image: np.ndarray, mask: np.ndarray, prepared) -> np.ndarray | None:
        """The query's descriptor for the bank; None = the mask's silhouette."""
        raise NotImplementedError

    def retrieve(self, obj: GaussianObject, prepared, image: np.ndarray, mask: np.ndarray, K: np.ndarray,
                 top_k: int = 32, aligned: int = 1) -> list[PoseHypothesis]:
        """Pose hypotheses for one mask, best first; the `aligned` best distinct ones with their
        translation aligned to the mask (retrieve.retrieve_pose)."""
        if prepared.bank is None:
            raise InputError("this object was prepared for detection only (no retrieval bank)")
        return retrieve_pose(obj, prepared.bank, image, mask, K, top_k, self.describe(image, mask, prepared), aligned)

    def retrieve_ranked(self, obj: GaussianObject, prepared, image: np.ndarray, masks: list[np.ndarray],
                        K: np.ndarray, top_k: int = 32, opening: float = 0.0,
                        truncated_handicap: float = TRUNCATED_HANDICAP) -> list[tuple[int, list[PoseHypothesis], np.ndarray]]:
        """Retrieval on every candidate mask of one object: (index, hypotheses, the mask retrieved
        on) for each mask that gives any, the candidate with the best-checking hypothesis first (see
        retrieve_best for why by the check, and for truncated_handicap and opening); the hypotheses
        are as retrieved, their translations not yet aligned (retrieve.align_hypotheses)."""
        ranked = []
        for i, mask in enumerate(masks):
            opened = open_mask(mask, opening)
            hypotheses = self.retrieve(obj, prepared, image, opened, K, top_k, aligned=0)
            if not hypotheses:
                continue
            score = max((h.check.score for h in hypotheses if h.check is not None), default=-np.inf)
            score -= truncated_handicap if touches_border(mask) else 0.0
            ranked.append((score, i, hypotheses, opened))
        ranked.sort(key=lambda entry: (-entry[0], entry[1]))  # stable: an earlier candidate wins a tie
        return [(i, hypotheses, opened) for _, i, hypotheses, opened in ranked]

    def retrieve_best(self, obj: GaussianObject, prepared, image: np.ndarray, masks: list[np.ndarray], K: np.ndarray,
                      top_k: int = 32, opening: float = 0.0, aligned: int = 1,
                      truncated_handicap: float = TRUNCATED_HANDICAP) -> tuple[int, list[PoseHypothesis]] | None:
        """Retrieval on every candidate mask of one object; (index of the candidate with the
        best-checking hypothesis, its hypotheses), or None when no mask gives any. Retrieval is
        cheap and its check already says which candidate looks like the object, so only that one
        need pay for a refinement. Candidates are compared by PoseCheck.score, the verdict's own
        measure, not by the hypothesis ranking: the ranking leans on silhouette similarity, which
        a wrong blob of the object's colour can match too (duck: right candidate 19 -> 17 of 20).
        A mask cut off by the image border (see `candidates`) must out-check a whole one by
        `truncated_handicap`: retrieval reads the translation and scale off the mask's box and
        area, which truncation biases, so a close call is no evidence for it (a yellow blob
        running off the edge out-checked the duck's right mask by 0.01, while the box's right
        masks cut off by the border out-checked whole wrong blobs by 0.23 and 0.52).
        `opening` > 0: each mask is retrieved on without its thin parts (segment.open_mask); the
        silhouette ranking is sensitive to a leak along a line, which refinement is not.
        Candidates are compared on their hypotheses as retrieved; only the winner's `aligned`
        best distinct hypotheses then get their translation aligned (retrieve.align_hypotheses):
        aligned checks flattered a wrong blob over the duck's own, if leaky, mask (test frame 15 of
        /tmp/ds2: IoU 0.70 chosen before, a wrong blob with alignment), and one
        candidate's alignment is all a refinement needs."""
        ranked = self.retrieve_ranked(obj, prepared, image, masks, K, top_k, opening, truncated_handicap)
        if not ranked:
            return None
        index, hypotheses, retrieved_on = ranked[0]
        align_hypotheses(obj, image, retrieved_on, K, hypotheses, aligned)
        return index, hypotheses


@dataclass
class WeightFreeObject:
    colour: np.ndarray  # the detector's colour model
    bank: TemplateBank | None
    texture: np.ndarray | None = None  # the detector's texture model (None: colour alone)
    holes: float = 0.0  # share of the reference masks that is hole: a holed object's seeds are not filled
    views: ViewModels | None = None  # per-view models that score the masks (None: the pooled ones do)


class WeightFreeFrontEnd(FrontEnd):
    name = "weight_free"

    def __init__(self, config: FrontEndConfig | None = None):
        self.config = config or FrontEndConfig()

    def cosegment(self, images, poses, Ks) -> CoSegmentation:
        return cosegment(images, poses, Ks, self.config.segment)

    def prepare(self, obj: GaussianObject, with_bank: bool = True) -> WeightFreeObject:
        cfg = self.config
        # first: a bad model fails before seconds of template rendering
        colour, texture, holes, views = object_colour(obj), object_texture(obj), object_holes(obj), object_views(obj)
        bank = build_template_bank(obj, cfg.template_viewpoints, cfg.template_inplane) if with_bank else None
        return WeightFreeObject(colour, bank, texture, holes, views)

    def detect(self, image: np.ndarray, prepared: WeightFreeObject, max_candidates: int | None = 3) -> list[Detection]:
        return detect(image, prepared.colour, self.config.detector, prepared.texture, prepared.holes,
                      prepared.views)[:max_candidates]

    def describe(self, image, mask, prepared) -> None:
        return None


def make_frontend(config: FrontEndConfig | None = None) -> FrontEnd:
    """The backend `config.backend` names; the learned one loads its checkpoints now, so a
    missing or mismatched file is reported at start-up, not at the first image."""
    config = config or FrontEndConfig()
    if config.backend == "weight_free":
        return WeightFreeFrontEnd(config)
    if config.backend == "learned":
        from .learned import LearnedConfig, LearnedFrontEnd  # torch network: only when asked for
        unknown = set(config.learned) - set(LearnedConfig.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown learned-backend settings: {sorted(unknown)}")
        return LearnedFrontEnd(LearnedConfig(**config.learned))
    raise InputError(f"unknown backend {config.backend!r} (choose one of {', '.join(BACKENDS)})")
