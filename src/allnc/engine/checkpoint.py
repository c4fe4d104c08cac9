"""Checkpoints: written atomically (``allnc.rundir``), read back with a clear error."""
from __future__ import annotations

from pathlib import Path

import torch

from ..rundir import atomic_write_bytes


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)
