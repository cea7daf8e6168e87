"""Plugins: the user's own modules, imported before a run config is read.

A component registered by decorator (``@register_sparsity_prior("two_point")``) exists once
the module that defines it has been imported. From Python that is the user's own ``import``;
a command-line run needs to be told which modules to import, with the config key
``plugins = ["my_priors", "extra/likelihoods.py"]`` or ``sdlgm ... --plugin my_priors``.
Each entry is either

- a dotted module name, imported with :func:`importlib.import_module` from ``sys.path`` and
  the current folder, or
- a path to a ``.py`` file, imported as a module named after the file (a relative path is
  relative to the config file that names it, or to the current folder on the command line).

A run folder's ``config.yaml`` records the plugins with file paths made absolute, so that
``sdlgm evaluate | encode | inspect | predict`` and ``--resume`` import them again.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from pyro_sdlgm.exceptions import ConfigError

__all__ = ["is_file_plugin", "load_plugins", "resolve_plugin", "resolve_plugins"]


def is_file_plugin(entry: str) -> bool:
    """Whether a plugin entry names a ``.py`` file (else it is a dotted module name)."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def resolve_plugin(entry: str, base: str | Path | None = None) -> str:
    """The entry as recorded in a run folder: a file path made absolute (relative to ``base``,
    else to the current folder), a module name as it is."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"a plugin must be a module name or a .py file, got {entry!r}")
    if not is_file_plugin(entry):
        return entry
    path = Path(entry).expanduser()
    if not path.is_absolute():
        path = Path(base or ".") / path
    return str(path.resolve())


def _import_file(path: Path):
    if not path.is_file():
        raise ConfigError(f"plugin file {str(path)!r} does not exist")
    name = f"pyro_sdlgm_plugin_{path.stem}"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(path):
        return existing  # imported before: registering twice would clash
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin file {str(path)!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str):
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:  # a console script's sys.path lacks the current folder, which `python -m` has
        sys.path.append(str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise ConfigError(f"plugin module {name!r} not found (searched sys.path and the current folder); "
                              "give a module name Python can import or the path of a .py file") from None
        raise
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def resolve_plugins(entries: Sequence[str], base: str | Path | None = None) -> list[str]:
    """:func:`resolve_plugin` of each entry of a list; :class:`ConfigError` if ``entries`` is not a list."""
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise ConfigError(f"plugins must be a list of module names or .py files, got {entries!r}")
    return [resolve_plugin(entry, base) for entry in entries]


def load_plugins(entries: Sequence[str], base: str | Path | None = None) -> tuple[str, ...]:
    """Import each plugin (see the module docstring); return the entries as resolved.

    Raises :class:`ConfigError` naming a plugin that cannot be found, or one whose import
    raised (with that error).
    """
    resolved = []
    for entry in resolve_plugins(entries, base):
        try:
            _import_file(Path(entry)) if is_file_plugin(entry) else _import_module(entry)
        except ConfigError:
            raise
        except Exception as err:  # the plugin's own error, named with the plugin
            raise ConfigError(f"importing plugin {entry!r} failed: {type(err).__name__}: {err}") from err
        resolved.append(entry)
    return tuple(dict.fromkeys(resolved))
