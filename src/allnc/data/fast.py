"""The device-resident fast data path: the whole split as one uint8 tensor on the device,
batched per-sample augmentation and a loader that gathers batches by index.

Everything here is plain torch and takes the device as a parameter, so the same code runs
on CPU (tests) and CUDA (training). Every random choice comes from an explicit
``torch.Generator`` on the device, so a run is reproducible and a resumed run sees the same
batches. See docs/fast_path.md for how the batched pipeline corresponds to the
conventional torchvision one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DeviceImages",
    "BatchAugment",
    "FastLoader",
    "eval_batches",
    "fast_path_applicable",
    "normalize",
    "crop_flip",
    "cutout",
    "autoaugment",
    "apply_op",
    "geometric_matrices",
    "affine_batch",
    "CIFAR10_POLICY",
    "OPS",
    "PRESETS",
]

PRESETS = ("standard", "strong", "none")


# ============================================================================ images
class DeviceImages:
    """A whole split on the device: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,).

    ``images`` is the Split's uint8 N x H x W x C array (N x H x W is read as one channel).
    With ``channels_last`` (default) the tensor keeps the NHWC layout of the array in memory
    (an N x C x H x W view in torch's channels_last format, no copy); otherwise it is made
    contiguous NCHW.
    """

    def __init__(self, images: np.ndarray, targets: Any, device: Any = "cpu", channels_last: bool = True):
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise TypeError(f"DeviceImages needs uint8 images, got {arr.dtype}")
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"DeviceImages needs N x H x W x C images, got shape {arr.shape}")
        self.device = torch.device(device)
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device).permute(0, 3, 1, 2)
        self.x = x if channels_last else x.contiguous()
        self.y = torch.as_tensor(np.asarray(targets), dtype=torch.int64).to(self.device)
        if len(self.y) != len(self.x):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} targets")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and targets at ``index`` (a device LongTensor); keeps the memory format."""
        return self.x[index], self.y[index]


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


# ============================================================== AutoAugment (CIFAR-10)
# op ids: the five geometric ops first (they share one grid_sample), then the colour ops.
OPS = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "AutoContrast", "Invert", "Equalize", "Solarize", "Posterize",
    "Contrast", "Color", "Brightness", "Sharpness",
)
_OP_ID = {n: i for i, n in enumerate(OPS)}
_N_GEOM = 5
_NONE = len(OPS)
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}

# AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) as torchvision lists it:
# ((op, probability, magnitude bin of 10), (op, probability, magnitude bin)).
CIFAR10_POLICY: tuple = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


def magnitude_bins(op: str, h: int, w: int, num_bins: int = 10) -> torch.Tensor:
    """The magnitude of each bin (float32, as torchvision's AutoAugment space of 10 bins)."""
    lin = lambda hi: torch.linspace(0.0, hi, num_bins)  # noqa: E731
    if op in ("ShearX", "ShearY"):
        return lin(0.3)
    if op == "TranslateX":
        return lin(150.0 / 331.0 * w)
    if op == "TranslateY":
        return lin(150.0 / 331.0 * h)
    if op == "Rotate":
        return lin(30.0)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return lin(0.9)
    if op == "Posterize":
        return (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()).float()
    if op == "Solarize":
        return torch.linspace(255.0, 0.0, num_bins)
    return torch.zeros(num_bins)  # AutoContrast, Equalize, Invert: no magnitude


@dataclass
class _PolicyTables:
    op: torch.Tensor  # (P, 2) int64
    prob: torch.Tensor  # (P, 2) float32
    mag: torch.Tensor  # (P, 2) float64, unsigned
    signed: torch.Tensor  # (P, 2) bool


def _policy_tables(policy: Sequence, h: int, w: int, device: torch.device) -> _PolicyTables:
    op, prob, mag, signed = [], [], [], []
    for sub in policy:
        op.append([_OP_ID[name] for name, _, _ in sub])
        prob.append([p for _, p, _ in sub])
        mag.append([float(magnitude_bins(n, h, w)[k].item()) if k is not None else 0.0 for n, _, k in sub])
        signed.append([n in _SIGNED for n, _, _ in sub])
    return _PolicyTables(
        torch.tensor(op, dtype=torch.int64, device=device),
        torch.tensor(prob, dtype=torch.float32, device=device),
        torch.tensor(mag, dtype=torch.float64, device=device),
        torch.tensor(signed, dtype=torch.bool, device=device),
    )


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


