"""Submodules imported on first attribute access (PEP 562), for the package and its subpackages."""

from __future__ import annotations

from importlib import import_module


def submodule_getattr(package: str):
    """A module ``__getattr__`` that imports ``package.<name>`` when ``<name>`` is first looked up,
    so that ``import pyro_sdlgm`` stays light and ``pyro_sdlgm.analysis.posterior`` still works
    after it. A submodule that exists but fails to import (a missing dependency) raises its own error."""

    def __getattr__(name: str):
        try:
            return import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
