"""The GS-Pose network (learned backend): DINOv2 ViT-B/14 features, co-segmenter, RA-encoder.

Module names and parameter shapes follow the official GS-Pose release, so its
`model_weights.pth` loads key for key (the frozen backbone sits under
`dino_backbone.`), and a DINOv2 ViT-B/14 checkpoint (`dinov2_vitb14_pretrain.pth`,
keys without prefix) loads into the backbone alone. Nothing is ever downloaded:
checkpoints come from local paths, read with safetensors or
`torch.load(weights_only=True)` (no unpickling of arbitrary objects).

Written here rather than imported: the backbone's home (torch.hub / timm) needs a
download or pulls a CUDA torch (DESIGN.md), and the heads exist in no package.
Attention runs through torch's scaled_dot_product_attention (what xFormers'
memory-efficient attention computes in the official code).

Shapes for one 224x224 crop: backbone tokens 16x16x768 -> four blocks (3rd, 6th,
9th, 12th) projected and concatenated -> pixel-shuffled to 768x32x32 features;
co-segmentation -> 49x32x32 logits -> pixel-shuffled to a 1x224x224 mask;
RA-encoder (features + mask) -> a unit 64-d rotation-aware embedding.
Images go in as RGB floats in [0, 1], as the official inference feeds them.
"""

from __future__ import annotations

import math
import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

PATCH = 14
EMBED_DIM = 768
DINO_BLOCKS = (2, 5, 8, 11)  # the 3rd, 6th, 9th and 12th blocks feed the heads
LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