def apply_op(x: torch.Tensor, name: str, magnitude: Any = 0.0) -> torch.Tensor:
    """Apply one AutoAugment op to every sample of a uint8 batch, with a per-sample
    (tensor of B) or shared (number) signed magnitude as torchvision's AutoAugment uses it:
    ``Brightness/Color/Contrast/Sharpness`` factor 1 + m, ``Posterize`` int(m) bits,
    ``Solarize`` threshold m, shears/translations/rotation as in ``geometric_matrices``."""
    b, c, h, w = x.shape
    m = torch.as_tensor(magnitude, dtype=torch.float64, device=x.device).expand(b).clone()
    if name in OPS[:_N_GEOM]:
        op = torch.full((b,), _OP_ID[name], dtype=torch.int64, device=x.device)
        return affine_batch(x, geometric_matrices(op, m, h, w))
    if name == "AutoContrast":
        return op_autocontrast(x)
    if name == "Invert":
        return op_invert(x)
    if name == "Equalize":
        return op_equalize(x)
    if name == "Solarize":
        return op_solarize(x, m)
    if name == "Posterize":
        return op_posterize(x, torch.trunc(m))
    if name == "Contrast":
        return op_contrast(x, 1.0 + m)
    if name == "Color":
        return op_color(x, 1.0 + m)
    if name == "Brightness":
        return op_brightness(x, 1.0 + m)
    if name == "Sharpness":
        return op_sharpness(x, 1.0 + m)
    raise ValueError(f"unknown AutoAugment op {name!r}; one of {', '.join(OPS)}")


