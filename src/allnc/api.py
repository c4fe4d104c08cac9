"""The Python API: train a config, load a finished run.

    from allnc.api import train, load_run

    metrics = train("fmnist_lt_allnc", "runs/a", {"train.epochs": 2}, device="cpu")
    run = load_run("runs/a")
    run.evaluate("test")["top1"]

Overrides are Python values keyed by dotted config keys (a dict), or keyword arguments where
``__`` stands for the dot (``train__epochs=2``); they are checked like ``key=value`` on the
command line (unknown keys and bad values raise ``allnc.errors.ConfigError``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from .config import plugin_list, load_config, set_key, validate
from .data import validation_key
from .errors import ConfigError
from .engine.context import RunContext
from .engine.context import load_run as _load_run
from .engine.evaluate import evaluate_accuracy, neural_collapse
from .engine.trainer import Trainer


def _items(overrides: Optional[dict], kwargs: dict) -> dict:
    items = dict(overrides or {})
    items.update({k.replace("__", "."): v for k, v in kwargs.items()})
    return items


def _load(config_or_name: str | DictConfig, items: dict) -> DictConfig:
    """The config, with ``plugins`` (if given) imported before its tree is built."""
    if "plugins" not in items:
        return config_or_name if isinstance(config_or_name, DictConfig) else load_config(config_or_name)
    if isinstance(config_or_name, DictConfig):
        raise ConfigError("plugins must be imported before a config is built: give them with the config's name "
                          "(train(name, out, {'plugins': [...]})), not with a built config")
    return load_config(config_or_name, plugins=plugin_list(items.pop("plugins"), "the Python call"))


def _apply(cfg: DictConfig, items: dict) -> DictConfig:
    for key, value in items.items():
        set_key(cfg, key, value, "the Python call")
    validate(cfg)
    return cfg


def config(name_or_path: str, overrides: Optional[dict] = None, **kwargs: Any) -> DictConfig:
    """A resolved config: a built-in name, a cell name or a YAML file, then the overrides
    (``plugins`` among them are imported first)."""
    items = _items(overrides, kwargs)
    return _apply(_load(name_or_path, items), items)


def train(config_or_name: str | DictConfig, out: str | Path, overrides: Optional[dict] = None, *,
          resume: bool = False, overwrite: bool = False, log=print, **kwargs: Any) -> dict:
    """Train and return the final metrics (the content of ``out/metrics.json``)."""
    items = _items(overrides, kwargs)
    cfg = _apply(_load(config_or_name, items), items)
    return Trainer(cfg, out, resume=resume, overwrite=overwrite, log=log).fit()


class Run:
    """A finished (or checkpointed) run loaded for use: ``method`` (the model, in eval mode on
    ``device``), ``cfg``, ``classes``, ``evaluate(split)``, ``neural_collapse(...)``,
    ``predict(x)`` for a batch of already preprocessed images."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.method, self.cfg, self.device = ctx.method, ctx.cfg, ctx.device
        self.classes = list(ctx.bundle.classes)
        self.epoch = ctx.ckpt_epoch
        self.method.eval()

    def evaluate(self, split: str = "test") -> dict:
        """Top-1, many/medium/few and per-class accuracy on ``split``: "test", or "val" where
        the run has a validation split (``data.val_per_class``)."""
        if split not in ("test", "val"):
            raise ConfigError(f"split {split!r} is not 'test' or 'val'")
        if split == "val" and self.ctx.bundle.val is None:
            raise ConfigError(f"the run has no validation split; evaluate 'test', or train with {validation_key(self.cfg)}")
        return evaluate_accuracy(self.ctx, split=split)

    def neural_collapse(self, splits=("train", "test"), max_samples: int = 0) -> dict:
        return neural_collapse(self.ctx, splits=splits, max_samples=max_samples)[0]

    def predict(self, x):
        """Class probabilities of a batch (B x C x H x W floats, normalised as in evaluation:
        ``(pixels / 255 - mean) / std`` with the run's mean and std, metrics.json's
        ``preprocessing``)."""
        import torch

        c = int(self.ctx.bundle.in_channels)
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != c:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ConfigError(f"Run.predict takes a batch of B x {c} x H x W images (the run's {c} channel(s)); "
                              f"got {shape}: add the batch dimension with x[None] or convert the channels")
        if not x.is_floating_point():
            raise ConfigError(f"Run.predict takes normalised float images; this batch is {str(x.dtype)[6:]}: "
                              "scale it with x.float() / 255, then (x - mean) / std with the run's mean and std "
                              "(metrics.json, 'preprocessing'), or give image files to `allnc predict`")
        p = next(self.method.parameters())
        with torch.no_grad():
            return torch.softmax(self.method(self.ctx.prep(x.to(self.device, p.dtype))).float(), dim=1)


def load_run(run_dir: str | Path, device: str = "auto", **runtime: Any) -> Run:
    """A run directory's last checkpoint, ready to evaluate or predict; ``runtime`` may change
    runtime keys only (``data__root="..."`` where the data moved)."""
    return Run(_load_run(run_dir, device=device, overrides=[f"{k.replace('__', '.')}={v}" for k, v in runtime.items()]))
