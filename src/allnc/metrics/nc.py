"""Neural-collapse (NC) diagnostics, one import for all of them.

The code lives in three modules; this one re-exports their public names:

* :mod:`.nc_formulas` -- pure functions of tensors (NC1..NC4, equinorm, equiangularity,
  Gram/ETF distance, self-duality, cosine matrices);
* :mod:`.nc_accumulators` -- the streamed statistics: ``ClassStatsAccumulator`` (pass 1,
  -> ``ClassStats``) and ``NCMAccumulator`` (pass 2, NC4), with their all-reduce;
* :mod:`.nc_report` -- ``compute_nc`` (the report dict of one split), ``cosine_matrices``,
  ``SUMMARY_KEYS`` / ``nc_summary`` and ``save_nc``.

Definitions follow docs/reference.md and are written out, with sources, in docs/metrics.md.
"""
from __future__ import annotations

from .nc_accumulators import ClassStats, ClassStatsAccumulator, NCMAccumulator
from .nc_formulas import (
    between_class_cov,
    cosine_matrix,
    equiangularity,
    equinorm,
    gram_etf_distance,
    max_angle,
    mean_cross_cosine,
    mean_pairwise_cosine,
    nc1,
    nc4,
    norm_ratio,
    per_class_self_duality,
    self_duality,
)
from .nc_report import SUMMARY_KEYS, compute_nc, cosine_matrices, nc_summary, save_nc

__all__ = [
    "ClassStats", "ClassStatsAccumulator", "NCMAccumulator",
    "between_class_cov", "nc1", "equinorm", "cosine_matrix", "equiangularity", "max_angle",
    "gram_etf_distance", "self_duality", "per_class_self_duality", "mean_pairwise_cosine",
    "mean_cross_cosine", "norm_ratio", "nc4", "compute_nc", "cosine_matrices", "nc_summary",
    "save_nc", "SUMMARY_KEYS",
]
