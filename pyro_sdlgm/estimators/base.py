"""The estimator base both user classes stand on: one fit skeleton, one seeded hold-out, one
"fitted" state, batched inference and one save/load.

A subclass says how to build its networks (:meth:`Estimator._networks`), what its checkpoint
holds besides the state dicts (:meth:`Estimator._checkpoint_fields`) and how to rebuild itself
from one (:meth:`Estimator._from_checkpoint`); everything else lives here once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyro
import torch

from pyro_sdlgm.config import TrainConfig, from_dict
from pyro_sdlgm.exceptions import CheckpointError, DataError, NotFittedError
from pyro_sdlgm.inference.checkpoint import TRAINING_VERSION, atomic_save, check_format_version, load_checkpoint
from pyro_sdlgm.inference.trainer import Trainer


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


class Estimator:
    """Base of :class:`~pyro_sdlgm.SDLGM` and :class:`~pyro_sdlgm.SDLGMClassifier`.

    Attributes:
        model, guide: the Pyro model and guide (``PyroModule``s), or None before they are built.
        train_config: the :class:`~pyro_sdlgm.config.TrainConfig` of the last fit, or None.
        history_: the per-epoch records of the last fit (or of the loaded checkpoint), or None.
    """

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
        """The state of an unfitted estimator (its networks not built yet)."""
        self._model = self._guide = None
        self.train_config: TrainConfig | None = None
        self.history_: list[dict] | None = None
        self._fitted = False

    def _build_if_needed(self) -> None:
        if self._model is None and self.networks_on_access:
            self._model, self._guide = self._networks()

    @property
    def model(self):
        """The Pyro model (a ``PyroModule``); None while it is not built."""
        self._build_if_needed()
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    @property
    def guide(self):
        """The Pyro guide (a ``PyroModule``); None while it is not built."""
        self._build_if_needed()
        return self._guide

    @guide.setter
    def guide(self, value) -> None:
        self._guide = value

    # -- what a subclass provides ----------------------------------------------------------

    def _networks(self) -> tuple:
        """A fresh ``(model, guide)`` pair for the current configuration."""
        raise NotImplementedError

    def _checkpoint_fields(self) -> dict[str, Any]:
        """What the checkpoint holds besides format, state dicts, train config and history."""
        raise NotImplementedError

    @classmethod
    def _from_checkpoint(cls, data: Mapping[str, Any]) -> Estimator:
        """An unfitted estimator with the checkpoint's configuration."""
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
            raise NotFittedError(f"{name}.{method}() needs a trained model: call fit() or {name}.load() first")

    @property
    def device(self) -> torch.device:
        """The device of the networks (CPU before they are built)."""
        if self._model is None:
            return torch.device("cpu")
        return next(self._model.parameters()).device

    def _eval_batches(self, rows: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Row indices in batches of ``batch_size``, with the networks in eval mode."""
        check_batch_size(batch_size)
        self.model.eval()
        self.guide.eval()
        yield from torch.arange(rows).split(batch_size)

    # -- training --------------------------------------------------------------------------

    @staticmethod
    def _train_config(train_options: Mapping[str, Any], where: str) -> TrainConfig:
        return from_dict(TrainConfig, train_options, where=f" passed to {where}")

    def _refuse_unfit(self, cfg: TrainConfig, num_train_rows: int, num_val_rows: int,
                      num_candidates: int | None = None) -> None:
        """Raise :class:`~pyro_sdlgm.exceptions.ResourceError` if training cannot fit, before the
        current networks are touched (the networks are built on the ``meta`` device: sizes only).
        ``num_candidates``: the shortlist size of the memory estimate (see
        :func:`~pyro_sdlgm.inference.resources.guard_training_memory`)."""
        Trainer(*self._meta_networks(), cfg, num_candidates=num_candidates).check_memory(num_train_rows, num_val_rows)

    def _meta_networks(self) -> tuple:
        """``(model, guide)`` on the ``meta`` device: their sizes, nothing allocated."""
        with torch.device("meta"):
            return self._networks()

    def _train(self, train: tuple, val: tuple | None, cfg: TrainConfig, *, run_dir, resume: bool, overwrite: bool,
               identity: dict, batch_kwargs=None, num_candidates: int | None = None) -> list[dict]:
        """The fit skeleton: build fresh networks under ``cfg.seed``, train them, mark the estimator fitted
        (after the caller's ``check_run_dir`` and :meth:`_refuse_unfit`).

        ``train``/``val``: the model's data columns (tuples of row-aligned arrays); ``identity``:
        what a training checkpoint must match to be resumed (see :meth:`Trainer.fit`).
        """
        pyro.set_rng_seed(cfg.seed)
        self._reset()  # free the current networks before building the fresh ones
        self._model, self._guide = self._networks()
        # the memory was checked by _refuse_unfit, before the current networks were freed
        trainer = Trainer(self._model, self._guide, cfg, batch_kwargs=batch_kwargs, num_candidates=num_candidates,
                          memory_checked=True)
        history = trainer.fit(train, val, run_dir, resume=resume, overwrite=overwrite, identity=identity)
        self.train_config, self.history_, self._fitted = cfg, history, True
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
            "train_config": self.train_config.to_dict() if self.train_config else None,
            "model_state": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "guide_state": {k: v.cpu() for k, v in self.guide.state_dict().items()},
            "history": self.history_,
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
        self = cls._from_checkpoint(data)
        self._model, self._guide = self._networks()
        try:
            self.model.load_state_dict(data["model_state"])
            self.guide.load_state_dict(data["guide_state"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match its configuration: {err}") from None
        self.model.to(map_location)
        self.guide.to(map_location)
        if data.get("train_config") is not None:
            self.train_config = from_dict(TrainConfig, data["train_config"])
        self.history_ = data.get("history")
        self._restore_fields(data)
        self._fitted = True
        return self
