"""Methods: one strategy object per method (model, losses, schedule), registered by name.

Importing this package imports every module in it, so each method registers itself (with
the config dataclass it reads) where it is defined: adding a method is adding a module.
"""
import importlib
import pkgutil

from .base import METHODS, SECTIONS, DataInfo, LoaderSpec, Method, StepState, build_method

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["METHODS", "SECTIONS", "DataInfo", "LoaderSpec", "Method", "StepState", "build_method"]
