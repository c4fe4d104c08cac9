"""Neural-collapse report: ``compute_nc`` assembles every NC figure of one split into a
JSON-ready nested dict (sample-weighted and class-balanced variants, classifier geometry,
NC4, many/medium/few groups, per-class figures); ``cosine_matrices`` gives the K x K heat
maps; ``SUMMARY_KEYS`` / ``nc_summary`` the flat key figures; ``save_nc`` writes
nc.json and nc.npz into a run directory.

The formulas are in :mod:`.nc_formulas`, the streamed statistics in :mod:`.nc_accumulators`;
the many/medium/few groups are ``allnc.data.longtail.groups`` of the TRAINING counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..data.longtail import groups as longtail_groups
from ..rundir import NC_JSON, NC_NPZ, atomic_write_bytes, atomic_write_text
from .accuracy import GROUP_NAMES
from .nc_accumulators import ClassStats
from .nc_formulas import (
    F64,
    between_class_cov,
    check_classifier,
    cosine_matrix,
    equiangularity,
    equinorm,
    gram_etf_distance,
    json_float,
    max_angle,
    mean_cross_cosine,
    mean_pairwise_cosine,
    nc1,
    norm_ratio,
    per_class_self_duality,
    self_duality,
)

__all__ = ["compute_nc", "cosine_matrices", "nc_summary", "save_nc", "SUMMARY_KEYS"]

# group pairs of the cross-group cosines and of the norm ratios (in their report order)
_CROSS_PAIRS = (("many", "medium"), ("many", "few"), ("medium", "few"))
_RATIO_PAIRS = (("many", "few"), ("many", "medium"), ("medium", "few"))


# ===================================================================== split-wide parts
def _variant(stats: ClassStats, W: torch.Tensor, idx: torch.Tensor, class_balanced: bool) -> tuple[dict, torch.Tensor]:
    """NC1-NC3 over the present classes ``idx``, sample-weighted or class-balanced; also
    returns their centred means."""
    mu = stats.means[idx]
    if class_balanced:
        mu_g = mu.mean(0)
    else:
        n = torch.as_tensor(stats.counts, device=mu.device)[idx].to(F64)
        mu_g = (n[:, None] * mu).sum(0) / n.sum()
    M = mu - mu_g
    SW = stats.sigma_w(class_balanced)
    out = {
        "nc1": json_float(nc1(SW, M)) if SW is not None else None,
        "tr_sigma_w": json_float(torch.trace(SW)) if SW is not None else None,
        "tr_sigma_b": json_float(torch.trace(between_class_cov(M))),
        "nc2_equinorm_means": json_float(equinorm(M)),
        "nc2_equiangular_means": json_float(equiangularity(M)),
        "nc2_maxangle_means": json_float(max_angle(M)),
        "nc2_gram_means": json_float(gram_etf_distance(M)),
        "mean_cos_means": mean_pairwise_cosine(M),
        "nc3": json_float(self_duality(W[idx], M)),
    }
    return out, M


def _group_nc1(stats: ClassStats, g: int, cls: list[int], class_balanced: bool) -> Optional[float]:
    """NC1 inside group ``g`` (index into ``stats.group_names``) over its present classes."""
    if len(cls) < 2:
        return None
    mu = stats.means[cls]
    n = torch.as_tensor(stats.counts[cls], dtype=F64, device=mu.device)
    if class_balanced:
        if stats.within_cb is None:
            return None
        SW = stats.within_cb[g] / len(cls)
        mu_g = mu.mean(0)
    else:
        SW = stats.within[g] / n.sum()
        mu_g = (n[:, None] * mu).sum(0) / n.sum()
    return json_float(nc1(SW, mu - mu_g))


def _resolve_ncm(ncm) -> Optional[dict]:
    """An :class:`NCMAccumulator`'s ``result()``, or the result dict itself, or None."""
    if ncm is None:
        return None
    return ncm.result() if hasattr(ncm, "result") else ncm


