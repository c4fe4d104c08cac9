"""Metrics: accuracy (top-1, many/medium/few groups, per class, confusion), calibration (ECE)
and neural-collapse diagnostics (see docs/metrics.md)."""
from .accuracy import (GROUP_NAMES, AccuracyAccumulator, error_summary, group_classes, group_confusion, group_of,
                       headward_errors)
from .calibration import CalibrationAccumulator, expected_calibration_error
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
    "GROUP_NAMES", "AccuracyAccumulator", "error_summary", "group_classes", "group_confusion", "group_of",
    "headward_errors", "CalibrationAccumulator", "expected_calibration_error",
    "SUMMARY_KEYS", "ClassStats", "ClassStatsAccumulator", "NCMAccumulator",
    "between_class_cov", "compute_nc", "cosine_matrices", "cosine_matrix", "equiangularity",
    "equinorm", "gram_etf_distance", "max_angle", "mean_cross_cosine", "mean_pairwise_cosine",
    "nc1", "nc4", "nc_summary", "norm_ratio", "per_class_self_duality", "save_nc",
    "self_duality",
]
