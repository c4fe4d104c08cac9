"""The run's machine: device choice, backend settings, seeding, and provenance (library
versions, commit, device name)."""
from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from .. import __version__, dist
from ..config import is_device_name
from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``device`` value (auto | cpu | cuda | cuda:N), checked: every
    command (train, eval, nc, posthoc, predict) comes through here."""
    name = str(name)
    if not is_device_name(name):
        raise ConfigError(f"device={name!r} is not auto, cpu, cuda or cuda:N; use one of those")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dist.is_dist():
        dev = torch.device("cuda", dist.rank() % torch.cuda.device_count())
    elif dev.type == "cuda" and dev.index is None:  # set_device wants an index (torch 2.11)
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def precision(cfg, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) of a config on a device: ``auto`` means on a GPU only;
    ``bf16`` / ``on`` ask for it on any device (train.amp, train.channels_last)."""
    on_gpu = device.type == "cuda"
    amp = cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and on_gpu)
    channels_last = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and on_gpu)
    return amp, channels_last


def configure_backends(device: torch.device) -> None:
    """CPU: deterministic algorithms (runs repeat bit for bit); GPU: fixed shapes every step,
    so cuDNN may pick its fastest kernels once."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int) -> None:
    """Every random stream of an epoch is a function of (seed, epoch): a resumed run draws
    what a full run draws."""
    torch.manual_seed(int(seed) * 1_000_003 + epoch)
    np.random.seed((int(seed) * 1_000_003 + epoch) % 2**32)


def versions() -> dict:
    import torchvision

    # plain strings (torch's version is a str subclass that a weights-only load refuses)
    return {"allnc": str(__version__), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version()}


def cpu_model() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit; where there is no git repository (a copied working tree on
    another machine) the ALLNC_COMMIT environment variable says it."""
    env = os.environ.get("ALLNC_COMMIT")
    if env:
        return env
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def source_modified(package_dir: Path | None = None) -> bool | None:
    """Whether the package's own source differs from the checkout's commit (files under
    ``package_dir``, by default this package's directory, changed, added or deleted and not
    committed; files git ignores, such as ``__pycache__``, do not count);
    None where that cannot be told: no git repository, or a copied working tree whose commit
    ``ALLNC_COMMIT`` names."""
    if os.environ.get("ALLNC_COMMIT"):
        return None
    here = package_dir or Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here,
                           capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(r.stdout.strip()) if r.returncode == 0 else None


def source_state(epoch: int) -> dict:
    """What code a training process runs, read when it starts at ``epoch`` (0, or where a
    resume continues): the commit and whether the package source had uncommitted changes."""
    return {"from_epoch": int(epoch), "git_commit": git_commit(), "source_modified": source_modified()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