@dataclass
class _ClassView:
    """K-row views of one split that the per-class and group figures read."""

    W: torch.Tensor  # K x d classifier
    M: torch.Tensor  # K x d centred means (class-balanced mu_G); NaN rows for absent classes
    present: np.ndarray  # bool (K,)
    w_norm: np.ndarray  # ||w_c||
    m_norm: np.ndarray  # ||mu_c - mu_G||
    sdual: np.ndarray  # cos(w_c, mu_c - mu_G)
    disagree: Optional[np.ndarray]  # per-class NC4 numerators from pass 2, or None
    count: Optional[np.ndarray]  # per-class sample counts from pass 2, or None

    @classmethod
    def of(cls, W: torch.Tensor, M: torch.Tensor, present: np.ndarray, ncm_res: Optional[dict]) -> "_ClassView":
        pc = ncm_res["per_class"] if ncm_res is not None else None
        return cls(W=W, M=M, present=present,
                   w_norm=W.norm(dim=1).cpu().numpy(), m_norm=M.norm(dim=1).cpu().numpy(),
                   sdual=per_class_self_duality(W, M).cpu().numpy(),
                   disagree=np.asarray(pc["disagree"], dtype=np.int64) if pc is not None else None,
                   count=np.asarray(pc["count"], dtype=np.int64) if pc is not None else None)


def _present_classes(stats: ClassStats) -> tuple[list[int], list[int], list[str]]:
    """(indices of the classes with samples, indices of the absent ones, notes so far)."""
    present = stats.present
    idx_list = np.nonzero(present)[0].tolist()
    notes = list(stats.notes)
    excluded = np.nonzero(~present)[0].tolist()
    if excluded:
        notes.append(f"{len(excluded)} classes have no sample in this split and are excluded "
                     f"from the mean-based figures")
    if len(idx_list) < 2:
        raise ValueError(f"neural-collapse metrics need at least 2 classes with samples, got {len(idx_list)}")
    return idx_list, excluded, notes


def _classifier_block(W: torch.Tensor) -> dict:
    """NC2 of the classifier rows alone (all K of them)."""
    return {
        "nc2_equinorm_w": json_float(equinorm(W)),
        "nc2_equiangular_w": json_float(equiangularity(W)),
        "nc2_maxangle_w": json_float(max_angle(W)),
        "nc2_gram_w": json_float(gram_etf_distance(W)),
        "mean_cos_w": mean_pairwise_cosine(W),
        "w_norm_mean": json_float(W.norm(dim=1).mean()),
    }


def _nc4_block(ncm_res: Optional[dict]) -> Optional[dict]:
    if ncm_res is None:
        return None
    return {k: ncm_res.get(k) for k in ("nc4", "classifier_acc", "ncm_acc", "num_samples")}


def _train_groups(stats: ClassStats, train_counts: Optional[Sequence[int]]) -> tuple[np.ndarray, Optional[dict]]:
    """(TRAINING counts, their many/medium/few groups or None when the counts are unknown)."""
    K = stats.num_classes
    tc = np.asarray(train_counts if train_counts is not None else
                    (stats.train_counts if stats.train_counts is not None else []), dtype=np.int64).reshape(-1)
    have_groups = tc.shape[0] == K
    if train_counts is not None and not have_groups:
        raise ValueError(f"train_counts has {tc.shape[0]} entries, expected {K}")
    return tc, (longtail_groups(tc) if have_groups else None)


# ============================================================ per-class and group parts
def _per_class_block(stats: ClassStats, v: _ClassView, tc: np.ndarray, groups: Optional[dict]) -> dict:
    group_name: list[Optional[str]] = [None] * stats.num_classes
    if groups:
        for g, cls in groups.items():
            for c in cls:
                group_name[c] = g
    return {
        "train_count": tc.tolist() if groups is not None else None,
        "count": stats.counts.tolist(),
        "group": group_name,
        "w_norm": [json_float(x) for x in v.w_norm],
        "means_norm": [json_float(x) for x in v.m_norm],
        "self_duality_cos": [json_float(x) for x in v.sdual],
        "nc4": ([json_float(dd / cc) if cc else None for dd, cc in zip(v.disagree, v.count)]
                if v.disagree is not None else None),
    }


