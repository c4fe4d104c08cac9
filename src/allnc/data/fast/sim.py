"""SimAugment ("sim", the contrastive views of BCL) batched: every sample its own random
resized crop, flip, colour jitter in a random order and greyscale, for the whole batch at
once on float images in [0, 1].

The conventional pipeline is ``allnc.data.augment.sim_ops``: RandomResizedCrop(size,
scale=(0.08, 1)) + RandomHorizontalFlip + RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)],
p=0.8) + RandomGrayscale(p=0.2) (1-channel images: ColorJitter(0.4, 0.4) with p = 0.8
only). Here ``sample_sim`` draws every random choice as per-sample tensors and
``apply_sim`` is deterministic. Each building block takes explicit per-sample parameters
and equals torchvision's tensor op per sample (the tests compare them):

- ``resized_crop_boxes``: RandomResizedCrop.get_params (10 tries, the first one that fits
  wins, else the central crop with the ratio clamped), vectorised over the batch;
- ``resized_crop_flip``: ``resized_crop(..., antialias=False)`` (bilinear,
  align_corners=False) and ``hflip``, as one ``grid_sample``;
- ``adjust_brightness``/``adjust_contrast``/``adjust_saturation``/``adjust_hue``,
  ``rgb_to_grayscale``: the float tensor ops with per-sample factors; ``color_jitter``
  chains them in each sample's drawn order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SIM_SCALE = (0.08, 1.0)
SIM_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
P_JITTER = 0.8
P_GRAY = 0.2
TRIES = 10
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


# ------------------------------------------------------------------ random resized crop
def resized_crop_boxes(
    u_area: torch.Tensor,
    u_ratio: torch.Tensor,
    u_offset: torch.Tensor,
    h: int,
    w: int,
    scale: tuple[float, float] = SIM_SCALE,
    ratio: tuple[float, float] = SIM_RATIO,
) -> torch.Tensor:
    """Crop boxes (n, 4) int64 ``(top, left, height, width)`` by torchvision's
    ``RandomResizedCrop.get_params`` rule, from uniforms in [0, 1): ``u_area`` and
    ``u_ratio`` (n, tries) give each try's area fraction (uniform in ``scale``) and log
    aspect ratio (uniform in log ``ratio``); the first try whose box fits the h x w image
    wins, and ``u_offset`` (n, 2) places it (top uniform in 0..h - height, likewise left).
    Where no try fits: the central crop, the whole image with its ratio clamped to
    ``ratio``."""
    u_area, u_ratio, u_offset = (u.to(torch.float64) for u in (u_area, u_ratio, u_offset))
    n, tries = u_area.shape
    dev = u_area.device
    target = (h * w) * (scale[0] + (scale[1] - scale[0]) * u_area)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u_ratio)
    cw = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round
    ch = torch.round(torch.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    idx = torch.arange(tries, device=dev).expand(n, tries)
    first = torch.where(fits, idx, tries).amin(dim=1, keepdim=True)
    found = first[:, 0] < tries
    pick = first.clamp(max=tries - 1)
    # the fallback: the whole image, its aspect ratio clamped into `ratio`
    in_ratio = w / h
    if in_ratio < min(ratio):
        fw, fh = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(h * max(ratio))), h
    else:
        fw, fh = w, h
    bh = torch.where(found, ch.gather(1, pick)[:, 0], torch.full_like(ch[:, 0], fh))
    bw = torch.where(found, cw.gather(1, pick)[:, 0], torch.full_like(cw[:, 0], fw))
    top = torch.minimum(torch.floor(u_offset[:, 0] * (h - bh + 1)), h - bh)
    left = torch.minimum(torch.floor(u_offset[:, 1] * (w - bw + 1)), w - bw)
    top = torch.where(found, top, torch.full_like(top, (h - fh) // 2))
    left = torch.where(found, left, torch.full_like(left, (w - fw) // 2))
    return torch.stack([top, left, bh, bw], dim=1).to(torch.int64)


def _source_coords(start, length, out: int, flip=None) -> torch.Tensor:
    """(B, out) source pixel coordinates of bilinear resizing ``length`` pixels from
    ``start`` to ``out`` (align_corners=False, edges clamped, as F.interpolate)."""
    dev = start.device
    j = torch.arange(out, dtype=torch.float64, device=dev).view(1, out)
    if flip is not None:
        j = torch.where(flip.view(-1, 1), (out - 1) - j, j)
    length = length.to(torch.float64).view(-1, 1)
    src = ((j + 0.5) * (length / out) - 0.5).clamp(min=0.0)
    return torch.minimum(src, length - 1) + start.to(torch.float64).view(-1, 1)


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None = None,
                      size: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop each sample of a float (B, C, H, W) batch to its box ``(top, left, height,
    width)``, resize it to ``size`` (default (H, W)) bilinearly without antialiasing and
    mirror it left-right where ``flips``: torchvision's ``resized_crop(img, top, left,
    height, width, size, antialias=False)`` (+ ``hflip``) per sample, in one grid_sample."""
    b, c, h, w = x.shape
    oh, ow = size if size is not None else (h, w)
    boxes = boxes.to(x.device)
    flips = flips.to(x.device) if flips is not None else None
    sy = _source_coords(boxes[:, 0], boxes[:, 2], oh)
    sx = _source_coords(boxes[:, 1], boxes[:, 3], ow, flips)
    gy = ((2.0 * sy + 1.0) / h - 1.0).to(torch.float32)  # pixel -> grid (align_corners=False)
    gx = ((2.0 * sx + 1.0) / w - 1.0).to(torch.float32)
    grid = torch.stack([gx.view(b, 1, ow).expand(b, oh, ow), gy.view(b, oh, 1).expand(b, oh, ow)], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------ colour ops, float, per sample
def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device).view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, d: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's float ``_blend``: ``(ratio * x + (1 - ratio) * d).clamp(0, 1)``."""
    r64 = ratio.to(torch.float64)
    return (_col(r64.float(), x) * x + _col((1.0 - r64).float(), x) * d).clamp_(0.0, 1.0)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of a float batch (torchvision's weights); 1 channel: itself."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


_CONSTS: dict = {}


def _consts(device: torch.device) -> dict[str, torch.Tensor]:
    key = str(device)
    if key not in _CONSTS:
        c = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)  # noqa: E731
        # luma weights; the hue of each channel being the maximum (in sixths: R 0, G 2, B 4);
        # the phase of each output channel in the closed form of HSV -> RGB
        _CONSTS[key] = {"luma": c([0.2989, 0.587, 0.114]), "sector": c([0.0, 2.0, 4.0]), "phase": c([5.0, 3.0, 1.0])}
        # the jitter factors: lo + width * uniform (made once per device: a tensor built from
        # a list on a GPU is a host-to-device copy that waits for the stream)
        j = JITTER
        _CONSTS[key]["jitter_lo"] = torch.tensor([1 - j[0], 1 - j[1], 1 - j[2], -j[3]], device=device).view(1, 4)
        _CONSTS[key]["jitter_width"] = torch.tensor([2 * j[0], 2 * j[1], 2 * j[2], 2 * j[3]], device=device).view(1, 4)
    return _CONSTS[key]


