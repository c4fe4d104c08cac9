"""Data: sources in their on-disk formats, the long-tailed subset, samplers, augmentation.

See docs/architecture.md for the contracts.
"""
from .augment import Cutout, MultiView, build_transform
from .build import DataBundle, build_data, has_validation, make_dataset, validation_key
from .longtail import groups, lt_counts, lt_indices
from .samplers import ClassAwareSampler
from .sources import Split

__all__ = [
    "ClassAwareSampler",
    "Cutout",
    "DataBundle",
    "MultiView",
    "Split",
    "build_data",
    "build_transform",
    "groups",
    "has_validation",
    "validation_key",
    "lt_counts",
    "lt_indices",
    "make_dataset",
]
