"""The estimator base both user classes stand on: scikit-learn's parameter protocol, one fit
skeleton, one seeded hold-out, one "fitted" state, batched inference and one save/load.

Parameters follow scikit-learn's rule: the constructor's signature is the parameter list, the
constructor stores each argument unchanged (``get_params``, ``set_params`` and ``clone`` read
them back), and everything is checked by ``fit``. A subclass declares its own options in its
``__init__`` (with their ``Literal`` types) and takes the training options as ``**training``:
those are declared once, as the fields of :class:`~pyro_sdlgm.config.TrainConfig`, and
:meth:`Estimator.__init_subclass__` adds them to the constructor's signature as keyword-only
parameters, so that scikit-learn (and ``help``) sees one flat parameter list.

A subclass says how to build its networks (:meth:`Estimator._networks`), what its checkpoint
holds besides the state dicts (:meth:`Estimator._checkpoint_fields`) and how to rebuild itself
from one (:meth:`Estimator._from_checkpoint`); everything else lives here once.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyro
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import validate_data

from pyro_sdlgm.config import TRAINING_OPTIONS, TrainConfig, from_dict, own_options
from pyro_sdlgm.exceptions import CheckpointError, DataError, NotFittedError
from pyro_sdlgm.inference.checkpoint import TRAINING_VERSION, atomic_save, check_format_version, load_checkpoint
from pyro_sdlgm.inference.resources import guard_parameters
from pyro_sdlgm.inference.trainer import Trainer
from pyro_sdlgm.model.spec import ModelSpec


def validation_split(n_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(fit_rows, val_rows)``: the seeded hold-out ``fit`` uses when no validation data is given
    (``val_rows`` None when ``fraction`` leaves no row on either side). The same ``seed`` holds out
    the same rows for :class:`~pyro_sdlgm.SDLGM` and :class:`~pyro_sdlgm.SDLGMClassifier`."""
    n_val = int(round(fraction * n_rows))
    if fraction <= 0 or not 1 <= n_val < n_rows:
        return np.arange(n_rows), None
    order = np.random.default_rng(seed).permutation(n_rows)
    return order[n_val:], order[:n_val]


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` of an inference method, a positive int; :class:`DataError` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_map_location(map_location: str | torch.device) -> None:
    if torch.device(map_location).type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"map_location={str(map_location)!r} but CUDA is not available on this machine")


class EstimatorNotFittedError(NotFittedError, SklearnNotFittedError):
    """The :class:`~pyro_sdlgm.exceptions.NotFittedError` the estimators raise: scikit-learn's
    ``NotFittedError`` too, so that scikit-learn's tools recognize it."""


def signature_with_training(init) -> inspect.Signature:
    """``init``'s signature with ``**training`` replaced by the training options, keyword-only,
    with :class:`~pyro_sdlgm.config.TrainConfig`'s types and defaults."""
    signature = inspect.signature(init)
    own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = typing.get_type_hints(TrainConfig)
    training = [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                                  annotation=hints[field.name]) for field in dataclasses.fields(TrainConfig)]
    return signature.replace(parameters=own + training)


class Estimator(BaseEstimator):
    """Base of :class:`~pyro_sdlgm.SDLGM` and :class:`~pyro_sdlgm.SDLGMClassifier`.

    Attributes:
        model_, guide_: the Pyro model and guide (``PyroModule``s), or None before they are built.
        train_config_: the :class:`~pyro_sdlgm.config.TrainConfig` of the last fit (fitted only).
        history_: the per-epoch records of the last fit (or of the loaded checkpoint; fitted only).
        n_features_in_: the features of the training data (fitted only).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):  # the training options join the constructor's parameter list
            cls.__init__.__signature__ = signature_with_training(cls.__init__)

    def _store_parameters(self, arguments: Mapping[str, Any]) -> None:
        """Store the constructor's ``arguments`` (its ``locals()``) unchanged, as scikit-learn
        asks: the own options, then each training option (its default where not given).

        Raises:
            TypeError: a keyword that is no option (as Python does for an unknown argument).
        """
        arguments = dict(arguments)
        training = arguments.pop("training", {})
        unknown = sorted(set(training) - set(TRAINING_OPTIONS))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}; its "
                            f"options: {', '.join(own_options(type(self)))}; training options: "
                            f"{', '.join(TRAINING_OPTIONS)}")
        for name in own_options(type(self)):
            setattr(self, name, arguments[name])
        for field in dataclasses.fields(TrainConfig):
            setattr(self, field.name, training.get(field.name, field.default))
        self._reset()

    #: the ``format`` field of this class's checkpoints
    checkpoint_format: ClassVar[str]
    #: the checkpoint format version this class writes and reads (the training checkpoints' version)
    checkpoint_version: ClassVar[int] = TRAINING_VERSION
    #: checkpoint fields besides the state dicts that :meth:`load` needs
    checkpoint_requires: ClassVar[tuple[str, ...]] = ()

    #: build the networks when ``model`` or ``guide`` is first read (an unfitted SDLGM has them;
    #: a classifier's sizes may wait for the data)
    networks_on_access: ClassVar[bool] = False

    def _reset(self) -> None:
        """The state of an unfitted estimator (its networks not built yet, no fitted attribute)."""
        self._model = self._guide = None
        self._config = self._spec = None  # the resolved options of the networks, once they are built
        self._fitted = False
        for name in ("train_config_", "history_"):
            self.__dict__.pop(name, None)

    def __sklearn_is_fitted__(self) -> bool:
        return self._fitted

    def _check_features(self, X, reset: bool):
        """scikit-learn's bookkeeping of ``n_features_in_`` and ``feature_names_in_`` for ``X``
        (set with ``reset``, else compared), as a :class:`DataError`; ``X`` itself is checked by the caller."""
        try:
            validate_data(self, X, reset=reset, skip_check_array=True)
        except ValueError as err:
            raise DataError(str(err)) from None

    def _build_if_needed(self) -> None:
        if self._model is None and self.networks_on_access:
            self._build(self._config_from_parameters())

    def _build(self, config) -> None:
        """Build fresh networks of the resolved options ``config`` (refused first, on the ``meta``
        device, if their parameters alone cannot fit in memory)."""
        guard_parameters(*self._meta_networks(config))
        self._model, self._guide = self._networks(config)
        self._config, self._spec = config, None

    @property
    def config(self):
        """The resolved options: those the networks were built with (by ``fit``, ``load`` or a first
        read of ``model_``), else the current parameters', checked (:class:`ConfigError` names a bad one)."""
        return self._config if self._config is not None else self._config_from_parameters()

    @property
    def spec(self) -> ModelSpec:
        """The :class:`~pyro_sdlgm.model.spec.ModelSpec` of :attr:`config` (its sizes known)."""
        if self._config is None:
            return self._spec_of(self._config_from_parameters())
        if self._spec is None:
            self._spec = self._spec_of(self._config)
        return self._spec

    @property
    def model_(self):
        """The Pyro model (a ``PyroModule``); None while it is not built. The networks are fitted
        attributes (built by ``fit`` or ``load``), but where their sizes are known from the
        parameters alone they are built when first read, for Pyro's own clients
        (``pyro.infer.SVI(m.model_, m.guide_, ...)``)."""
        self._build_if_needed()
        return self._model

    @model_.setter
    def model_(self, value) -> None:
        self._model = value

    @property
    def guide_(self):
        """The Pyro guide (a ``PyroModule``); None while it is not built (see :attr:`model_`)."""
        self._build_if_needed()
        return self._guide

    @guide_.setter
    def guide_(self, value) -> None:
        self._guide = value

    # -- what a subclass provides ----------------------------------------------------------

    def _config_from_parameters(self):
        """The current parameters, checked, as this class's config section (its sizes may be left
        to the data: None)."""
        raise NotImplementedError

    def _spec_of(self, config) -> ModelSpec:
        """The :class:`~pyro_sdlgm.model.spec.ModelSpec` of the resolved options ``config``."""
        raise NotImplementedError

    def _networks(self, config) -> tuple:
        """A fresh ``(model, guide)`` pair for the resolved options ``config``."""
        raise NotImplementedError

    def _checkpoint_fields(self) -> dict[str, Any]:
        """What the checkpoint holds besides format, state dicts, train config and history."""
        raise NotImplementedError

    @classmethod
    def _from_checkpoint(cls, data: Mapping[str, Any]) -> tuple[Estimator, Any]:
        """An unfitted estimator with the checkpoint's parameters, and the resolved options of its networks."""
        raise NotImplementedError

    def _restore_fields(self, data: Mapping[str, Any]) -> None:
        """Set what :meth:`_checkpoint_fields` saved beyond the configuration (default: nothing)."""

    # -- state -----------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """True after a successful :meth:`fit` or :meth:`load`."""
        return self._fitted

    def _check_fitted(self, method: str) -> None:
        if not self._fitted:
            name = type(self).__name__
            raise EstimatorNotFittedError(f"{name}.{method}() needs a trained model: call fit() or {name}.load() first")

    @property
    def device_(self) -> torch.device:
        """The device of the networks (CPU before they are built)."""
        if self._model is None:
            return torch.device("cpu")
        return next(self._model.parameters()).device

    def _eval_batches(self, rows: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Row indices in batches of ``batch_size``, with the networks in eval mode."""
        check_batch_size(batch_size)
        self.model_.eval()
        self.guide_.eval()
        yield from torch.arange(rows).split(batch_size)

    # -- training --------------------------------------------------------------------------

    def _train_config(self, overrides: Mapping[str, Any], where: str) -> TrainConfig:
        """The estimator's training options, with ``overrides`` (``fit``'s keywords) for this fit, checked."""
        options = {name: getattr(self, name) for name in TRAINING_OPTIONS}
        return from_dict(TrainConfig, {**options, **overrides}, where=f" passed to {where}")

    def _refuse_unfit(self, config, cfg: TrainConfig, num_train_rows: int, num_val_rows: int,
                      num_candidates: int | None = None) -> None:
        """Raise :class:`~pyro_sdlgm.exceptions.ResourceError` if training cannot fit, before the
        current networks are touched (the networks are built on the ``meta`` device: sizes only).
        ``num_candidates``: the shortlist size of the memory estimate (see
        :func:`~pyro_sdlgm.inference.resources.guard_training_memory`)."""
        Trainer(*self._meta_networks(config), cfg, num_candidates=num_candidates).check_memory(num_train_rows,
                                                                                             num_val_rows)

    def _meta_networks(self, config) -> tuple:
        """``(model, guide)`` of ``config`` on the ``meta`` device: their sizes, nothing allocated."""
        with torch.device("meta"):
            return self._networks(config)

    def _train(self, config, train: tuple, val: tuple | None, cfg: TrainConfig, *, run_dir, resume: bool,
               overwrite: bool, identity: dict, batch_kwargs=None, num_candidates: int | None = None) -> list[dict]:
        """The fit skeleton: build fresh networks of the resolved options ``config`` under ``cfg.seed``,
        train them, mark the estimator fitted (after the caller's ``check_run_dir`` and :meth:`_refuse_unfit`).

        ``train``/``val``: the model's data columns (tuples of row-aligned arrays); ``identity``:
        what a training checkpoint must match to be resumed (see :meth:`Trainer.fit`).
        """
        pyro.set_rng_seed(cfg.seed)
        self._reset()  # free the current networks before building the fresh ones
        self._model, self._guide = self._networks(config)
        self._config = config
        # the memory was checked by _refuse_unfit, before the current networks were freed
        trainer = Trainer(self._model, self._guide, cfg, batch_kwargs=batch_kwargs, num_candidates=num_candidates,
                          memory_checked=True)
        history = trainer.fit(train, val, run_dir, resume=resume, overwrite=overwrite, identity=identity)
        self.train_config_, self.history_, self._fitted = cfg, history, True
        return history

    # -- persistence -----------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a weights-only checkpoint (configuration, state dicts, training config, history),
        atomically: a crash leaves the old file or the new one."""
        self._check_fitted("save")
        atomic_save({
            "format": self.checkpoint_format,
            "format_version": self.checkpoint_version,
            **self._checkpoint_fields(),
            "train_config": self.train_config_.to_dict() if getattr(self, "train_config_", None) else None,
            "model_state": {k: v.cpu() for k, v in self.model_.state_dict().items()},
            "guide_state": {k: v.cpu() for k, v in self.guide_.state_dict().items()},
            "history": self.history_,
            "feature_names_in": list(getattr(self, "feature_names_in_", [])) or None,
        }, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu"):
        """Load a checkpoint written by :meth:`save` (``torch.load(weights_only=True)``), onto
        ``map_location``.

        Raises:
            CheckpointError: not this class's checkpoint, another format version, state dicts
                that do not match the configuration, or a CUDA ``map_location`` without CUDA.
        """
        check_map_location(map_location)
        data = load_checkpoint(path, cls.checkpoint_format, (*cls.checkpoint_requires, "model_state", "guide_state"))
        check_format_version(data, path, cls.checkpoint_version)
        self, config = cls._from_checkpoint(data)
        self._build(config)
        try:
            self.model_.load_state_dict(data["model_state"])
            self.guide_.load_state_dict(data["guide_state"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match its configuration: {err}") from None
        self.model_.to(map_location)
        self.guide_.to(map_location)
        self.train_config_ = from_dict(TrainConfig, data["train_config"]) if data.get("train_config") else None
        self.history_ = data.get("history")
        self.n_features_in_ = self.spec.input_dim
        if data.get("feature_names_in"):
            self.feature_names_in_ = np.asarray(data["feature_names_in"], dtype=object)
        self._restore_fields(data)
        self._fitted = True
        return self
