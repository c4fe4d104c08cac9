"""Checkpoints: written atomically (``allnc.rundir``) from plain types, read back with
``weights_only=True`` (loading a checkpoint someone shared runs no code), with one-line
errors that name the file."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import RunDirError
from ..rundir import atomic_write_bytes


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"no checkpoint {path}; is it a run directory made by `allnc train`?")
    from torch.torch_version import TorchVersion  # older checkpoints stored versions as this str subclass

    try:
        with torch.serialization.safe_globals([TorchVersion]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged file's odd pickle protocol warns before it fails
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - random bytes reach the unpickler, which can raise nearly anything
        # (IndexError, KeyError, UnicodeDecodeError, ... besides the usual ones)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise RunDirError(f"checkpoint {path} is damaged or incomplete ({first}); restore it from a copy, or start "
                          "the run again with --overwrite") from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "epoch" not in ckpt:
        raise RunDirError(f"{path} is not an allnc checkpoint (no method state and epoch in it)")
    return ckpt
