"""``allnc grid GRID.yaml``: run a grid of configs x overrides x seeds as concurrent
processes, resume an interrupted grid, and summarize the finished runs.

``expand`` turns a grid YAML into runs (its docstring describes the format), ``runner``
runs them, ``summary`` writes ``summary.md``, ``summary.csv`` and ``summary.json``.
Importing the grid imports no torch.
"""
from __future__ import annotations

from .expand import RunSpec, expand_grid, load_grid
from .runner import GridResult, default_command, run_grid
from .summary import summarize

__all__ = ["RunSpec", "GridResult", "expand_grid", "load_grid", "run_grid", "summarize", "default_command"]
