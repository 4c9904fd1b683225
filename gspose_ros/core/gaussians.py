"""The 3D Gaussian Object (3DGO): parameters, activations, spherical harmonics, safe I/O.

Parameters are stored unconstrained (log scales, opacity logits, unnormalised
quaternions) so an optimiser can move them freely; `activated()` gives what a
renderer consumes. Files are safetensors (no pickle) with JSON metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputError

FORMAT_VERSION = 1
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
MAX_SH_DEGREE = 1  # degree >1 would need more bands than the CPU fit budget allows


@dataclass
class ActivatedGaussians:
    """What a renderer consumes. quats are wxyz and unit length, scales in metres.

    `covariances` and `colors` may be filled once (see `frozen_for_pose`) when only
    the pose changes between renders, as in refinement and tracking: that saves
    per-render work and autograd bookkeeping on the hot path.
    """

    means: torch.Tensor  # (N, 3) object frame, metres
    quats: torch.Tensor  # (N, 4) wxyz
    scales: torch.Tensor  # (N, 3)
    opacities: torch.Tensor  # (N,)
    sh: torch.Tensor  # (N, (deg+1)^2, 3)
    covariances: torch.Tensor | None = None  # (N, 3, 3) object frame
    colors: torch.Tensor | None = None  # (N, 3) fixed colours (view-independent within a refinement)

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    def object_covariances(self) -> torch.Tensor:
        if self.covariances is not None:
            return self.covariances
        M = quat_to_rotmat(self.quats) * self.scales[:, None, :]
        return M @ M.transpose(1, 2)

    def frozen_for_pose(self, T_camera_object: torch.Tensor) -> "ActivatedGaussians":
        """Detached copy with covariances and colours fixed at viewpoint T (a refinement moves
        the view by a few degrees, where SH colour change is negligible)."""
        with torch.no_grad():
            return ActivatedGaussians(self.means.detach(), self.quats.detach(), self.scales.detach(),
                                      self.opacities.detach(), self.sh.detach(), covariances=self.object_covariances(),
                                      colors=self.view_colors(T_camera_object))

    def view_colors(self, T_camera_object: torch.Tensor) -> torch.Tensor:
        """RGB per Gaussian as seen from pose T (the fixed colours if set)."""
        if self.colors is not None:
            return self.colors
        R, t = T_camera_object[:3, :3], T_camera_object[:3, 3]
        # view direction in the object frame: from the camera centre to each Gaussian
        dirs = torch.nn.functional.normalize(self.means - (-R.T @ t), dim=-1)
        return eval_sh_colors(self.sh, dirs)


@dataclass
class GaussianObject:
    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.means.shape[0]
        shapes = {
            "means": (self.means, (n, 3)),
            "log_scales": (self.log_scales, (n, 3)),
            "quats": (self.quats, (n, 4)),
            "opacity_logits": (self.opacity_logits, (n,)),
        }
        for name, (tensor, shape) in shapes.items():
            if tuple(tensor.shape) != shape:
                raise InputError(f"gaussian field {name}: expected shape {shape}, got {tuple(tensor.shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise InputError(f"gaussian field sh: expected (N, K, 3), got {tuple(self.sh.shape)}")
        deg = int(round(self.sh.shape[1] ** 0.5)) - 1
        if (deg + 1) ** 2 != self.sh.shape[1] or deg > MAX_SH_DEGREE:
            raise InputError(f"gaussian field sh: {self.sh.shape[1]} coefficients is not a supported SH degree (0..{MAX_SH_DEGREE})")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def diameter(self) -> float:
        return float(self.meta["diameter"])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "means": self.means,
            "log_scales": self.log_scales,
            "quats": self.quats,
            "opacity_logits": self.opacity_logits,
            "sh": self.sh,
        }

    def to(self, device) -> "GaussianObject":
        return GaussianObject(**{k: v.detach().to(device) for k, v in self.tensors().items()}, meta=dict(self.meta))

    def activated(self) -> ActivatedGaussians:
        return ActivatedGaussians(
            means=self.means,
            quats=torch.nn.functional.normalize(self.quats, dim=-1),
            scales=torch.exp(self.log_scales),
            opacities=torch.sigmoid(self.opacity_logits),
            sh=self.sh,
        )


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / SH_C0


def eval_sh_colors(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """View-dependent RGB per Gaussian, the 3DGS/gsplat convention (+0.5, clamped at 0).

    dirs: (N, 3) unit vectors from the camera centre to each Gaussian, object frame.
    """
    colors = SH_C0 * sh[:, 0]
    if sh.shape[1] > 1:
        x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
        colors = colors - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    return torch.clamp_min(colors + 0.5, 0.0)


def save_gaussians(obj: GaussianObject, path: str | os.PathLike) -> None:
    """Write atomically: a reader never sees a half-written file."""
    path = os.fspath(path)
    meta = dict(obj.meta, format_version=FORMAT_VERSION)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in obj.tensors().items()}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"gspose": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_gaussians(path: str | os.PathLike, device="cpu") -> GaussianObject:
    """Load a 3DGO file; any corruption is reported as InputError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"3DGO model file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("gspose", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise InputError(f"corrupt 3DGO model file {path}: {exc}") from exc
    if not isinstance(meta, dict) or "diameter" not in meta:
        raise InputError(f"corrupt 3DGO model file {path}: missing gspose metadata")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"3DGO model file {path}: format version {meta.get('format_version')} not supported (want {FORMAT_VERSION})")
    fit = meta.get("fit_pixel_m")  # optional (render.dilation); older files lack it
    if fit is not None and (isinstance(fit, bool) or not isinstance(fit, (int, float)) or not 0 < fit < 1e3):
        raise InputError(f"corrupt 3DGO model file {path}: fit_pixel_m must be a positive number of metres, got {fit!r}")
    missing = {"means", "log_scales", "quats", "opacity_logits", "sh"} - set(tensors)
    if missing:
        raise InputError(f"corrupt 3DGO model file {path}: missing tensors {sorted(missing)}")
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise InputError(f"corrupt 3DGO model file {path}: tensor {k} has non-finite values")
    obj = GaussianObject(**{k: tensors[k].to(device) for k in ("means", "log_scales", "quats", "opacity_logits", "sh")}, meta=meta)
    if len(obj) == 0:
        raise InputError(f"3DGO model file {path} holds no Gaussians")
    return obj


def quat_to_rotmat(quats_wxyz: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.unbind(torch.nn.functional.normalize(quats_wxyz, dim=-1), dim=-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats_wxyz.shape[:-1] + (3, 3))
