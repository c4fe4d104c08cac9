"""RandAugment in the form BCL's and PaCo's released ImageNet-LT code uses (``rand-n2-m10-mstd0.5``).

That form differs from torchvision's ``T.RandAugment`` (which applies every drawn operation, at
a fixed magnitude, from another operation list), so it is written out here. Per image:

1. draw ``n`` operations uniformly, with replacement, from the 15 of ``OPS``;
2. apply each with probability ``p`` (0.5), at a level drawn from N(``m``, ``mstd``) and
   clipped to [0, 10] (a fresh draw per operation);
3. signed operations (rotate, shear, translate) take the opposite sign with probability 0.5;
   geometric ones fill the uncovered pixels with ``fill`` (the dataset's mean colour) and
   resample bilinearly or bicubically, at random.

Level l in [0, 10] to argument (``op_argument``):

| operation | argument |
|---|---|
| AutoContrast, Equalize, Invert | none |
| Rotate | +-30 l / 10 degrees |
| Posterize | int(4 l / 10) bits kept |
| Solarize | threshold int(256 l / 10): pixels at or above it inverted |
| SolarizeAdd | int(110 l / 10) added to pixels below 128, capped at 255 |
| Color, Contrast, Brightness, Sharpness | enhancement factor 0.1 + 1.8 l / 10 (1 = unchanged) |
| ShearX, ShearY | +-0.3 l / 10 |
| TranslateXRel, TranslateYRel | +-0.45 l / 10 of the width / height |

Every draw comes from torch's generator (as torchvision's transforms), so the DataLoader's
per-worker seeding makes a seeded run repeat.
"""
from __future__ import annotations

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
       "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})
_ENHANCE = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast, "Brightness": ImageEnhance.Brightness,
            "Sharpness": ImageEnhance.Sharpness}
_RESAMPLE = (Image.BILINEAR, Image.BICUBIC)


def op_argument(name: str, level: float) -> float | int | None:
    """The argument of operation ``name`` at ``level`` in [0, 10], before any sign flip."""
    f = level / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return 30.0 * f
    if name == "Posterize":
        return int(4 * f)
    if name == "Solarize":
        return int(256 * f)
    if name == "SolarizeAdd":
        return int(110 * f)
    if name in _ENHANCE:
        return 0.1 + 1.8 * f
    if name in ("ShearX", "ShearY"):
        return 0.3 * f
    if name in ("TranslateXRel", "TranslateYRel"):
        return 0.45 * f
    raise ValueError(f"unknown RandAugment operation {name!r}; one of {', '.join(OPS)}")


def _fill_for(img: Image.Image, fill: tuple[int, ...]):
    return fill[0] if img.mode == "L" else tuple(fill)


def apply_op(img: Image.Image, name: str, arg, fill: tuple[int, ...] = (128, 128, 128),
             resample=Image.BILINEAR) -> Image.Image:
    """Operation ``name`` with its (signed) argument ``arg`` on a PIL image (mode L or RGB)."""
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Posterize":
        return img if arg >= 8 else ImageOps.posterize(img, int(arg))
    if name == "Solarize":
        return ImageOps.solarize(img, int(arg))
    if name == "SolarizeAdd":
        lut = [min(255, v + int(arg)) if v < 128 else v for v in range(256)]
        return img.point(lut * len(img.getbands()))
    if name in _ENHANCE:
        return _ENHANCE[name](img).enhance(float(arg))
    geo = {"fillcolor": _fill_for(img, fill), "resample": resample}
    if name == "Rotate":
        return img.rotate(float(arg), **geo)
    w, h = img.size
    matrix = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * w, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * h)}.get(name)
    if matrix is None:
        raise ValueError(f"unknown RandAugment operation {name!r}; one of {', '.join(OPS)}")
    return img.transform(img.size, Image.AFFINE, matrix, **geo)


class RandAugmentMstd:
    """RandAugment with per-operation probability and magnitude noise (module docstring)."""

    def __init__(self, n: int = 2, m: float = 10.0, mstd: float = 0.5, p: float = 0.5,
                 fill: tuple[int, ...] = (128, 128, 128), ops: tuple[str, ...] = OPS):
        if n < 0 or not 0 <= m <= MAX_LEVEL or mstd < 0 or not 0 <= p <= 1:
            raise ValueError(f"RandAugment needs n >= 0, 0 <= m <= 10, mstd >= 0, 0 <= p <= 1; got {n}, {m}, {mstd}, {p}")
        for name in ops:
            op_argument(name, 0.0)  # an unknown name fails here
        self.n, self.m, self.mstd, self.p = int(n), float(m), float(mstd), float(p)
        self.fill = tuple(int(v) for v in fill)
        self.ops = tuple(ops)

    def draw_level(self) -> float:
        level = self.m + self.mstd * float(torch.randn(()).item()) if self.mstd > 0 else self.m
        return min(MAX_LEVEL, max(0.0, level))

    def __call__(self, img: Image.Image) -> Image.Image:
        for i in torch.randint(len(self.ops), (self.n,)).tolist():
            if float(torch.rand(()).item()) >= self.p:
                continue
            name = self.ops[i]
            arg = op_argument(name, self.draw_level())
            if name in SIGNED and float(torch.rand(()).item()) < 0.5:
                arg = -arg
            resample = _RESAMPLE[int(torch.randint(2, ()).item())]
            img = apply_op(img, name, arg, self.fill, resample)
        return img

    def __repr__(self) -> str:
        return f"RandAugmentMstd(n={self.n}, m={self.m:g}, mstd={self.mstd:g}, p={self.p:g}, ops={len(self.ops)})"


def mean_fill(mean: tuple[float, ...]) -> tuple[int, ...]:
    """The fill colour of the geometric operations: the normalisation mean in 0-255."""
    return tuple(min(255, int(round(255 * v))) for v in mean)


__all__ = ["MAX_LEVEL", "OPS", "RandAugmentMstd", "apply_op", "mean_fill", "op_argument"]