def _hue(x: torch.Tensor, shift6: torch.Tensor) -> torch.Tensor:
    """Hue shift of a float RGB batch by ``shift6`` (B,) sixths of a turn (> -1)."""
    k = _consts(x.device)
    # torchvision's _rgb2hsv: the hue comes from the first channel (R, G, B) that is the
    # maximum; in sixths, r: (g - b) / cr, g: 2 + (b - r) / cr, b: 4 + (r - g) / cr, with
    # cr = max - min (1 where 0: grey pixels, whose hue is moot). (Not argmax: slow on CPU.)
    maxc = x.amax(dim=1, keepdim=True)
    is_max = x == maxc
    cr = maxc - x.amin(dim=1, keepdim=True)
    cand = (x.roll(-1, dims=1) - x.roll(1, dims=1)) / (cr + (cr == 0)) + k["sector"]
    hue6 = torch.where(is_max[:, 0:1], cand[:, 0:1], torch.where(is_max[:, 1:2], cand[:, 1:2], cand[:, 2:3]))
    hue6 = hue6 + shift6.view(-1, 1, 1, 1)
    # torchvision's _hsv2rgb in closed form: channel n = V - V S clamp(min(t, 4 - t), 0, 1)
    # with t = (phase_n + hue6) mod 6, V = max and V S = max - min
    t = (hue6 + k["phase"]) % 6.0
    return maxc - cr * torch.minimum(t, 4.0 - t).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift each sample's hue by ``factor`` (in [-0.5, 0.5]), as torchvision's
    ``adjust_hue`` on float images (RGB -> HSV, hue + factor mod 1, HSV -> RGB); 1 channel:
    unchanged. The hue is torchvision's ``_rgb2hsv`` one and the way back a closed form of
    its ``_hsv2rgb``: the same function in fewer ops, equal to it up to float rounding."""
    if x.shape[1] == 1:
        return x
    return _hue(x, 6.0 + 6.0 * factor.to(x.device, x.dtype))


def color_jitter(x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter per sample where ``apply``: ``factors`` (B, 4) are the brightness,
    contrast, saturation and hue factors, ``order`` (B, 4) a permutation of the op ids 0..3
    (``JITTER_OPS``) per sample, run in that order. 1-channel images: saturation and hue
    are no-ops (torchvision's ColorJitter(b, c) skips them). Other samples are unchanged.
    Loops over the 4 positions; at each, the three blend ops share one blend (ratio 1, the
    identity, for the samples whose op there is another one) and hue runs on the batch
    where it is that sample's op. ``x`` must lie in [0, 1]. Each position costs about 30
    elementwise kernels: the per-position factors and masks are computed up front."""
    dev = x.device
    apply = apply.to(dev).view(-1, 1)
    factors, order = factors.to(dev), order.to(dev, torch.int64)
    rgb = x.shape[1] == 3
    col = lambda t: t.t().contiguous().view(4, -1, 1, 1, 1)  # noqa: E731  (B, 4) -> per-position columns
    f = factors.gather(1, order)  # the factor of the op at each position
    ratio = torch.where(apply & (order < (3 if rgb else 2)), f, 1.0).to(torch.float64)
    r, q = col(ratio.float()), col((1.0 - ratio).float())  # torchvision's _blend weights
    is_con, is_sat = col((order == 1).to(x.dtype)), col(order == 2)
    hue = apply & (order == 3)
    hue_mask, shift6 = col(hue), col(torch.where(hue, 6.0 + 6.0 * f, 6.0))
    luma = _consts(dev)["luma"]
    for k in range(4):
        gray = (x * luma).sum(dim=1, keepdim=True) if rgb else x
        d = gray.mean(dim=(-3, -2, -1), keepdim=True) * is_con[k]  # brightness 0, contrast the mean
        if rgb:
            d = torch.where(is_sat[k], gray, d)
        x = torch.addcmul(q[k] * d, r[k], x).clamp_(0.0, 1.0)
        if rgb:
            x = torch.where(hue_mask[k], _hue(x, shift6[k]), x)
    return x


