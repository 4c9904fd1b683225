"""The learned front of the cascade (GS-Pose's network): reference co-segmentation,
detection by query co-segmentation, and rotation-aware (RA) embeddings for retrieval.

Same jobs and outputs as the weight-free stages (segment.py, detect.py, the silhouette
bank in retrieve.py), so `frontend.py` can hand either to the Estimator and the nodes:
- registration without masks: object-centred 224 crops of the posed views, a few
  (farthest-point sampled rotations) co-segmented together, every view then segmented
  against them, masks pasted back into the full images;
- per object, from renders of its 3DGO: reference crops + masks (what a query is
  co-segmented against) and a bank of RA embeddings over viewpoints and in-plane
  rotations (what a query crop's embedding is matched with);
- detection: the whole (rescaled) image co-segmented against the references, each
  connected region cropped (box padded 1.25, 224 px) and segmented again, finer;
- retrieval: the crop's RA embedding against the bank, translation from the mask
  box and area as in the weight-free path (retrieve.retrieve_pose).
Thresholds and paddings are the official inference settings.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from .detect import Detection, check_image
from .errors import InputError
from .frontend import FrontEnd
from .gaussians import GaussianObject
from .geometry import crop_window_from_box, crop_window_from_pose, make_pose, mask_box
from .network import PATCH, fps_indices, load_network
from .retrieve import TemplateBank, no_templates, template_bank, template_camera, template_views
from .segment import CoSegmentation, object_sphere
from .views import check_view_arrays, crop_image, paste_crop

CROP = 224  # the network's crop side
BOX_PADDING = 1.25  # box -> crop (official coarse/finer_bbox_padding)
COARSE_THRESHOLD = 0.05  # whole-image mask probability that marks a candidate region
FINE_THRESHOLD = 0.5
MIN_REGION_PX = PATCH * PATCH  # a region smaller than one patch is noise
MAX_REGIONS = 3  # regions refined per image when detect() is not told how many (the weight-free max_proposals)


@dataclass
class LearnedConfig:
    model_weights: str = ""  # GS-Pose model_weights.pth (or a safetensors file save_network wrote)
    dinov2_weights: str = ""  # DINOv2 ViT-B/14 checkpoint, if model_weights lacks the backbone
    device: str = "cpu"
    reference_views: int = 8  # co-segmentation references (official refer_view_num)
    bank_viewpoints: int = 64  # 3DGO renders embedded for retrieval ...
    bank_inplane: int = 8  # ... each at this many in-plane rotations
    query_long_side: int = 448  # whole-image detection resolution (official: 672; CPU cost grows ~quadratically)
    batch: int = 8  # crops per network call
    min_confidence: float = 0.5  # reference co-segmentation: median view confidence below this is refused


@dataclass
class LearnedReferences:
    """What a query is co-segmented against: features and masks of object-centred crops."""

    feats: torch.Tensor  # (V, 768, 32, 32)
    masks: torch.Tensor  # (V, 1, 224, 224) in [0, 1]


@dataclass
class LearnedObject:
    references: LearnedReferences
    bank: TemplateBank | None  # RA embeddings; None where only detection is needed


_NETWORKS: dict[tuple, torch.nn.Module] = {}
_NETWORKS_LOCK = threading.Lock()


def shared_network(model_weights: str, dinov2_weights: str, device: torch.device) -> torch.nn.Module:
    """One loaded network per (files, their modification times, device) and process: the nodes of
    pose_pipeline share it instead of holding three copies (inference does not modify it)."""
    def stamp(path):
        path = os.path.expanduser(path)
        return os.path.getmtime(path) if path and os.path.isfile(path) else None

    key = (model_weights, stamp(model_weights), dinov2_weights, stamp(dinov2_weights), str(device))
    with _NETWORKS_LOCK:
        if key not in _NETWORKS:
            _NETWORKS[key] = load_network(model_weights, dinov2_weights, device)
        return _NETWORKS[key]


def _to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    """uint8 or [0,1] float RGB crops -> (N, 3, S, S) float in [0, 1]."""
    arr = np.stack([c.astype(np.float32) / (255.0 if c.dtype == np.uint8 else 1.0) for c in crops])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class LearnedFrontEnd(FrontEnd):
    """The network and the three learned stages. Loading checks every tensor's name and shape."""

    name = "learned"

    def __init__(self, config: LearnedConfig):
        self.config = config
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {config.device!r} asked for, but CUDA is not available here")
        self.device = torch.device(config.device)
        self.net = shared_network(config.model_weights, config.dinov2_weights, self.device)

    # --- network calls, batched -------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        b = max(1, self.config.batch)
        return torch.cat([self.net.features(images[i:i + b].to(self.device)) for i in range(0, len(images), b)])

    @torch.no_grad()
    def segment(self, feats: torch.Tensor, refs: LearnedReferences) -> torch.Tensor:
        """Mask probabilities (N, 1, 7h, 7w) of N feature maps against the references."""
        b = max(1, self.config.batch)
        return torch.cat([self.net.query_cosegmentation(feats[i:i + b], refs.feats, refs.masks).sigmoid()
                          for i in range(0, len(feats), b)])

    @torch.no_grad()
    def embed(self, feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.net.rotation_embedding(feats, masks)

    # --- registration: reference masks --------------------------------------------------------
    def cosegment(self, images, poses, Ks) -> CoSegmentation:
        """Masks of the object in posed views with none given (the learned co-segmenter)."""
        images, poses, Ks = check_view_arrays(images, poses, Ks)
        centre, radius = object_sphere(poses, Ks, [im.shape[:2] for im in images])
        windows, crops = [], []
        for image, T, K in zip(images, poses, Ks):
            T_centre = make_pose(T[:3, :3], T[:3, :3] @ centre + T[:3, 3])
            window = crop_window_from_pose(T_centre, K, radius, CROP, pad=1.0)
            windows.append(window)
            crops.append(crop_image(image, window))
        feats = self.features(_to_tensor(crops))
        rotvecs = torch.from_numpy(Rotation.from_matrix(np.stack([T[:3, :3] for T in poses])).as_rotvec()).float()
        picked = fps_indices(rotvecs, self.config.reference_views)
        ref_feats = feats[picked]
        with torch.no_grad():
            ref_masks = self.net.refer_cosegmentation(ref_feats).sigmoid()
        probs = self.segment(feats, LearnedReferences(ref_feats, ref_masks)).cpu().numpy()[:, 0]
        masks, confidences = [], []
        for i, (prob, window, image) in enumerate(zip(probs, windows, images)):
            full = paste_crop(prob, window, image.shape[:2]) > FINE_THRESHOLD
            if full.sum() < MIN_REGION_PX:
                raise InputError(f"co-segmentation found no object in reference view {i}")
            masks.append(full)
            confidences.append(float(np.abs(2 * prob - 1).mean()))  # 1 = every pixel decided
        confidences = np.array(confidences)
        if np.median(confidences) < self.config.min_confidence:
            raise InputError(f"co-segmentation is unsure of the object (median view confidence "
                             f"{np.median(confidences):.2f} < {self.config.min_confidence})")
        return CoSegmentation(masks, confidences, centre, radius)

    # --- per object ---------------------------------------------------------------------------
    def prepare(self, obj: GaussianObject, with_bank: bool = True) -> LearnedObject:
        """References (and the RA-embedding bank) from renders of the 3DGO."""
        cfg = self.config
        camera = template_camera(obj, CROP, 1.0)  # the bounding sphere fills the crop, as the official crops
        ref_views = list(template_views(obj, camera, cfg.reference_views, 1))
        if not ref_views:
            raise no_templates()
        references = LearnedReferences(self.features(_to_tensor([v.rgb for v in ref_views])),
                                       torch.from_numpy(np.stack([v.alpha for v in ref_views]))[:, None]
                                       .to(self.device))
        if not with_bank:
            return LearnedObject(references, None)
        views, embeddings = [], []
        rendered = template_views(obj, camera, cfg.bank_viewpoints, cfg.bank_inplane)
        while batch := list(itertools.islice(rendered, max(1, cfg.batch))):
            feats = self.features(_to_tensor([v.rgb for v in batch]))
            embeddings.append(self.embed(feats, self.segment(feats, references)).cpu())
            views += [v.described() for v in batch]
        if not views:
            raise no_templates()
        return LearnedObject(references, template_bank(views, torch.cat(embeddings).numpy(), camera))

    # --- detection ----------------------------------------------------------------------------
    def _query_scale(self, shape) -> tuple[int, int]:
        h, w = shape
        s = self.config.query_long_side / max(h, w)
        return max(PATCH, int(round(w * s / PATCH)) * PATCH), max(PATCH, int(round(h * s / PATCH)) * PATCH)

    def detect(self, image: np.ndarray, obj: LearnedObject, max_candidates: int | None = 3) -> list[Detection]:
        """Candidate masks of one object, best first (score: mean mask probability inside it)."""
        image = check_image(image)
        h, w = image.shape[:2]
        qw, qh = self._query_scale((h, w))
        small = cv2.resize(image, (qw, qh), interpolation=cv2.INTER_AREA)
        coarse = self.segment(self.features(_to_tensor([small])), obj.references)[0, 0].cpu().numpy()
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        n, labels, stats, _ = cv2.connectedComponentsWithStats((coarse >= COARSE_THRESHOLD).astype(np.uint8))
        regions = [i for i in np.argsort(-stats[:, cv2.CC_STAT_AREA]) if i and stats[i, cv2.CC_STAT_AREA] >= MIN_REGION_PX]
        detections = []
        # each region costs a fine segmentation pass: at most MAX_REGIONS when not told how many
        for i in regions[:MAX_REGIONS if max_candidates is None else max_candidates]:
            x, y, bw, bh = stats[i, :4]
            window = crop_window_from_box([x, y, x + bw, y + bh], CROP, BOX_PADDING)
            fine = self.segment(self.features(_to_tensor([crop_image(image, window)])), obj.references)
            prob = paste_crop(fine[0, 0].cpu().numpy(), window, (h, w))
            mask = prob > FINE_THRESHOLD
            box = mask_box(mask)
            if box is None or mask.sum() < MIN_REGION_PX:
                continue
            detections.append(Detection(mask, box, float(prob[mask].mean())))
        return sorted(detections, key=lambda d: -d.score)

    # --- retrieval ----------------------------------------------------------------------------
    def describe(self, image: np.ndarray, mask: np.ndarray, obj: LearnedObject) -> np.ndarray:
        """RA embedding of the masked object: its padded box cropped, segmented and encoded."""
        box = mask_box(np.asarray(mask) > 0)
        if box is None:
            raise InputError("query mask is empty: nothing to retrieve a pose for")
        window = crop_window_from_box(box, CROP, BOX_PADDING)
        feats = self.features(_to_tensor([crop_image(check_image(image), window)]))
        return self.embed(feats, self.segment(feats, obj.references))[0].cpu().numpy()