def _apply_grouped(x: torch.Tensor, key: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Apply op ``key[b]`` (an id of OPS, or _NONE) with magnitude ``mag[b]`` to each sample:
    the batch is sorted by op once, every op runs once on its contiguous group (the five
    geometric ops share one grid_sample) and the results are scattered back.
    One host sync (the group sizes) per call."""
    n, c, h, w = x.shape
    counts = torch.bincount(key, minlength=_NONE + 1).tolist()
    if counts[_NONE] == n:
        return x
    order = torch.argsort(key, stable=True)
    out = x.clone()
    start = 0
    n_geom = sum(counts[:_N_GEOM])
    if n_geom:
        idx = order[:n_geom]
        theta = geometric_matrices(key[idx], mag[idx], h, w)
        out[idx] = affine_batch(x[idx], theta)
        start = n_geom
    for op in range(_N_GEOM, _NONE):
        k = counts[op]
        if k == 0:
            continue
        idx = order[start : start + k]
        start += k
        out[idx] = apply_op(x[idx], OPS[op], mag[idx])
    return out


def autoaugment(
    x: torch.Tensor, policy: torch.Tensor, u: torch.Tensor, sign: torch.Tensor, tables: Optional[_PolicyTables] = None
) -> torch.Tensor:
    """AutoAugment (CIFAR-10 policy) per sample on a uint8 batch.

    ``policy`` (B,) sub-policy ids in 0..24, ``u`` (B, 2) uniforms (op i fires when
    ``u[:, i] <= p_i``, as torchvision), ``sign`` (B, 2) in {0, 1} (0 = negative magnitude
    for the signed ops)."""
    n, c, h, w = x.shape
    t = tables if tables is not None else _policy_tables(CIFAR10_POLICY, h, w, x.device)
    for i in range(2):
        op = t.op[policy, i]
        fire = u[:, i] <= t.prob[policy, i]
        neg = t.signed[policy, i] & (sign[:, i] == 0)
        mag = torch.where(neg, -t.mag[policy, i], t.mag[policy, i])
        key = torch.where(fire, op, torch.full_like(op, _NONE))
        x = _apply_grouped(x, key, mag)
    return x


# ================================================================== batch augmentation
class BatchAugment:
    """Batched per-sample training augmentation, uint8 (B, C, H, W) -> normalized float32.

    - ``none``: normalize only.
    - ``standard``: random crop with ``pad`` zero padding (offsets uniform in 0..2*pad, as
      RandomCrop(size, padding=pad)) and horizontal flip with p = 0.5, then normalize.
    - ``strong``: AutoAugment CIFAR-10 policy per sample on uint8, then crop + flip, then
      normalize, then Cutout (one ``cutout`` px square per sample, 0 = the mean colour;
      ``cutout=0`` disables it). Cutout belongs to the strong preset only.
      ``autoaugment_first=False`` runs AutoAugment after crop + flip instead, the order of
      the conventional torchvision pipeline (see docs/fast_path.md).

    ``params = sample_params(n, h, w, generator)`` draws every random choice (a dict of
    per-sample tensors that can be sliced along dim 0); ``apply(x, params)`` is
    deterministic; ``__call__(x, generator)`` does both.
    """

    def __init__(
        self,
        preset: str = "standard",
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        pad: int = 4,
        cutout: int = 16,
        flip: bool = True,
        autoaugment_first: bool = True,
    ):
        if preset not in PRESETS:
            raise ValueError(f"augment preset {preset!r} is not one of: {', '.join(PRESETS)}")
        self.preset = preset
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.pad = int(pad) if preset != "none" else 0
        self.flip = bool(flip) and preset != "none"
        self.cutout = int(cutout) if preset == "strong" else 0
        self.autoaugment_first = bool(autoaugment_first)
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"BatchAugment(preset={self.preset!r}, pad={self.pad}, flip={self.flip}, cutout={self.cutout})"

    def _tables(self, h: int, w: int, device: torch.device) -> _PolicyTables:
        key = ("aa", h, w, str(device))
        if key not in self._cache:
            self._cache[key] = _policy_tables(CIFAR10_POLICY, h, w, device)
        return self._cache[key]

    def _norm(self, c: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("norm", c, str(device))
        if key not in self._cache:
            m, s = _stats(self.mean, self.std, c, device)
            self._cache[key] = (1.0 / (255.0 * s), -m / s)
        return self._cache[key]

    def sample_params(self, n: int, h: int, w: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Every random choice of a batch of ``n`` images of size (h, w), in a fixed order."""
        dev = generator.device
        g = generator
        p: dict[str, torch.Tensor] = {}
        if self.preset == "strong":
            p["policy"] = torch.randint(len(CIFAR10_POLICY), (n,), generator=g, device=dev)
            p["u"] = torch.rand((n, 2), generator=g, device=dev)
            p["sign"] = torch.randint(2, (n, 2), generator=g, device=dev)
        if self.pad > 0:
            p["offset"] = torch.randint(2 * self.pad + 1, (n, 2), generator=g, device=dev)
        if self.flip:
            p["flip"] = torch.rand((n,), generator=g, device=dev) < 0.5
        if self.cutout > 0:
            cy = torch.randint(h, (n, 1), generator=g, device=dev)
            cx = torch.randint(w, (n, 1), generator=g, device=dev)
            p["cutout"] = torch.cat([cy, cx], dim=1)
        return p

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(f"BatchAugment needs a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        b, c, h, w = x.shape
        strong = self.preset == "strong"
        if strong and self.autoaugment_first:
            x = autoaugment(x, params["policy"], params["u"], params["sign"], self._tables(h, w, x.device))
        if self.pad > 0 or self.flip:
            offsets = params["offset"] if self.pad > 0 else torch.zeros(b, 2, dtype=torch.int64, device=x.device)
            x = crop_flip(x, offsets, params.get("flip"), self.pad)
        if strong and not self.autoaugment_first:
            x = autoaugment(x, params["policy"], params["u"], params["sign"], self._tables(h, w, x.device))
        scale, shift = self._norm(c, x.device)
        y = x.float() * scale + shift
        if self.cutout > 0:
            y = cutout(y, params["cutout"], self.cutout)
        return y

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator))


def slice_params(params: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in params.items()}