def _group_entry(stats: ClassStats, v: _ClassView, g: str, cls: list[int], moments_ok: bool) -> dict:
    """The figures of one many/medium/few group (``cls``: its classes, present or not)."""
    cls_p = [c for c in cls if v.present[c]]
    entry = {
        "num_classes": len(cls),
        "present_classes": len(cls_p),
        "nc1": None,
        "nc1_class_balanced": None,
        "w_cos_mean": mean_pairwise_cosine(v.W[cls]),
        "means_cos_mean": mean_pairwise_cosine(v.M[cls_p]),
        "w_norm_mean": json_float(v.w_norm[cls].mean()) if cls else None,
        "means_norm_mean": json_float(v.m_norm[cls_p].mean()) if cls_p else None,
        "self_duality_cos_mean": json_float(v.sdual[cls_p].mean()) if cls_p else None,
        "nc4": None,
    }
    if moments_ok and g in stats.group_names:
        gi = stats.group_names.index(g)
        entry["nc1"] = _group_nc1(stats, gi, cls_p, False)
        entry["nc1_class_balanced"] = _group_nc1(stats, gi, cls_p, True)
    if v.disagree is not None and cls:
        nn_ = int(v.count[cls].sum())
        entry["nc4"] = int(v.disagree[cls].sum()) / nn_ if nn_ else None
    return entry


def _groups_block(stats: ClassStats, v: _ClassView, tc: np.ndarray, groups: Optional[dict],
                  notes: list[str]) -> Optional[dict]:
    """Per-group figures, cross-group cosines and norm ratios; ``None`` without groups.
    Appends to ``notes`` what could not be computed."""
    if groups is None:
        notes.append("no training counts: the many/medium/few figures are not computed")
        return None
    moments_ok = stats.train_counts is not None and np.array_equal(stats.train_counts, tc)
    if not moments_ok:
        notes.append("the accumulator was not given these training counts: NC1 inside "
                     "groups not computed (pass train_counts to ClassStatsAccumulator)")
    block: dict[str, Any] = {g: _group_entry(stats, v, g, groups[g], moments_ok) for g in GROUP_NAMES}
    rows = {g: groups[g] for g in GROUP_NAMES}  # W rows: all classes of the group
    mrows = {g: [c for c in groups[g] if v.present[c]] for g in GROUP_NAMES}  # mean rows: present ones
    block["cross"] = {
        f"{a}-{b}": {"w_cos_mean": mean_cross_cosine(v.W[rows[a]], v.W[rows[b]]),
                     "means_cos_mean": mean_cross_cosine(v.M[mrows[a]], v.M[mrows[b]])}
        for a, b in _CROSS_PAIRS
    }
    ratios = {}
    for a, b in _RATIO_PAIRS:
        ratios[f"w_{a}_over_{b}"] = norm_ratio(v.W[rows[a]], v.W[rows[b]])
        ratios[f"means_{a}_over_{b}"] = norm_ratio(v.M[mrows[a]], v.M[mrows[b]])
    block["norm_ratios"] = ratios
    return block


