"""A whole run's config: the task and its sections, read from a TOML/YAML file with dotted overrides.

Above the estimators: the ``[model]`` and ``[classifier]`` sections are the config dataclasses
derived from their constructors (:data:`pyro_sdlgm.ModelConfig`, :data:`pyro_sdlgm.ClassifierConfig`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pyro_sdlgm.config import (
    DataConfig,
    MultiLabelDataConfig,
    TrainConfig,
    _coerce,
    apply_overrides,
    from_dict,
    read_config_file,
)
from pyro_sdlgm.estimators.classifier import ClassifierConfig
from pyro_sdlgm.estimators.sdlgm import ModelConfig
from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.plugins import load_plugins, resolve_plugins

Task = Literal["unsupervised", "multilabel"]
KeepFiles = Literal["all", "model"]


TASKS = get_args(Task)


@dataclasses.dataclass
class RunConfig:
    """A whole run: where it writes, the task, and its sections.

    ``task = "unsupervised"`` (default) uses ``[model]``, ``[training]`` and ``[data]``
    (:class:`DataConfig`); ``task = "multilabel"`` uses ``[classifier]``, ``[training]``
    and ``[data]`` (:class:`MultiLabelDataConfig`).
    """

    run_dir: str = "runs/sdlgm"
    """The run folder."""
    task: Task = "unsupervised"
    """``"unsupervised"`` (an SDLGM) or ``"multilabel"`` (an SDLGMClassifier)."""
    model: ModelConfig | None = dataclasses.field(default_factory=ModelConfig)
    """``[model]`` (unsupervised runs; None for multi-label runs)."""
    training: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """``[training]``."""
    data: DataConfig | MultiLabelDataConfig = dataclasses.field(default_factory=DataConfig)
    """``[data]``: a :class:`DataConfig` or, for multi-label runs, a :class:`MultiLabelDataConfig`."""
    classifier: ClassifierConfig | None = None
    """``[classifier]`` (multi-label runs)."""
    keep: KeepFiles = "all"
    """What a finished run keeps beside ``model.pt``: ``"all"``, its newest training checkpoints too
    (``training.keep_checkpoints`` of them: the full training state, for ``--resume`` of an
    interrupted run and for reading the optimizer's state), or ``"model"``, which deletes them once
    ``model.pt`` is written (the run can no longer be resumed, nor does it need to be)."""
    plugins: tuple[str, ...] = ()
    """Modules or ``.py`` files imported before the sections are read, so that the components they
    register can be named (see :mod:`pyro_sdlgm.plugins`); file paths are recorded absolute."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> RunConfig:
        data = dict(data)
        task = data.get("task", "unsupervised")
        if task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}{where}, got {task!r}")
        model_section = ("model", ModelConfig) if task == "unsupervised" else ("classifier", ClassifierConfig)
        data_class = DataConfig if task == "unsupervised" else MultiLabelDataConfig
        known = {"run_dir", "task", "keep", "plugins", model_section[0], "training", "data"}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}{where} for task {task!r}; "
                              f"known top-level keys: {sorted(known)}")
        run_dir = data.get("run_dir", cls.run_dir)
        if not isinstance(run_dir, str):
            raise ConfigError(f"run_dir must be a string{where}, got {run_dir!r}")
        try:  # before the sections: they may name the components the plugins register
            plugins = load_plugins(data.get("plugins", ()))
        except ConfigError as err:
            raise ConfigError(f"{err}{where}") from None
        sections = {}
        for key, section_cls in (model_section, ("training", TrainConfig), ("data", data_class)):
            value = data.get(key, {})
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table{where}, got {value!r}")
            sections[key] = from_dict(section_cls, value, where)
        if task == "multilabel":
            sections["model"] = None
        keep = _coerce(KeepFiles, data.get("keep", cls.keep), f"keep{where}")
        return cls(run_dir=run_dir, task=task, keep=keep, plugins=plugins, **sections)

    def to_dict(self) -> dict[str, Any]:
        out = {"run_dir": self.run_dir, "task": self.task, "keep": self.keep, "plugins": list(self.plugins)}
        for key in ("model", "classifier", "training", "data"):
            section = getattr(self, key)
            if section is not None:
                out[key] = section.to_dict()
        return out


def load_run_config(path: str | Path | None, overrides: Sequence[str] = (), plugins: Sequence[str] = ()) -> RunConfig:
    """Read a config file (or start from the defaults when ``path`` is None) and apply overrides.

    ``plugins`` (the command line's ``--plugin``) are imported after the file's own
    ``plugins``; relative file paths are relative to the config file's folder in the file and
    to the current folder in ``plugins``.

    A :class:`ConfigError` names the file when the file alone is at fault, and the
    command-line overrides when the file is valid without them.
    """
    data = read_config_file(path) if path is not None else {}
    where = f" in {str(path)!r}" if path is not None else ""
    try:
        listed = resolve_plugins(data.get("plugins", []), Path(path).parent if path is not None else None)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None
    data["plugins"] = listed + resolve_plugins(plugins)
    try:
        return RunConfig.from_dict(apply_overrides(data, overrides), where)
    except ConfigError:
        if not overrides:
            raise
        RunConfig.from_dict(data, where)  # raises if the file alone is at fault
        # the file is valid: the overrides are what the error is about
        return RunConfig.from_dict(apply_overrides(data, overrides), " in the command-line overrides")