# ============================================================================ loaders
def _mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of ints (NumPy's SeedSequence)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _rank_indices(sampler: Any, epoch: int) -> torch.Tensor:
    """This rank's sample order for ``epoch``, as the sampler itself defines it (a method it
    exposes, else its ``__iter__`` after ``set_epoch``)."""
    for name in ("rank_indices", "local_indices"):
        fn = getattr(sampler, name, None)
        if callable(fn):
            return torch.as_tensor(fn(epoch), dtype=torch.int64).cpu()
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return torch.as_tensor(list(iter(sampler)), dtype=torch.int64)


class FastLoader:
    """Batches of a device-resident split in the sampler's order, augmented on the device.

    Each step yields ``{"x": float (B, C, H, W) or a list of ``views`` of them, "y": int64
    (B,), "index": int64 (B,)}`` on the images' device, with B = ``batch_size`` (this rank's
    share; the last partial batch is dropped, so shapes are static). The random choices of
    step s of epoch e come from a device generator seeded from (seed, e, s), drawn for the
    whole global batch (``batch_size * world_size``) and sliced to this rank's chunk: N
    ranks see exactly the augmented samples that one process sees with the same global
    batch, and a resumed run reproduces the same batches. With ``augment=None`` "x" is the
    gathered uint8 batch itself (no augmentation, no normalization).
    """

    def __init__(
        self,
        images: DeviceImages,
        sampler: Any,
        batch_size: int,
        augment: Optional[BatchAugment] | Sequence[Optional[BatchAugment]] = None,
        views: int = 1,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if views < 1:
            raise ValueError("views must be at least 1")
        self.images = images
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.augment = augment
        self.views = int(views)
        self.seed = int(seed)
        self.epoch = 0
        self.start_step = 0
        self.rank = int(getattr(sampler, "rank", 0) or 0)
        self.world_size = int(getattr(sampler, "world_size", 1) or 1)
        gbs = getattr(sampler, "batch_size", None)
        if isinstance(gbs, int) and gbs != self.batch_size * self.world_size:
            raise ValueError(
                f"FastLoader batch_size {batch_size} (per rank) x {self.world_size} ranks does not match the "
                f"sampler's global batch size {gbs}"
            )
        self._gen = torch.Generator(device=images.device)
        # one augmentation for every view, or a list with one per view
        per_view = list(augment) if isinstance(augment, (list, tuple)) else [augment] * self.views
        if len(per_view) != self.views:
            raise ValueError(f"{len(per_view)} augmentations given for {self.views} views")
        self._per_view = per_view

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch to iterate; ``start_step`` skips the first steps (mid-epoch resume)."""
        self.epoch = int(epoch)
        self.start_step = int(start_step)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def generator(self, epoch: int, step: int) -> torch.Generator:
        return self._gen.manual_seed(_mix_seed(self.seed, epoch, step))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, bs = self.epoch, self.batch_size
        order = _rank_indices(self.sampler, epoch)
        steps = len(order) // bs
        dev = self.images.device
        batches = order[: steps * bs].view(steps, bs).to(dev)
        c, h, w = self.images.shape
        lo, hi = self.rank * bs, (self.rank + 1) * bs
        gbs = bs * self.world_size
        for step in range(self.start_step, steps):
            index = batches[step]
            xb, yb = self.images.gather(index)
            g = self.generator(epoch, step)
            outs = []
            for aug in self._per_view:
                if aug is None:
                    outs.append(xb)
                    continue
                params = aug.sample_params(gbs, h, w, g)
                outs.append(aug.apply(xb, slice_params(params, lo, hi)))
            yield {"x": outs[0] if self.views == 1 else outs, "y": yb, "index": index}
        self.start_step = 0


def eval_batches(
    images: DeviceImages, batch_size: int, mean: Sequence[float], std: Sequence[float]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of the split in order, normalized only (float32, on the images'
    device; the last batch may be smaller)."""
    n = len(images)
    aug = BatchAugment("none", mean, std)
    for start in range(0, n, batch_size):
        xb, yb = images.x[start : start + batch_size], images.y[start : start + batch_size]
        yield aug.apply(xb, {}), yb


# ======================================================================== applicability
def fast_path_applicable(bundle: Any, data_cfg: Any, view_presets: Sequence[str] = ()) -> tuple[bool, str]:
    """Whether the fast path can train on this data: the training split is in memory as
    uint8 (small images) and the augment preset (and every extra view's preset) is one this
    module implements."""
    pipeline = getattr(data_cfg, "pipeline", "auto")
    if pipeline == "conventional":
        return False, "data.pipeline=conventional"
    augment = getattr(data_cfg, "augment", "standard")
    for name, p in [("data.augment", augment), *(("a view's preset", v) for v in view_presets)]:
        if p not in PRESETS:
            return False, f"{name}={p!r} has no batched implementation (one of {', '.join(PRESETS)})"
    if not getattr(bundle, "small", False):
        return False, "the images are not small enough to keep in memory (large-image data uses the conventional pipeline)"
    for split in ("train", "test"):
        imgs = getattr(getattr(bundle, split, None), "images", None)
        if imgs is None:
            return False, f"the {split} split is not in memory"
        if getattr(imgs, "dtype", None) != np.uint8 or getattr(imgs, "ndim", 0) not in (3, 4):
            return False, f"the {split} split is not a uint8 N x H x W x C array"
    imgs = bundle.train.images
    c = imgs.shape[3] if imgs.ndim == 4 else 1
    if augment == "strong" and c not in (1, 3):
        return False, f"AutoAugment needs 1 or 3 channels, the images have {c}"
    return True, f"{len(imgs)} training images of {imgs.shape[1]}x{imgs.shape[2]}x{c} in memory, augment={augment}"