def random_grayscale(x: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
    """Replace the samples where ``gray`` by their luma, kept 3-channel (1 channel: no-op)."""
    if x.shape[1] == 1:
        return x
    return torch.where(_col(gray, x), rgb_to_grayscale(x).expand_as(x), x)


# --------------------------------------------------------------------------- the preset
def sample_sim(n: int, h: int, w: int, generator: torch.Generator, flip: bool = True) -> dict[str, torch.Tensor]:
    """Every random choice of SimAugment for n images of size (h, w), in a fixed order:
    ``crop`` (n, 4) boxes, ``flip`` (n,), ``jitter`` (n,) (p = 0.8), ``factors`` (n, 4)
    (brightness, contrast, saturation uniform in [0.6, 1.4], hue in [-0.1, 0.1]),
    ``order`` (n, 4) (a random permutation per sample) and ``gray`` (n,) (p = 0.2). The
    same draws whatever the channel count; 1-channel images ignore what they do not use."""
    g, dev = generator, generator.device
    # two draws (float64 for the crop, float32 for the rest), sliced: few kernel launches
    # and no host synchronisation
    uc = torch.rand((n, 2 * TRIES + 2), generator=g, device=dev, dtype=torch.float64)
    u = torch.rand((n, 11), generator=g, device=dev)
    k = _consts(dev)
    return {
        "crop": resized_crop_boxes(uc[:, :TRIES], uc[:, TRIES:2 * TRIES], uc[:, 2 * TRIES:], h, w),
        "flip": u[:, 0] < (0.5 if flip else 0.0),
        "jitter": u[:, 1] < P_JITTER,
        "factors": torch.addcmul(k["jitter_lo"], k["jitter_width"], u[:, 2:6]),
        "order": u[:, 6:10].argsort(dim=1),
        "gray": u[:, 10] < P_GRAY,
    }


def apply_sim(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """SimAugment on a float (B, C, H, W) batch in [0, 1] (C = 1 or 3) -> float in [0, 1]
    (not normalized): resized crop + flip, colour jitter, greyscale."""
    if x.shape[1] not in (1, 3):
        raise ValueError(f"the sim preset needs 1 or 3 channels, got {x.shape[1]}")
    x = resized_crop_flip(x, params["crop"], params["flip"]).clamp_(0.0, 1.0)
    x = color_jitter(x, params["jitter"], params["factors"], params["order"])
    return random_grayscale(x, params["gray"])
