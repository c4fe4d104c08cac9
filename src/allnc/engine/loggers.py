"""Where a run's numbers go besides ``metrics.jsonl``: ``train.logger`` picks one of

* ``tensorboard`` (default): ``RUN_DIR/tb/`` event files, one scalar per number of each epoch;
* ``wandb``: a Weights & Biases run (``pip install allnc[wandb]``) in project
  ``train.wandb_project``, online or offline after ``train.wandb_mode``, its files under
  ``RUN_DIR/wandb/`` (or ``$WANDB_DIR``); a resumed run continues the same W&B run;
* ``none``: nothing but the run directory's own files.

Every logger has the same four calls, made by the trainer on the main process only:
``start(out, cfg, resume)``, ``log_epoch(rec)`` after each epoch (the record written to
``metrics.jsonl``), ``log_final(metrics, nc)`` with ``metrics.json``'s numbers and the last
epoch's neural-collapse figures (or None), and ``close(exit_code)``, which may come twice
(the second call does nothing).
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import string
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from ..config import flatten, to_dict
from ..errors import AllncError, ConfigError
from ..rundir import TB_DIR, WANDB_ID, atomic_write_text
from .progress import tensorboard

__all__ = ["RunLogger", "NullLogger", "TensorBoardLogger", "WandbLogger", "make_logger", "wandb_mode", "scalars",
           "WANDB_ID", "LOGGERS"]

LOGGERS = ("tensorboard", "wandb", "none")
WANDB_MODES = ("auto", "online", "offline")


def scalars(rec: dict) -> dict[str, float]:
    """The numbers of a record under slash-separated names (``test_groups/many``), as
    TensorBoard shows them; None, text and ``epoch`` are left out."""
    return {k.replace(".", "/"): v for k, v in flatten(rec).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


class RunLogger:
    """The interface; this base logs nothing."""

    name = "none"

    def start(self, out: Path, cfg, resume: bool = False) -> None:
        pass

    def log_epoch(self, rec: dict) -> None:
        pass

    def log_final(self, metrics: dict, nc: Optional[dict] = None) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass


class NullLogger(RunLogger):
    pass


class TensorBoardLogger(RunLogger):
    """``RUN_DIR/tb/``: each epoch's numbers at step ``epoch``, flushed after every epoch."""

    name = "tensorboard"

    def __init__(self):
        self.writer = None

    def start(self, out: Path, cfg, resume: bool = False) -> None:
        self.writer = tensorboard(Path(out) / TB_DIR)

    def log_epoch(self, rec: dict) -> None:
        if self.writer is None:
            return
        for k, v in flatten(rec).items():
            if isinstance(v, (int, float)) and v is not None and k != "epoch":
                self.writer.add_scalar(k.replace(".", "/"), v, rec["epoch"])
        self.writer.flush()

    def close(self, exit_code: int = 0) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _online_reachable(timeout: float = 2.0) -> bool:
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    try:
        with socket.create_connection((host.hostname or "api.wandb.ai", host.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:  # `wandb login` keeps the key in ~/.netrc
        import netrc

        host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(setting: str) -> str:
    """``online`` or ``offline`` for ``train.wandb_mode``: ``auto`` takes ``$WANDB_MODE`` when
    set, else online only with credentials (``WANDB_API_KEY`` or ``wandb login``) and a
    reachable server."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env in ("dryrun", "run"):
        return "offline" if env == "dryrun" else "online"
    return "online" if _has_credentials() and _online_reachable() else "offline"


class WandbLogger(RunLogger):
    """A W&B run: the resolved config, each epoch's numbers against ``epoch``, the final
    metrics (and NC figures) in the run's summary."""

    name = "wandb"

    def __init__(self, project: str = "allnc", mode: str = "auto"):
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("train.logger=wandb needs the wandb package: pip install allnc[wandb] "
                              "(or choose train.logger=tensorboard or none)")
        self.project, self.mode_setting = project, mode
        self.run: Any = None

    def start(self, out: Path, cfg, resume: bool = False) -> None:
        import wandb

        out = Path(out)
        mode = wandb_mode(self.mode_setting)
        id_file = out / WANDB_ID
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        if run_id is None:
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        where = os.environ.get("WANDB_DIR") or str(out)
        Path(where).mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=self.project, name=str(cfg.name) or out.name, id=run_id, resume="allow",
                config=to_dict(cfg), dir=where, mode=mode, job_type="train",
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as e:  # noqa: BLE001 (wandb raises many kinds; the user needs one line)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise AllncError(f"wandb could not start a {mode} run: {first}; try train.wandb_mode=offline "
                             "(sync later with `wandb sync`) or train.logger=tensorboard") from None
        atomic_write_text(id_file, run_id + "\n")
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log_epoch(self, rec: dict) -> None:
        if self.run is not None:
            self.run.log({**scalars(rec), "epoch": int(rec["epoch"])})

    def log_final(self, metrics: dict, nc: Optional[dict] = None) -> None:
        if self.run is None:
            return
        keep = {k: v for k, v in metrics.items()
                if k not in ("config", "versions", "compile", "class_counts", "per_class", "calibration")}
        if isinstance(keep.get("val"), dict):
            keep["val"] = {k: v for k, v in keep["val"].items() if k != "per_class"}
        final = scalars(keep)
        final["epoch"] = int(metrics.get("epoch", 0))
        if nc:
            final.update({f"nc/{k}": v for k, v in scalars(nc).items()})
        self.run.summary.update(final)

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)


def make_logger(cfg) -> RunLogger:
    """The logger ``cfg.train.logger`` names, not started yet (a missing wandb is a
    ConfigError here, before any data is read)."""
    kind = str(cfg.train.logger)
    if kind == "tensorboard":
        return TensorBoardLogger()
    if kind == "wandb":
        return WandbLogger(str(cfg.train.wandb_project), str(cfg.train.wandb_mode))
    return NullLogger()
