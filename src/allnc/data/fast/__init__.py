"""The device-resident fast data path: the whole split as one uint8 tensor on the device,
batched per-sample augmentation and a loader that gathers batches by index.

Everything here is plain torch and takes the device as a parameter, so the same code runs
on CPU (tests) and CUDA (training). Every random choice comes from an explicit
``torch.Generator`` on the device, so a run is reproducible and a resumed run sees the same
batches. See docs/fast_path.md for how the batched pipeline corresponds to the
conventional torchvision one.

Modules: ``images`` (DeviceImages, eval_batches), ``ops`` (the batched building blocks),
``autoaugment`` (the CIFAR-10 policy, apply_op, autoaugment), ``sim`` (SimAugment's batched
crop, colour jitter and greyscale), ``augment`` (BatchAugment,
FAST_PRESETS), ``loader`` (FastLoader, fast_path_applicable).
"""
from .augment import FAST_PRESETS, BatchAugment, slice_params
from .autoaugment import CIFAR10_POLICY, apply_op, autoaugment, magnitude_bins
from .images import DeviceImages, eval_batches
from .loader import FastLoader, fast_path_applicable, mix_seed
from .sim import color_jitter, random_grayscale, resized_crop_boxes, resized_crop_flip
from .ops import (
    OPS,
    affine_batch,
    crop_flip,
    cutout,
    cutout_mask,
    geometric_matrices,
    normalize,
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

__all__ = [
    "DeviceImages",
    "BatchAugment",
    "FastLoader",
    "mix_seed",
    "eval_batches",
    "fast_path_applicable",
    "normalize",
    "crop_flip",
    "cutout",
    "cutout_mask",
    "autoaugment",
    "apply_op",
    "geometric_matrices",
    "affine_batch",
    "magnitude_bins",
    "slice_params",
    "resized_crop_boxes",
    "resized_crop_flip",
    "color_jitter",
    "random_grayscale",
    "CIFAR10_POLICY",
    "OPS",
    "FAST_PRESETS",
    "op_autocontrast",
    "op_brightness",
    "op_color",
    "op_contrast",
    "op_equalize",
    "op_invert",
    "op_posterize",
    "op_sharpness",
    "op_solarize",
]