# ========================================================================= compute_nc
@torch.no_grad()
def compute_nc(stats: ClassStats, W, b=None, train_counts: Optional[Sequence[int]] = None,
               ncm=None) -> dict:
    """All NC figures of one split, as a JSON-ready nested dict.

    ``stats``: pass-1 :class:`ClassStats`; ``W``: K x d classifier (``b`` is recorded only:
    NC1-NC3 do not use it; NC4 takes it through ``ncm``); ``train_counts``: TRAINING counts
    for the many/medium/few groups (default: the ones the accumulator got);
    ``ncm``: an :class:`NCMAccumulator` or its ``result()``, for NC4.

    Layout (see docs/metrics.md for every formula)::

        {"info": {num_classes, present_classes, num_samples, dim, excluded_classes, notes, has_bias},
         "sample_weighted": {nc1, tr_sigma_w, tr_sigma_b, nc2_equinorm_means,
                             nc2_equiangular_means, nc2_maxangle_means, nc2_gram_means,
                             mean_cos_means, nc3},
         "class_balanced":  {same keys},
         "classifier": {nc2_equinorm_w, nc2_equiangular_w, nc2_maxangle_w, nc2_gram_w,
                        mean_cos_w, w_norm_mean},
         "nc4": {nc4, classifier_acc, ncm_acc, num_samples} | None,
         "groups": {"many"|"medium"|"few": {num_classes, present_classes, nc1, nc1_class_balanced,
                                            w_cos_mean, means_cos_mean, w_norm_mean,
                                            means_norm_mean, self_duality_cos_mean, nc4},
                    "cross": {"many-medium"|"many-few"|"medium-few": {w_cos_mean, means_cos_mean}},
                    "norm_ratios": {w_many_over_few, means_many_over_few, w_many_over_medium,
                                    means_many_over_medium, w_medium_over_few,
                                    means_medium_over_few}} | None,
         "per_class": {train_count, count, group, w_norm, means_norm, self_duality_cos, nc4}}

    Classes absent from the split are excluded from every mean-based figure (listed in
    ``info.excluded_classes``); classifier-only figures use all K rows of W. Group and
    per-class figures centre the means with the class-balanced mu_G.
    """
    K, d = stats.num_classes, stats.dim
    dev = stats.means.device
    W = check_classifier(W, K, d).to(dev)
    idx_list, excluded, notes = _present_classes(stats)
    idx = torch.as_tensor(idx_list, dtype=torch.int64, device=dev)
    sw, _ = _variant(stats, W, idx, class_balanced=False)
    cb, M_cb_present = _variant(stats, W, idx, class_balanced=True)
    # centred means (class-balanced mu_G) for all K classes; NaN rows for absent ones
    M_cb = torch.full((K, d), float("nan"), dtype=F64, device=dev)
    M_cb[idx] = M_cb_present
    ncm_res = _resolve_ncm(ncm)
    view = _ClassView.of(W, M_cb, stats.present, ncm_res)
    tc, groups = _train_groups(stats, train_counts)
    per_class = _per_class_block(stats, view, tc, groups)
    groups_block = _groups_block(stats, view, tc, groups, notes)
    info = {
        "num_classes": K,
        "present_classes": len(idx_list),
        "num_samples": stats.num_samples,
        "dim": d,
        "excluded_classes": excluded,
        "has_bias": b is not None,
        "notes": notes,
    }
    return {"info": info, "sample_weighted": sw, "class_balanced": cb, "classifier": _classifier_block(W),
            "nc4": _nc4_block(ncm_res), "groups": groups_block, "per_class": per_class}


@torch.no_grad()
def cosine_matrices(stats: ClassStats, W) -> dict[str, np.ndarray]:
    """K x K float64 cosine matrices for heat maps (saved to .npz, not JSON).

    ``means_cos``[c, c'] = cos(mu_c - mu_G, mu_c' - mu_G) (class-balanced mu_G);
    ``w_cos``[c, c'] = cos(w_c, w_c'); ``cross_cos``[c, c'] = cos(mu_c - mu_G, w_c')
    (its diagonal is the per-class self-duality). Rows/columns of classes absent from the
    split are NaN in the mean-based matrices. Classes are in index order.
    """
    K, d = stats.num_classes, stats.dim
    dev = stats.means.device
    W = check_classifier(W, K, d).to(dev)
    present = torch.as_tensor(stats.present, device=dev)
    M = torch.full((K, d), float("nan"), dtype=F64, device=dev)
    mu = stats.means[present]
    M[present] = mu - mu.mean(0)
    return {
        "means_cos": cosine_matrix(M).cpu().numpy(),
        "w_cos": cosine_matrix(W).cpu().numpy(),
        "cross_cos": cosine_matrix(M, W).cpu().numpy(),
    }


