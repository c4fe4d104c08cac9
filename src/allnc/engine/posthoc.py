"""Post-hoc corrections of a finished run's classifier: tau chosen on a balanced validation
split, the test set read once, after the choice.

- ``tau_norm`` (Kang et al., ICLR 2020, "Decoupling representation and classifier for
  long-tailed recognition"): every class vector ``w_k <- w_k / ||w_k||^tau``, logits
  ``h . w_k / ||w_k||^tau``. The bias is dropped, as in the paper's tau-normalised classifier,
  so tau = 0 is the run's classifier without its bias. A cosine (``normed``) classifier
  normalises every ``w_k`` itself, and rows of equal norm (the fixed ETF's unit rows) only scale
  all logits alike: tau-norm is then the identity, and the result says so (grid: tau = 0 only).
- ``logit_adjust`` (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment"):
  ``logits - tau * log(prior)``, prior = the run's training class frequencies; any classifier;
  tau = 0 is the run's model.
- ``inference_mix`` (two-branch runs: GBBN, BBN, AllNC): the mix a of
  ``W s [a h_c ; (1 - a) h_r] + b``, chosen from ``MIX_GRID`` by the rule of
  ``method.gbbn.inference_mix=val`` (ties to the a nearest 0.5), for a run trained without a
  validation split. The result's ``tau`` is that a (``parameter`` says which it is).

The validation split is the run's own (``data.val_per_class`` or a list file's
``data.val_list`` when it was trained) or else one drawn by the same rule (``val_split``) with
``val_per_class`` images per class; for classes whose left-out images are too few that split
takes images the run trained on (the result names them). A list-file run without one takes a
validation list (``val_list``): list files are long-tailed as given, no split can be drawn.
Features are computed once per split (``method.features``) and the corrected logits from them
with ``method.classifier_weight()``; ties in validation top-1 go to the smaller tau (the lesser
correction).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import loaders
from ..config import from_dict, set_key, to_dict
from ..data import build_data
from ..data.sources import load_list_split
from ..errors import ConfigError, DataError
from ..methods.gbbn import MIX_GRID, choose_mix
from ..metrics import AccuracyAccumulator, expected_calibration_error
from ..models.heads import NormedLinear
from ..registry import Registry
from ..rundir import METRICS, POSTHOC, RunLock, atomic_write_json, read_json
from .context import RunContext, load_run
from .evaluate import autocast_ctx

#: method -> (tau grid, the row name a results table would show)
CORRECTIONS = Registry("post-hoc correction")
CORRECTIONS.register("tau_norm")(([round(0.1 * i, 1) for i in range(21)], "tau-norm (post hoc)"))
CORRECTIONS.register("logit_adjust")(([0.25 * i for i in range(13)], "post-hoc LA"))
CORRECTIONS.register("inference_mix")((MIX_GRID, "mix on validation (post hoc)"))
DEFAULT_VAL_PER_CLASS = 20
KEEP = ("top1", "class_mean", "groups", "group_sizes", "per_class", "num_samples")


def tau_normalised(W: torch.Tensor, tau: float) -> torch.Tensor:
    """Rows ``w_k / ||w_k||^tau`` (Kang et al. 2020)."""
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)


def corrected_logits(h: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor], method: str, tau: float,
                     log_prior: Optional[torch.Tensor] = None, cosine_scale: Optional[float] = None) -> torch.Tensor:
    """Logits of features ``h`` (N x d) under the corrected classifier. ``cosine_scale``:
    None for a linear head (``h W^T + b``), s for a cosine head (``s cos(h, w_k)``, no bias)."""
    if method == "tau_norm":
        W, b = tau_normalised(W, tau), None
    if cosine_scale is None:
        z = h @ W.t() + (b if b is not None else 0.0)
    else:
        z = cosine_scale * (F.normalize(h, dim=1) @ F.normalize(W, dim=1).t())
    if method == "logit_adjust":
        z = z - tau * log_prior
    return z


def cosine_logit_scale(method) -> Optional[float]:
    """None for a linear head; for a cosine head the s of ``s cos(h, w_k)`` in the units the
    training loss saw: the head's own scale times the loss's (LDAM's s lives in its loss)."""
    clf = getattr(method, "classifier", None)
    if not isinstance(clf, NormedLinear):
        return None
    return float(clf.scale) * float(method.loss_logit_scale())


def choose_tau(val_top1: dict[float, float]) -> float:
    """The tau with the best validation top-1; ties go to the smaller tau."""
    best = max(val_top1.values())
    return min(t for t, a in val_top1.items() if a == best)


def _accuracy(z: torch.Tensor, y: torch.Tensor, counts) -> dict:
    acc = AccuracyAccumulator(z.shape[1], confusion=False, device=z.device)
    acc.update(z, y)
    r = acc.result(counts)
    return {k: r[k] for k in KEEP}


@torch.no_grad()
def _features(ctx: RunContext, bundle, choice, split: str, branches: bool = False):
    """(features, labels, (features, logits) of the first batch) of a split: one pass. With
    ``branches`` the features are the pair (h_c, h_r) of a two-branch method."""
    hs, ys, first = [], [], None
    for x, y in loaders.iter_eval(ctx.cfg, bundle, split, choice, ctx.device, shard=False):
        with autocast_ctx(ctx.device, ctx.amp):
            x = ctx.prep(x)
            if branches:
                h = tuple(t.float() for t in ctx.method.branch_features(x))
                z = ctx.method.features(x)[1] if first is None else None
            else:
                h, z = ctx.method.features(x)
                h = h.float()
        if first is None:
            first = (h, z.float())
        hs.append(h)
        ys.append(y)
    h = tuple(torch.cat(p) for p in zip(*hs)) if branches else torch.cat(hs)
    return h, torch.cat(ys), first


def _validation(ctx: RunContext, val_per_class: Optional[int], notes: list[str], val_list: Optional[str] = None):
    """(bundle, data path, description) whose ``val`` is the split tau is chosen on."""
    if val_per_class is not None and int(val_per_class) < 1:
        raise ConfigError(f"--val-per-class {val_per_class}: tau is chosen on a validation split; give at least 1 "
                          f"image per class (or leave the option out: {DEFAULT_VAL_PER_CLASS})")
    listfile = ctx.cfg.data.name == "listfile"
    if val_list and not listfile:
        raise ConfigError(f"--val-list names the validation list of a list-file run; this run's data are "
                          f"data.name={ctx.cfg.data.name}: leave it out (a split is drawn, --val-per-class)")
    if ctx.bundle.val is not None:
        own = int(ctx.cfg.data.val_per_class or 0)
        given = [f"--val-per-class {val_per_class}"] if val_per_class and int(val_per_class) != own else []
        given += [f"--val-list {val_list}"] if val_list and val_list != ctx.cfg.data.get("val_list") else []
        if given:
            notes.append(f"{' and '.join(given)} ignored: the run has its own validation split")
        if own:
            return ctx.bundle, ctx.choice, {"source": "the run's own (data.val_per_class)", "per_class": own,
                                            "trained_on": {}}
        return ctx.bundle, ctx.choice, {"source": f"the run's own (data.val_list={ctx.cfg.data.val_list})",
                                        "per_class": None, "trained_on": {}}
    if listfile:
        if not val_list:
            raise ConfigError("the run's list-file data have no validation split, and none can be drawn from them (list "
                              "files are long-tailed as given); give one with --val-list FILE (a 'relative/path label' "
                              "list, relative to data.root, such as ImageNet_LT_val.txt)")
        d, tr = ctx.cfg.data, ctx.bundle.train
        # only the list is read, prepared as the run's training images (not the whole data set again)
        val = load_list_split(d.root, val_list, ctx.bundle.classes, tr.mode, tr.in_memory, d.cache_dir, d.small_size,
                              trained_on=f"the run's data.train_list {d.train_list}")
        bundle = dataclasses.replace(ctx.bundle, val=val)
        choice = loaders.PipelineChoice(ctx.choice.fast, ctx.choice.reason)
        return bundle, choice, {"source": f"--val-list {val_list} (the run had none)", "per_class": None,
                                "trained_on": {}}
    cfg = from_dict(to_dict(ctx.cfg))
    n = int(DEFAULT_VAL_PER_CLASS if val_per_class is None else val_per_class)
    set_key(cfg, "data.val_per_class", n, "--val-per-class")
    try:
        drawn = build_data(cfg)
    except (ConfigError, DataError) as e:  # the split's key is this command's option here
        why = str(e).replace("lower data.val_per_class", f"lower --val-per-class (now {n})")
        raise type(e)(f"post-hoc correction needs a balanced validation split, but: {why}") from None
    moved = {int(c): int(k) for c, k in (drawn.val_moved or {}).items()}
    if moved:
        notes.append(f"the run had no validation split; the one drawn (data.val_per_class={n}) takes "
                     f"{sum(moved.values())} images the run trained on, for the {len(moved)} class(es) with too few "
                     f"left-out images ({', '.join(map(str, sorted(moved)))}): their validation accuracy is optimistic")
    bundle = dataclasses.replace(ctx.bundle, val=drawn.val)
    choice = loaders.PipelineChoice(ctx.choice.fast, ctx.choice.reason)  # its own device copy of the new split
    return bundle, choice, {"source": f"drawn with data.val_per_class={n} (the run had none)", "per_class": n,
                            "trained_on": moved}


def _run_figures(run_dir: Path) -> Optional[dict]:
    """The run's own test figures from its metrics.json (None where it has none)."""
    if not (run_dir / METRICS).is_file():
        return None
    m = read_json(run_dir / METRICS, "the run's final metrics")
    if not m.get("test_evaluated", "top1" in m) or m.get("top1") is None:
        return None
    return {"top1": m["top1"], "groups": m.get("groups")}


def posthoc(run_dir, method: str, device: str = "auto", val_per_class: Optional[int] = None,
            overrides=(), val_list: Optional[str] = None) -> dict:
    """Correct a run's classifier with ``method`` (tau_norm | logit_adjust | inference_mix),
    choose tau on a balanced validation split, read the test set once, write
    RUN_DIR/posthoc_<method>.json (atomically) and return what it holds."""
    grid, row = CORRECTIONS.get(method)  # unknown names: a one-line error with the closest name
    run_dir = Path(run_dir)
    ctx = load_run(run_dir, device=device, overrides=overrides)
    with RunLock(run_dir):
        ctx.method.eval()
        counts = np.asarray(ctx.bundle.class_counts)
        notes: list[str] = []
        mix = method == "inference_mix"
        corr = _mix_correction(ctx, run_dir, notes) if mix else _classifier_correction(ctx, run_dir, method, counts, notes)
        grid = corr.get("grid", grid)
        choose = choose_mix if mix else choose_tau  # looked up now: a test may stand in for either
        vbundle, vchoice, vinfo = _validation(ctx, val_per_class, notes, val_list)
        hv, yv, first = _features(ctx, vbundle, vchoice, "val", branches=mix)
        if not torch.allclose(corr["same"](first[0]), first[1], rtol=5e-2 if ctx.amp else 1e-3,
                              atol=5e-2 if ctx.amp else 1e-3):
            raise ConfigError(f"method '{ctx.cfg.method.name}': {corr['mismatch']}")
        logits = corr["logits"]
        val_top1 = {float(t): _accuracy(logits(hv, t), yv, counts)["top1"] for t in grid}
        tau = choose(val_top1)
        ht, yt, _ = _features(ctx, ctx.bundle, ctx.choice, "test", branches=mix)  # the one read of the test set
        zt = logits(ht, tau).float()
        out = {
            "method": method,
            "row": row,
            "parameter": "a" if mix else "tau",
            "tau": tau,
            "tau_grid": [float(t) for t in grid],
            "val_top1_by_tau": {f"{t:g}": a for t, a in val_top1.items()},
            "val_top1": val_top1[tau],
            **corr.get("extra", {}),
            "validation": vinfo,
            # the corrected classifier's calibration too: tau-norm and LA move the logits' scale and offsets
            "test": {**_accuracy(zt, yt, counts), "ece": expected_calibration_error(torch.softmax(zt, dim=1), yt)},
            "run_test": _run_figures(run_dir),
            "notes": notes,
            "checkpoint_epoch": ctx.ckpt_epoch,
            "data": ctx.bundle.label,
            "class_counts": [int(c) for c in counts],
        }
        atomic_write_json(run_dir / POSTHOC.format(method=method), out)
    return out


def _classifier_correction(ctx: RunContext, run_dir: Path, method: str, counts, notes: list[str]) -> dict:
    """tau-norm or logit adjustment: logits from the features and ``classifier_weight()``;
    ``same`` rebuilds the run's own logits (tau 0 of logit adjustment)."""
    try:
        W, b = ctx.method.classifier_weight()
    except (NotImplementedError, AttributeError):
        W = None
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ConfigError(f"method '{ctx.cfg.method.name}' of {run_dir} exposes no classifier weight (K x d); "
                          "post-hoc corrections need one")
    W = W.detach().float()
    b = None if b is None else b.detach().float()
    scale = cosine_logit_scale(ctx.method)
    log_prior = torch.log(torch.as_tensor(counts / counts.sum(), dtype=torch.float32, device=W.device).clamp_min(1e-12))
    c: dict = {}
    if method == "tau_norm":
        norms = W.norm(dim=1)
        if scale is not None or float(norms.max() / norms.min().clamp_min(1e-12)) - 1 < 1e-5:
            why = ("a cosine classifier normalises every w_k itself" if scale is not None
                   else "every w_k has the same norm (a fixed ETF has unit rows), so tau scales all logits alike")
            notes.append(f"tau-norm is the identity here: {why}; no tau is searched (tau = 0)")
            c["grid"] = [0.0]
        if b is not None and scale is None:
            notes.append("the classifier's bias is dropped, as in Kang et al.'s tau-norm: tau = 0 is the run's "
                         "classifier without its bias")
    c["logits"] = lambda h, tau: corrected_logits(h, W, b, method, tau, log_prior, scale)
    # the model's outputs come before the loss's own factor (LDAM's s; 1 elsewhere)
    c["same"] = lambda h: corrected_logits(h, W, b, "logit_adjust", 0.0, log_prior, scale) / ctx.method.loss_logit_scale()
    c["mismatch"] = ("its logits are not its classifier_weight() applied to its features(); post-hoc corrections "
                     "cannot be computed from them")
    return c


def _mix_correction(ctx: RunContext, run_dir: Path, notes: list[str]) -> dict:
    """The inference mix a of a two-branch run: logits ``mixed_logits(h_c, h_r, a)`` of both
    branches' features; ``same`` rebuilds the run's own logits (its own a)."""
    if not hasattr(ctx.method, "mixed_logits"):
        raise ConfigError(f"post-hoc inference_mix chooses the mix of a two-branch run (gbbn: BBN, AllNC); method "
                          f"'{ctx.cfg.method.name}' of {run_dir} has one branch: use --method tau_norm or logit_adjust")
    own = float(ctx.method.infer_alpha)
    if ctx.method.inference_mix == "val":
        notes.append(f"the run chose its mix on its own validation split already (a = {own:g})")
    return {"logits": lambda h, a: ctx.method.mixed_logits(*h, a), "same": lambda h: ctx.method.mixed_logits(*h, own),
            "mismatch": "its logits are not mixed_logits() of its branch_features(); the mix cannot be chosen from them",
            "extra": {"run_mix": own}}
