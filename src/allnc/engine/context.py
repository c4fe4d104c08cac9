"""A run's context: the config, the data, the method on its device, the data path and the
precision: what training, evaluation, the NC metrics and the diagnostics all need. Built
from a config (``RunContext.build``) or restored from a run directory (``load_run``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import dist
from ..config import ModelConfig, flatten, from_dict, override, set_key, to_dict
from ..data import DataBundle, build_data
from ..errors import ConfigError, DataError, RunDirError
from ..methods import DataInfo, Method, build_method
from ..models import FIXED_TRUNK, count_parameters
from ..rundir import CHECKPOINT, METRICS, read_json
from .checkpoint import load_checkpoint
from .loaders import PipelineChoice, choose_pipeline
from .runtime import configure_backends, precision, resolve_device, seed_everything


@dataclass
class RunContext:
    cfg: DictConfig
    device: torch.device
    amp: bool  # bf16 autocast
    channels_last: bool
    bundle: DataBundle
    info: DataInfo
    method: Method
    choice: PipelineChoice
    n_params: int
    run_dir: Optional[Path] = None  # set when restored from a run directory
    ckpt_epoch: Optional[int] = None

    @classmethod
    def build(cls, cfg: DictConfig, init_from: Optional[str] = None, restored: bool = False) -> "RunContext":
        """Device, precision, data, method (on the device) and data path of a config; the
        method starts from ``init_from``'s backbone when given (cRT). ``restored``: a checkpoint
        will fill every weight (a resumed or re-evaluated run). Then, as with ``init_from``,
        ``model.pretrained`` is not read: its file need not be on this machine."""
        device = resolve_device(cfg.device)
        dist.init_from_env(device.type)
        amp, channels_last = precision(cfg, device)
        configure_backends(device)
        seed_everything(int(cfg.seed))
        bundle = build_data(cfg)
        info = DataInfo(np.asarray(bundle.class_counts), bundle.in_channels, tuple(bundle.image_hw))
        method = build_method(weights_follow(cfg) if init_from or restored else cfg, info)
        if init_from:
            src = Path(init_from) / CHECKPOINT
            if not src.is_file():
                raise ConfigError(f"init_from={init_from}: no {CHECKPOINT} there; point it at a finished run directory")
            ckpt = load_checkpoint(src)
            check_same_backbone(cfg, ckpt.get("config"), init_from)
            # the classes may differ: cRT trains a new classifier
            check_same_data(ckpt, Path(init_from), bundle, cfg, f"init_from={init_from}", keys=("in_channels",))
            load_state(lambda: method.load_backbone_from(ckpt["method"]), f"init_from={init_from}")
        if cfg.train.sync_bn and dist.is_dist():
            method = dist.convert_sync_batchnorm(method, device.type)
        method.to(device)
        if channels_last:
            method.to(memory_format=torch.channels_last)
        return cls(cfg=cfg, device=device, amp=amp, channels_last=channels_last, bundle=bundle, info=info,
                   method=method, choice=choose_pipeline(cfg, bundle, method.loaders),
                   n_params=count_parameters(method))

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def weights_follow(cfg: DictConfig) -> DictConfig:
    """``cfg`` to build a model whose weights a checkpoint fills next: without
    ``model.pretrained`` (the same construction otherwise, random draws included)."""
    if not cfg.model.pretrained:
        return cfg
    out = cfg.copy()
    set_key(out, "model.pretrained", None)
    return out


def data_facts(bundle: DataBundle) -> dict:
    """What a checkpoint records of the data it was trained on, to recognise them again."""
    return {"classes": [str(c) for c in bundle.classes], "class_counts": [int(c) for c in bundle.class_counts],
            "in_channels": int(bundle.in_channels)}


def _saved_data_facts(ckpt: dict, run_dir: Path) -> dict:
    """A checkpoint's ``data_facts``; for a checkpoint written before they were recorded, what
    the run's metrics.json says (classes and counts), else nothing."""
    if isinstance(ckpt.get("data_facts"), Mapping):
        return dict(ckpt["data_facts"])
    try:
        m = read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else {}
    except Exception:  # noqa: BLE001 - a damaged metrics.json only loses this check
        m = {}
    return {k: m[k] for k in ("classes", "class_counts") if isinstance(m, Mapping) and k in m}


def _short(v: Any) -> str:
    if isinstance(v, list) and len(v) > 6:
        return f"[{', '.join(map(repr, v[:6]))}, ... ({len(v)} in all)]"
    return repr(v)


def check_same_data(ckpt: dict, run_dir: Path, bundle: DataBundle, cfg: DictConfig, what: str,
                    keys: tuple[str, ...] = ("in_channels", "classes", "class_counts")) -> None:
    """The data found now must be the data ``what`` (the run in ``run_dir``, whose checkpoint
    is ``ckpt``) was trained on: the same image channels, class names (in order: they are the
    classifier's rows) and training images per class."""
    saved, ours = _saved_data_facts(ckpt, run_dir), data_facts(bundle)
    labels = {"in_channels": "image channels", "classes": "classes", "class_counts": "training images per class"}
    for k in keys:
        if saved.get(k) is not None and saved[k] != ours[k]:
            raise DataError(f"{what} was trained on data with {labels[k]} {_short(saved[k])}, but data.root="
                            f"{cfg.data.root} gives {_short(ours[k])}; point data.root at the data it was trained on")