# ============================================================ summaries and files
# Flat key figures: name -> path in compute_nc's dict. Used for per-epoch logging
# (metrics.jsonl "nc"), curves and tables.
SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "nc1": ("sample_weighted", "nc1"),
    "nc1_cb": ("class_balanced", "nc1"),
    "nc2_equinorm_means": ("sample_weighted", "nc2_equinorm_means"),
    "nc2_equinorm_means_cb": ("class_balanced", "nc2_equinorm_means"),
    "nc2_equinorm_w": ("classifier", "nc2_equinorm_w"),
    "nc2_equiangular_means": ("sample_weighted", "nc2_equiangular_means"),
    "nc2_equiangular_means_cb": ("class_balanced", "nc2_equiangular_means"),
    "nc2_equiangular_w": ("classifier", "nc2_equiangular_w"),
    "nc2_maxangle_means_cb": ("class_balanced", "nc2_maxangle_means"),
    "nc2_maxangle_w": ("classifier", "nc2_maxangle_w"),
    "nc2_gram_means_cb": ("class_balanced", "nc2_gram_means"),
    "nc2_gram_w": ("classifier", "nc2_gram_w"),
    "nc3": ("sample_weighted", "nc3"),
    "nc3_cb": ("class_balanced", "nc3"),
    "nc4": ("nc4", "nc4"),
    "many_w_cos": ("groups", "many", "w_cos_mean"),
    "medium_w_cos": ("groups", "medium", "w_cos_mean"),
    "few_w_cos": ("groups", "few", "w_cos_mean"),
    "many_means_cos": ("groups", "many", "means_cos_mean"),
    "medium_means_cos": ("groups", "medium", "means_cos_mean"),
    "few_means_cos": ("groups", "few", "means_cos_mean"),
    "few_nc1_cb": ("groups", "few", "nc1_class_balanced"),
    "w_norm_ratio_many_few": ("groups", "norm_ratios", "w_many_over_few"),
    "means_norm_ratio_many_few": ("groups", "norm_ratios", "means_many_over_few"),
    "w_norm_ratio_many_medium": ("groups", "norm_ratios", "w_many_over_medium"),
    "means_norm_ratio_many_medium": ("groups", "norm_ratios", "means_many_over_medium"),
}


def nc_summary(nc: dict) -> dict[str, Optional[float]]:
    """The flat key figures (``SUMMARY_KEYS``) of a ``compute_nc`` dict; missing -> None.
    A dict that is already flat (has no "sample_weighted") is returned filtered as is."""
    if "sample_weighted" not in nc:
        return {k: nc.get(k) for k in SUMMARY_KEYS if k in nc}
    out = {}
    for name, path in SUMMARY_KEYS.items():
        v: Any = nc
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        out[name] = v if isinstance(v, (int, float)) else None
    return out


def save_nc(run_dir, nc_by_split: dict[str, dict], cos_by_split: Optional[dict[str, dict]] = None) -> Path:
    """Write RUN_DIR/nc.json = {split: compute_nc(...)} and RUN_DIR/nc.npz with keys
    "<split>_means_cos", "<split>_w_cos", "<split>_cross_cos" (from ``cosine_matrices``),
    each atomically (``allnc.rundir``). Returns the path of nc.json."""
    run_dir = Path(run_dir)
    path = run_dir / NC_JSON
    atomic_write_text(path, json.dumps(nc_by_split, indent=1, allow_nan=False))
    if cos_by_split:
        arrays = {f"{split}_{k}": np.asarray(v) for split, mats in cos_by_split.items() for k, v in mats.items()}
        atomic_write_bytes(run_dir / NC_NPZ, lambda f: np.savez_compressed(f, **arrays))
    return path
