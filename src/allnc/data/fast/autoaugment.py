"""Batched AutoAugment (CIFAR-10 policy): the policy and its magnitude tables, ``apply_op``
(one op on a whole batch) and ``autoaugment`` (two policy stages per sample, grouped by op).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .ops import (
    _N_GEOM,
    _OP_ID,
    OPS,
    affine_batch,
    geometric_matrices,
    op_autocontrast,
    op_brightness,
    op_color,
    op_contrast,
    op_equalize,
    op_invert,
    op_posterize,
    op_sharpness,
    op_solarize,
)

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
