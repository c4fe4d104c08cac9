"""Batched building blocks of the fast path, each with explicit per-sample parameters:
normalize, crop + flip, Cutout, the inverse affine matrices and warp of the geometric
AutoAugment ops, and the colour ops on uint8 batches (``op_*``).

``OPS`` is the id space of the AutoAugment ops: the five geometric ops first (they share
one ``grid_sample``), then the colour ops.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# op ids: the five geometric ops first (they share one grid_sample), then the colour ops.
OPS = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",
    "Contrast", "Color", "Brightness", "Sharpness",
)
_OP_ID = {n: i for i, n in enumerate(OPS)}
_N_GEOM = 5


# ====================================================================== basic ops
def _stats(mean: Sequence[float], std: Sequence[float], c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean_t = torch.as_tensor(list(mean), dtype=torch.float32, device=device)
    std_t = torch.as_tensor(list(std), dtype=torch.float32, device=device)
    if mean_t.numel() == 1 and c > 1:
        mean_t, std_t = mean_t.expand(c), std_t.expand(c)
    if mean_t.numel() != c or std_t.numel() != c:
        raise ValueError(f"mean/std have {mean_t.numel()}/{std_t.numel()} values for {c} channels")
    return mean_t.view(1, c, 1, 1), std_t.view(1, c, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std`` (ToTensor + Normalize)."""
    m, s = _stats(mean, std, x.shape[1], x.device)
    return (x.float() / 255.0 - m) / s


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: Optional[torch.Tensor], pad: int) -> torch.Tensor:
    """Per-sample random crop with zero padding, then per-sample horizontal flip.

    Sample b is padded by ``pad`` zeros on every side, cropped back to (H, W) at
    ``offsets[b] = (top, left)`` (each in 0..2*pad) and mirrored left-right where
    ``flips[b]``: the same as torchvision's ``pad`` + ``crop(top, left, H, W)`` + ``hflip``.
    One gather for the whole batch; any dtype.
    """
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    offsets = offsets.to(dev, torch.int64)
    rows = offsets[:, 0:1] + torch.arange(h, device=dev).view(1, h)  # (B, H)
    cols = torch.arange(w, device=dev).view(1, w).expand(b, w)
    if flips is not None:
        cols = torch.where(flips.to(dev).view(b, 1), (w - 1) - cols, cols)
    cols = offsets[:, 1:2] + cols  # (B, W)
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    out = xp[bi, :, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def cutout_mask(centers: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """(B, H, W) bool: the ``size`` x ``size`` square at each centre (y, x), i.e. rows
    y - size//2 .. y - size//2 + size - 1 (likewise columns), clipped at the borders
    (the same square as allnc.data.augment.Cutout)."""
    dev = centers.device
    cy, cx = centers[:, 0:1], centers[:, 1:2]
    y1, x1 = cy - size // 2, cx - size // 2
    y2, x2 = y1 + size, x1 + size
    r = torch.arange(h, device=dev).view(1, h)
    q = torch.arange(w, device=dev).view(1, w)
    rm = (r >= y1) & (r < y2)  # (B, H)
    cm = (q >= x1) & (q < x2)  # (B, W)
    return rm[:, :, None] & cm[:, None, :]


def cutout(x: torch.Tensor, centers: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one clipped square per sample in a normalized float batch (0 = the mean colour)."""
    m = cutout_mask(centers.to(x.device), size, x.shape[2], x.shape[3])
    return x.masked_fill(m[:, None], 0.0)


# -------------------------------------------------------------- geometric ops, batched
def _inverse_affine(angle_deg, tx, ty, shear_x, shear_y, cx, cy) -> torch.Tensor:
    """Per-sample inverse affine matrices (B, 2, 3), float64, in pixel coordinates centred
    on the image centre (torchvision's convention for tensors): the output pixel p reads the
    input at M p. The forward map is T * C * R(angle) * ShY(shear_y) * ShX(shear_x) * C^-1
    (shears in radians, angle in degrees, centre (cx, cy) relative to the image centre)."""
    rot = torch.deg2rad(angle_deg)
    cos_sy = torch.cos(shear_y)
    tan_sx = torch.tan(shear_x)
    a = torch.cos(rot - shear_y) / cos_sy
    b = -torch.cos(rot - shear_y) * tan_sx / cos_sy - torch.sin(rot)
    c = torch.sin(rot - shear_y) / cos_sy
    d = -torch.sin(rot - shear_y) * tan_sx / cos_sy + torch.cos(rot)
    # [[a, b], [c, d]] has determinant 1: its inverse is [[d, -b], [-c, a]]
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def geometric_matrices(op: torch.Tensor, magnitude: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse affine matrices (B, 2, 3) float32 of per-sample geometric AutoAugment ops.

    ``op`` holds ids 0..4 of ``OPS`` (ShearX, ShearY, TranslateX, TranslateY, Rotate),
    ``magnitude`` the signed magnitudes: shear factor (centre = top-left pixel), translation
    in pixels (truncated to an int), rotation in degrees counter-clockwise about the centre.
    """
    op = op.to(torch.int64)
    m = magnitude.to(torch.float64)
    z = torch.zeros_like(m)
    is_shx, is_shy = op == _OP_ID["ShearX"], op == _OP_ID["ShearY"]
    is_tx, is_ty, is_rot = op == _OP_ID["TranslateX"], op == _OP_ID["TranslateY"], op == _OP_ID["Rotate"]
    shear_x = torch.where(is_shx, torch.atan(m), z)
    shear_y = torch.where(is_shy, torch.atan(m), z)
    tx = torch.where(is_tx, torch.trunc(m), z)
    ty = torch.where(is_ty, torch.trunc(m), z)
    angle = torch.where(is_rot, -m, z)  # rotate(angle) is the affine of -angle
    shear = is_shx | is_shy
    cx = torch.where(shear, torch.full_like(m, -0.5 * w), z)
    cy = torch.where(shear, torch.full_like(m, -0.5 * h), z)
    return _inverse_affine(angle, tx, ty, shear_x, shear_y, cx, cy).float()


_BASE_GRIDS: dict = {}


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    key = (h, w, str(device))
    g = _BASE_GRIDS.get(key)
    if g is None:
        g = torch.empty(1, h, w, 3, dtype=torch.float32, device=device)
        g[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=device))
        g[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=device).unsqueeze(-1))
        g[..., 2].fill_(1.0)
        g = g.view(1, h * w, 3)
        _BASE_GRIDS[key] = g
    return g


def affine_batch(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp uint8 (B, C, H, W) by per-sample inverse matrices (B, 2, 3) (centred pixel
    coordinates), nearest neighbour, zero fill: torchvision's tensor ``affine``/``rotate``
    with ``fill=None`` for every sample at once."""
    b, c, h, w = x.shape
    base = _base_grid(h, w, x.device).expand(b, h * w, 3)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=x.device)
    th = theta.to(x.device, torch.float32).transpose(1, 2) / scale  # (B, 3, 2)
    # base @ th written out elementwise: a matmul could run in TF32 on GPU and move the
    # sampling points by ~1e-2 px, enough to change nearest-neighbour picks
    grid = (base[:, :, 0:1] * th[:, 0:1, :] + base[:, :, 1:2] * th[:, 1:2, :] + th[:, 2:3, :]).view(b, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


# ----------------------------------------------------------------- colour ops, batched
def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device).view(-1, 1, 1, 1)


def _blend(img1: torch.Tensor, img2: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    r64 = ratio.to(torch.float64)
    r, q = _col(r64.float(), img1), _col((1.0 - r64).float(), img1)
    return (r * img1 + q * img2).clamp_(0, 255).to(torch.uint8)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) uint8 luma (truncated, as torchvision's rgb_to_grayscale)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(x.dtype).unsqueeze(1)


def op_invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def op_solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _col(threshold.float(), x), 255 - x, x)


def op_posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    keep = 256 - torch.pow(2, 8 - bits.to(torch.int64))  # the high `bits` bits set
    return x & _col(keep.to(torch.uint8), x)


def op_autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True).float()
    hi = x.amax(dim=(-2, -1), keepdim=True).float()
    flat = hi == lo
    scale = torch.where(flat, torch.ones_like(lo), 255.0 / (hi - lo).clamp_min(1.0))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp_(0, 255).to(torch.uint8)


def op_equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalization of every channel of every sample (PIL's / torchvision's LUT)."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    # all pixels but those of the last non-empty bin (= the channel's maximum)
    top = hist.gather(1, flat.amax(dim=1, keepdim=True))
    step = torch.div(h * w - top, 255, rounding_mode="floor")  # (BC, 1)
    safe = step.clamp_min(1)
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = lut.gather(1, flat)
    out = torch.where(step == 0, flat, out)
    return out.to(torch.uint8).view(b, c, h, w)


def op_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def op_color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(x, _grayscale(x), factor)


def op_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).float().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def op_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    k = torch.ones(3, 3, dtype=torch.float32, device=x.device)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(c, 1, 3, 3)
    blurred = F.conv2d(x.float(), k, groups=c).round_().to(torch.uint8)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = blurred
    return _blend(x, degenerate, factor)