def load_state(load, what: str) -> None:
    """Run ``load`` (a state-dict load); a shape mismatch becomes one line naming ``what``."""
    try:
        load()
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing key" in ln
                 or "Unexpected key" in ln]
        raise DataError(f"{what} does not fit the model built for this data ({(lines or [str(e)])[0][:200]}); "
                        "use the data and model settings it was trained with") from None


# the model keys a backbone's state_dict cannot tell apart when they differ (a stride has no weights)
BACKBONE_KEYS = ("name", "width", "stem_stride")


def check_same_backbone(cfg: DictConfig, source: Any, init_from: str) -> None:
    """``init_from``'s run must have trained the backbone this config builds: a different stem
    stride loads without a shape error but computes another function. A key an older run's
    config lacks had its default."""
    if not isinstance(source, Mapping):
        return
    model, defaults = source.get("model") or {}, ModelConfig()
    for key in BACKBONE_KEYS:
        theirs, ours = model.get(key, getattr(defaults, key)), cfg.model[key]
        if theirs != ours:
            raise ConfigError(f"init_from={init_from} trained model.{key}={theirs} but this config has "
                              f"model.{key}={ours}: add model.{key}={theirs}")
    # a fixed trunk holds its batch norms as fixed maps, which another rule's state cannot fill
    theirs, ours = model.get("frozen", defaults.frozen), cfg.model.frozen
    if (theirs == FIXED_TRUNK) != (ours == FIXED_TRUNK):
        raise ConfigError(f"init_from={init_from} trained model.frozen={theirs} but this config has "
                          f"model.frozen={ours}: add model.frozen={theirs}")


# runtime settings that may differ when a run is resumed or re-evaluated elsewhere; compilation
# too: it changes how the step runs, not what it computes (a run begun compiled on one machine
# may go on eagerly, or in another compile backend, on the next)
RUNTIME_TOP = {"device"}
RUNTIME_KEYS = {"data.root", "data.num_workers", "data.download", "data.cache_dir", "train.progress", "name",
                "train.logger", "train.wandb_project", "train.wandb_mode", "train.compile", "train.compile_mode",
                "train.compile_backend", "train.compile_persistent_reductions"}


def is_runtime(key: str) -> bool:
    return key in RUNTIME_KEYS or key.split(".")[0] in RUNTIME_TOP


def saved_with_runtime(saved: DictConfig, given: DictConfig | None, overrides=()) -> DictConfig:
    """The saved config with the runtime keys of ``given`` and of ``overrides`` applied."""
    if given is not None:
        d = flatten(to_dict(given))
        for k in d:
            if is_runtime(k):
                set_key(saved, k, d[k], "the command line")
    for text in overrides:
        k, v = override(saved, text)
        if not is_runtime(k):
            trial = from_dict(to_dict(saved))
            set_key(trial, k, v, "the command line")  # unknown keys and bad values say so first
            was, now = OmegaConf.select(saved, k), OmegaConf.select(trial, k)
            if now == was:  # the run's own value, restated: nothing changes
                continue
            raise ConfigError(
                f"'{k}' is {was!r} in the saved run and cannot change to {now!r} in a resumed run or a "
                f"re-evaluation (only {', '.join(sorted(RUNTIME_KEYS | RUNTIME_TOP))} can); start a new run "
                "to change it"
            )
        set_key(saved, k, v, "the command line")
    return saved


def check_resume_config(saved: DictConfig, given: DictConfig | None) -> None:
    """A config given with --resume must equal the saved one outside the runtime keys."""
    if given is None:
        return
    a, b = flatten(to_dict(saved)), flatten(to_dict(given))
    diff = [k for k in a if not is_runtime(k) and a[k] != b.get(k)]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"--resume: '{k}' is {b.get(k)!r} here but {a[k]!r} in the saved run; resume with the run's own "
            "config (omit --config and overrides) or start a new run"
        )


def load_run(run_dir: str | Path, device: str = "auto", overrides=()) -> RunContext:
    """The context of a run directory's last checkpoint (for eval, nc and report);
    ``overrides`` may change runtime keys only (data.root where the data moved, ...)."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise RunDirError(f"{run_dir} holds no {CHECKPOINT}: is it a run directory made by `allnc train`?")
    ckpt: dict[str, Any] = load_checkpoint(run_dir / CHECKPOINT)
    cfg = saved_with_runtime(from_dict(ckpt["config"]), None, [f"device={device}", *overrides])
    ctx = RunContext.build(cfg, restored=True)
    check_same_data(ckpt, run_dir, ctx.bundle, cfg, f"the run in {run_dir}")
    load_state(lambda: ctx.method.load_state_dict(ckpt["method"]), f"the checkpoint of {run_dir}")
    ctx.run_dir, ctx.ckpt_epoch = run_dir, int(ckpt["epoch"])
    return ctx