# --- building blocks shared by the backbone and the heads ------------------------------------
class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C/heads)."""
    B, N, C = x.shape
    return x.reshape(B, N, n_heads, C // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, H, N, c = x.shape
    return x.transpose(1, 2).reshape(B, N, H * c)


class RoPE2D(nn.Module):
    """2-D rotary position embedding (CroCo's, as GS-Pose uses with base frequency 100): the first
    half of each head's features rotates with the token's row, the second half with its column."""

    def __init__(self, freq: float = 100.0):
        super().__init__()
        self.base = freq

    def _rope1d(self, x, pos):  # x (B, H, N, D), pos (B, N) integer
        D = x.shape[-1]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, D, 2, device=x.device).float() / D))
        angles = pos.float()[..., None] * inv_freq  # (B, N, D/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None].to(x.dtype)  # (B, 1, N, D)
        half = torch.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)
        return x * angles.cos() + half * angles.sin()

    def forward(self, x, positions):  # positions (B, N, 2): row, column
        if x.shape[-1] % 4:
            raise ValueError("RoPE2D needs a head dimension divisible by 4")
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat((self._rope1d(rows, positions[..., 0]), self._rope1d(cols, positions[..., 1])), dim=-1)


def grid_positions(batch: int, h: int, w: int, device) -> torch.Tensor:
    """(batch, h*w, 2) row/column of each token in row-major order."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((rows.reshape(-1), cols.reshape(-1)), -1)[None].expand(batch, -1, -1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        self.num_heads, self.rope = num_heads, rope
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, xpos=None):
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if self.rope is not None and xpos is not None:
            q, k = self.rope(q, xpos), self.rope(k, xpos)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None):
        super().__init__()
        self.num_heads, self.rope = num_heads, rope
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, y, xpos=None, ypos=None):
        q, k, v = _heads(self.q(x), self.num_heads), _heads(self.k(y), self.num_heads), _heads(self.v(y), self.num_heads)
        if self.rope is not None and xpos is not None:
            q = self.rope(q, xpos)
        if self.rope is not None and ypos is not None:
            k = self.rope(k, ypos)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (self-attention + MLP, layer-scaled residuals)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.attn, self.ls1 = LayerNorm6(dim), SelfAttention(dim, num_heads, rope), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = LayerNorm6(dim), Mlp(dim, int(dim * mlp_ratio)), LayerScale(dim)

    def forward(self, x, xpos=None):
        x = x + self.ls1(self.attn(self.norm1(x), xpos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm cross-attention layer; keys/values are normalised too (norm_kv)."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.attn, self.ls1 = LayerNorm6(dim), CrossAttention(dim, num_heads, rope), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = LayerNorm6(dim), Mlp(dim, int(dim * mlp_ratio)), LayerScale(dim)
        self.norm_kv = LayerNorm6(dim)

    def forward(self, x, y, xpos=None, ypos=None):
        x = x + self.ls1(self.attn(self.norm1(x), self.norm_kv(y), xpos, ypos))
        return x + self.ls2(self.mlp(self.norm2(x)))


# --- DINOv2 ViT-B/14 ----------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, EMBED_DIM, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn, self.ls1 = LayerNorm6(EMBED_DIM), SelfAttention(EMBED_DIM, 12), LayerScale(EMBED_DIM)
        self.norm2, self.mlp, self.ls2 = LayerNorm6(EMBED_DIM), Mlp(EMBED_DIM, 4 * EMBED_DIM), LayerScale(EMBED_DIM)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViTB14(nn.Module):
    """DINOv2 ViT-B/14 (trained at 518 px: a 37x37 position grid, interpolated to the input)."""

    GRID = 37

    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.GRID * self.GRID + 1, EMBED_DIM))
        self.mask_token = nn.Parameter(torch.zeros(1, EMBED_DIM))  # used in pre-training only
        self.blocks = nn.ModuleList(DinoBlock() for _ in range(12))
        self.norm = LayerNorm6(EMBED_DIM)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Patch-grid position embedding for h x w patches, interpolated as DINOv2 does it
        (bicubic, with its 0.1 offset on the scale factor)."""
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, self.GRID, self.GRID, EMBED_DIM).permute(0, 3, 1, 2)
        if (h, w) != (self.GRID, self.GRID):
            grid = F.interpolate(grid, scale_factor=((h + 0.1) / self.GRID, (w + 0.1) / self.GRID), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, EMBED_DIM)
        return torch.cat((pos[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + H/14 * W/14, 768): class token + patch tokens, positioned."""
        h, w = x.shape[2] // PATCH, x.shape[3] // PATCH
        t = self.patch_embed(x)
        t = torch.cat((self.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        return t + self.position_embedding(h, w)


class GeM(nn.Module):
    """Generalised-mean pooling with a learned exponent."""

    def __init__(self, p: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = nn.Parameter(torch.ones(1) * p), eps

    def forward(self, x):
        return F.avg_pool2d(x.float().clamp(min=self.eps).pow(self.p), x.shape[-2:]).pow(1.0 / self.p)


def _conv_gn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2), nn.GroupNorm(1, c_out), nn.LeakyReLU(inplace=True)]


# --- GS-Pose -----------------------------------------------------------------------------------
class GSPoseNet(nn.Module):
    """DINOv2 backbone + co-segmentation transformer + rotation-aware (RA) encoder."""

    def __init__(self, coseg_dim: int = 256, pose_dim: int = 256, num_heads: int = 8, num_layers: int = 4,
                 rope_freq: float = 100.0):
        super().__init__()
        self.dino_backbone = DinoV2ViTB14()
        self.dino_backbone_transition = nn.ModuleDict({
            str(i): nn.Sequential(nn.Linear(EMBED_DIM, EMBED_DIM), nn.LayerNorm(EMBED_DIM), nn.GELU())
            for i in DINO_BLOCKS})
        self.coseg_aware_projection = nn.Sequential(*_conv_gn(EMBED_DIM, coseg_dim, 1))
        self.rope = RoPE2D(rope_freq)
        self.coseg_refer_LayerNorm = nn.LayerNorm(coseg_dim)
        self.coseg_query_LayerNorm = nn.LayerNorm(coseg_dim)

        def layers(kind):
            return nn.ModuleList(kind(coseg_dim, num_heads, self.rope) for _ in range(num_layers))

        self.coseg_refer_selfAttn_groupwise = layers(EncoderLayer)
        self.coseg_refer_selfAttn_framewise = layers(EncoderLayer)
        self.coseg_refer_crossAttn = layers(DecoderLayer)
        self.coseg_query_selfAttn = layers(EncoderLayer)
        self.coseg_query_crossAttn = layers(DecoderLayer)
        self.norm = nn.GroupNorm(1, coseg_dim)  # in the released weights, unused by inference
        self.coseg_prediction_head = nn.Sequential(*_conv_gn(coseg_dim, coseg_dim, 3), nn.Conv2d(coseg_dim, 49, 3, 1, 1))
        self.pose_aware_projection = nn.Sequential(*_conv_gn(EMBED_DIM, pose_dim, 1))
        self.rotation_embedding_head = nn.Sequential(
            *_conv_gn(pose_dim + 1, 128, 3), *_conv_gn(128, 256, 3, 2),
            *_conv_gn(256, 128, 3), *_conv_gn(128, 256, 3, 2),
            GeM(1.0), nn.Flatten(1), nn.Linear(256, 64))

    # stage: backbone features
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0,1], H and W multiples of 14 -> (B, 768, 2H/14, 2W/14)."""
        B, _, H, W = x.shape
        h, w = H // PATCH, W // PATCH
        t = self.dino_backbone.tokens(x)
        picked = []
        for i, block in enumerate(self.dino_backbone.blocks):
            t = block(t)
            if i in DINO_BLOCKS:
                picked.append(self.dino_backbone_transition[str(i)](t[:, 1:]))
            if i == DINO_BLOCKS[-1]:
                break
        maps = torch.cat(picked, dim=-1).reshape(B, h, w, -1).permute(0, 3, 1, 2)
        return F.pixel_shuffle(maps, 2)

    def _mask_logits(self, x: torch.Tensor, layer_norm: nn.Module, h: int, w: int) -> torch.Tensor:
        x = layer_norm(x).reshape(-1, h, w, x.shape[-1]).permute(0, 3, 1, 2)
        return F.pixel_shuffle(self.coseg_prediction_head(x), 7)

    # stage: reference co-segmentation (object-centred crops of one object)
    def refer_cosegmentation(self, feats: torch.Tensor) -> torch.Tensor:
        """(V, 768, S, S) features of V object-centred reference crops -> (V, 1, 7S, 7S) mask logits."""
        V, _, S, _ = feats.shape
        x = self.coseg_aware_projection(feats)
        # the object sits at the crop centre: its feature there is the group's object query
        centre = torch.zeros(V, 1, 1, 2, device=x.device, dtype=x.dtype)
        x_obj = F.grid_sample(x, centre, mode="bilinear", padding_mode="zeros", align_corners=True).reshape(1, V, -1)
        x = x.flatten(2).transpose(1, 2)  # (V, L, C)
        pos = grid_positions(V, S, S, x.device)
        for i in range(len(self.coseg_refer_selfAttn_framewise)):
            x = self.coseg_refer_selfAttn_framewise[i](x.reshape(V, S * S, -1), pos.reshape(V, S * S, 2))
            x = x.reshape(1, V * S * S, -1)  # every token of every view attends to every other
            group_pos = pos.reshape(1, V * S * S, 2)
            x = self.coseg_refer_crossAttn[i](x, x_obj, group_pos)
            x = self.coseg_refer_selfAttn_groupwise[i](x, group_pos)
        return self._mask_logits(x.reshape(V, S * S, -1), self.coseg_refer_LayerNorm, S, S)

    # stage: query segmentation against the references
    def query_cosegmentation(self, query_feats: torch.Tensor, ref_feats: torch.Tensor,
                             ref_masks: torch.Tensor) -> torch.Tensor:
        """(Q, 768, h, w) query features, (V, 768, S, S) reference features and (V, 1, *, *) reference
        masks in [0,1] -> (Q, 1, 7h, 7w) query mask logits."""
        Q, _, h, w = query_feats.shape
        V, _, S, _ = ref_feats.shape
        x_ref = self.coseg_aware_projection(ref_feats)
        if ref_masks.shape[-2:] != x_ref.shape[-2:]:
            ref_masks = F.interpolate(ref_masks, size=x_ref.shape[-2:], mode="bilinear", align_corners=True)
        x_ref = (x_ref * ref_masks.round()).flatten(2).transpose(1, 2).reshape(1, V * S * S, -1)
        ref_pos = grid_positions(V, S, S, x_ref.device).reshape(1, V * S * S, 2)
        # query tokens attend to the references independently: the reference set is shared
        x_ref, ref_pos = x_ref.expand(Q, -1, -1), ref_pos.expand(Q, -1, -1)
        x = self.coseg_aware_projection(query_feats).flatten(2).transpose(1, 2)
        pos = grid_positions(Q, h, w, x.device)
        for i in range(len(self.coseg_query_selfAttn)):
            x = self.coseg_query_selfAttn[i](x, pos)
            x = self.coseg_query_crossAttn[i](x, x_ref, pos, ref_pos)
        return self._mask_logits(x, self.coseg_query_LayerNorm, h, w)

    # stage: rotation-aware embedding
    def rotation_embedding(self, feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, 768, S, S) features + (B, 1, *, *) masks in [0,1] -> (B, 64) unit embeddings."""
        if masks.shape[-2:] != feats.shape[-2:]:
            masks = F.interpolate(masks, size=feats.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat((self.pose_aware_projection(feats), masks.to(feats.dtype)), dim=1)
        return F.normalize(self.rotation_embedding_head(x).float(), dim=-1, eps=1e-8)


# --- checkpoints -------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch file read with weights_only=True.
    A wrapping {'state_dict': ...} / {'model': ...} and DataParallel's 'module.' prefix are undone."""
    path = os.path.expanduser(os.fspath(path))
    if not path:
        raise InputError("checkpoint path is empty")
    if not os.path.isfile(path):
        raise InputError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged file, or a pickle that holds more than tensors
        raise InputError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and set(state) == {wrapper} and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} is not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _check_fit(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str, path: str) -> None:
    """Raise InputError naming the missing, unexpected and wrongly shaped tensors, if any."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = [f"{len(names)} {label} (e.g. {', '.join(names[:3])})"
             for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    if parts:
        raise InputError(f"{path} does not fit the {what}: " + "; ".join(parts))


def load_network(model_weights: str, dinov2_weights: str = "", device: str | torch.device = "cpu") -> GSPoseNet:
    """GS-Pose network from local checkpoints, in eval mode on `device`.

    model_weights: the GS-Pose heads (the official model_weights.pth, or one save_network
    wrote); it may also hold the backbone under `dino_backbone.`.
    dinov2_weights: a DINOv2 ViT-B/14 checkpoint; needed when model_weights has no backbone,
    and it takes precedence over one there."""
    net = GSPoseNet()
    prefix = "dino_backbone."
    expected = net.state_dict()
    state = read_state_dict(model_weights)
    heads = {k: v for k, v in state.items() if not k.startswith(prefix)}
    backbone = {k: v for k, v in state.items() if k.startswith(prefix)}
    backbone_path = model_weights
    if dinov2_weights:
        backbone_path = dinov2_weights
        # the hub checkpoint has no classifier; a "head." would be a fine-tuned one's, not ours
        backbone = {prefix + k: v for k, v in read_state_dict(dinov2_weights).items() if not k.startswith("head.")}
    elif not backbone:
        raise InputError(f"{model_weights} holds no DINOv2 backbone (no 'dino_backbone.' keys): "
                         "give a DINOv2 ViT-B/14 checkpoint too (dinov2_weights)")
    _check_fit({k: v for k, v in expected.items() if k.startswith(prefix)}, backbone,
               "DINOv2 ViT-B/14 backbone", backbone_path)
    _check_fit({k: v for k, v in expected.items() if not k.startswith(prefix)}, heads, "GS-Pose heads", model_weights)
    net.load_state_dict({**heads, **backbone})
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device).eval()


def save_network(net: GSPoseNet, path: str | os.PathLike) -> None:
    """Write all weights (backbone included) as safetensors."""
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, os.fspath(path))


def fps_indices(rotations: torch.Tensor, k: int) -> list[int]:
    """Farthest-point sampling of rotations (as axis-angle vectors), starting from the first:
    the official code picks its co-segmentation references this way."""
    n = rotations.shape[0]
    if k >= n:
        return list(range(n))
    picked = [0]
    dist = torch.full((n,), math.inf)
    for _ in range(k - 1):
        dist = torch.minimum(dist, (rotations - rotations[picked[-1]]).norm(dim=-1))
        picked.append(int(dist.argmax()))
    return picked
