"""``SDLGMClassifier``: multi-label prediction that also predicts how many labels each row has."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

from pyro_sdlgm.analysis.metrics import top_k
from pyro_sdlgm.analysis.posterior import (
    CHUNK_BYTES,
    Inclusion,
    batch_count,
    check_num_samples,
    resolve_inclusion,
    sample_batches,
    sparsity_inference_data,
)
from pyro_sdlgm.config import TrainConfig
from pyro_sdlgm.config import ClassifierConfig as C
from pyro_sdlgm.data.arrays import as_csr, take_rows
from pyro_sdlgm.estimators.base import Estimator, validation_split
from pyro_sdlgm.estimators.decisions import DECISIONS, RANKINGS, fit_temperature, label_scores, label_sets
from pyro_sdlgm.estimators.label_counts import OVERFLOW_POLICIES, capped, check_candidates, resolve_counts
from pyro_sdlgm.exceptions import ConfigError, DataError
from pyro_sdlgm.inference.run_folder import check_run_dir
from pyro_sdlgm.inference.schedules import final_schedule
from pyro_sdlgm.model.conditional import build_conditional
from pyro_sdlgm.model.spec import ModelSpec

logger = logging.getLogger(__name__)



class SDLGMClassifier(Estimator):
    """Multi-label classifier whose label set is SDLGM's sparse support, capped at ``max_labels``.

    The count ``L_i`` and the labels are latent variables with ``x``-conditioned priors;
    prediction uses the ``x``-only networks: the predicted count ``L_hat`` (mode of the
    count network, temperature-scaled on the validation rows) and the top-``L_hat`` labels
    by inclusion probability. By default training maximizes the set bound (the count and the
    label set are observed; see :mod:`pyro_sdlgm.model.conditional`); ``fit_objective="elbo"``
    trains through a label-aware guide instead.

    Args:
        num_labels: ``K``.
        max_labels: ``L0``, the most labels a prediction can hold (``1 <= L0 <= K``); default
            None: the most labels a training row has (with the set bound a larger ``L0``
            costs one more output of the count network, so no training row needs truncating).
        input_dim: ``D``; default: taken from the data at ``fit``.
        include_zero: allow predicting no label (counts ``0..L0``); default None: True when a
            training or validation row has no label.
        on_overflow: what to do with training rows that have more than ``L0`` labels:
            ``"error"`` (default) or ``"truncate"`` (keep the ``L0`` labels that are most
            frequent in the training data; logged with the number of rows affected).
        fit_objective: ``"set_bound"`` (default; needs ``per_slot=False``) or
            ``"elbo"`` (the label-aware guide's ELBO over the sampled slots).
        guide: with ``"elbo"``: ``"label_aware"`` (``q(L, labels | x, y)``) or
            ``"prior_as_guide"`` (ablation). Not used by the set bound.
        per_slot: one logit vector per slot (``"elbo"`` only; default shared).
        hidden, activation: MLP sizes of the prior network and the guide.
        dropout: dropout rate after each hidden layer of the prior network, in training.
        label_noise: ``eps`` in ``y ~ Bernoulli(eps + (1 - 2 eps) s)`` (``"elbo"``).
        ranking: ``"inclusion"`` (default: labels by ``1 - prod_l (1 - g_l p_lk)``, the inclusion
            probability with the slots taken as independent; with shared slots it orders the labels
            as ``p_k`` does)
            or ``"greedy"`` (the zero-temperature slot picks first, in slot order, then inclusion).
        decision: the label sets of :meth:`predict`: ``"f1"`` (default: the plug-in
            F1-optimal set of Dembczynski et al. 2011 under the model's joint distribution of the
            count and the labels, :func:`~pyro_sdlgm.estimators.decisions.f1_optimal_sets`) or ``"count"`` (the top-``L_hat``
            labels). :meth:`predict_count` is the count network's mode either way.
        calibrate_count: after training, divide the count logits by the temperature that
            minimizes the negative log-likelihood of the validation rows' counts (Guo et al.,
            2017; ``count_temperature_``; 1 without validation rows). It changes no mode.
        sparsity_inference, objective, slot_selection, slot_layout: as for :class:`pyro_sdlgm.SDLGM`
            (``"elbo"``).
        num_candidates: ``"auto"`` (default: :func:`~pyro_sdlgm.estimators.label_counts.auto_candidates`, 40 or ``2 L0`` labels a
            row with the set bound when fewer than ``K``, else all), None (the full mode: every
            slot draws over all ``K`` labels) or ``C`` with ``L0 <= C <= K``: the shortlist
            mode. With the set bound, each batch scores each row's label set under the slot
            distribution truncated to a shortlist of ``C`` labels (see
            :mod:`pyro_sdlgm.model.conditional`). With ``"elbo"`` it is the mode for wide label
            spaces: each training (and validation) batch then draws its slots over a per-row
            shortlist of ``C`` labels (the row's true labels, then hard negatives, the highest
            prior-network scores among the other labels, for half of the remaining
            places, then uniform random negatives); see :mod:`pyro_sdlgm.model.conditional` for
            the approximation (slot distributions truncated to the shortlist). Needs
            ``per_slot=False`` (per-slot heads cost ``L0 x K x hidden`` parameters).
            Prediction still ranks all ``K`` labels, with ``(N, K)`` memory per batch. The set
            bound's batch costs ``N x K`` with or without a shortlist.
    """

    checkpoint_format = "pyro_sdlgm.SDLGMClassifier"
    checkpoint_requires = ("params",)

    def __init__(self, num_labels: int, max_labels: int | None = C.max_labels, *, input_dim: int | None = None,
                 include_zero: bool | None = C.include_zero, on_overflow: str = C.on_overflow,
                 fit_objective: str = C.fit_objective, guide: str = C.guide, per_slot: bool = C.per_slot,
                 hidden: Sequence[int] = C.hidden, activation: str = C.activation, dropout: float = C.dropout,
                 label_noise: float = C.label_noise, ranking: str = C.ranking, decision: str = C.decision,
                 calibrate_count: bool = C.calibrate_count, sparsity_inference: str = C.sparsity_inference,
                 objective: str = C.objective, slot_selection: str = C.slot_selection,
                 num_candidates: int | str | None = C.num_candidates, slot_layout: str | dict = C.slot_layout):
        arguments = dict(locals())  # the constructor's arguments are the classifier's parameters
        del arguments["self"]
        if on_overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
        if ranking not in RANKINGS:
            raise ConfigError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
        if decision not in DECISIONS:
            raise ConfigError(f"decision must be one of {DECISIONS}, got {decision!r}")
        for key, value in (("num_labels", num_labels), ("max_labels", max_labels)):
            if value is None and key == "max_labels":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{key} must be a positive integer{' or None' if key == 'max_labels' else ''}, "
                                  f"got {value!r}")
        num_labels = int(num_labels)
        max_labels = None if max_labels is None else int(max_labels)
        if max_labels is not None and max_labels > num_labels:
            raise ConfigError(f"max_labels={max_labels} exceeds num_labels={num_labels}")
        for key, value in (("include_zero", include_zero), ("calibrate_count", calibrate_count)):
            if not isinstance(value, bool) and not (key == "include_zero" and value is None):
                raise ConfigError(f"{key} must be true or false{' or None' if key == 'include_zero' else ''}, "
                                  f"got {value!r}")
        if num_candidates == "all":
            num_candidates = None
        if num_candidates is not None and num_candidates != "auto":
            num_candidates = check_candidates(num_candidates, num_labels, max_labels or 1, per_slot)
        self._requested = {"max_labels": max_labels, "include_zero": include_zero, "num_candidates": num_candidates}
        self.params = {**arguments, "num_labels": num_labels, "max_labels": max_labels,
                       "hidden": list(hidden) if isinstance(hidden, Sequence) else hidden,
                       "num_candidates": num_candidates}
        if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral)
                                      or input_dim < 1):
            raise ConfigError(f"input_dim must be a positive integer or None, got {input_dim!r}")
        self._fixed_input_dim = None if input_dim is None else int(input_dim)
        # build once now, on a placeholder width if needed and on the meta device (nothing is
        # allocated), so that bad options fail here, not in fit()
        with torch.device("meta"):
            build_conditional(self._spec(self._fixed_input_dim or 1, max_labels or min(2, num_labels),
                                         bool(include_zero)), *self._network_options())
        self._reset()
        self.count_temperature_ = 1.0

    # -- helpers ----------------------------------------------------------------------------

    @property
    def networks_on_access(self) -> bool:
        """Whether reading ``model`` or ``guide`` builds them: once their sizes are known (``input_dim``,
        ``max_labels`` and ``include_zero`` given at construction, or decided at ``fit``)."""
        p = self.params
        return p["input_dim"] is not None and p["max_labels"] is not None and p["include_zero"] is not None

    @property
    def shortlist(self) -> bool:
        """True in shortlist mode (``num_candidates`` a number; ``"auto"`` is decided at ``fit``)."""
        candidates = self.params.get("num_candidates")
        return candidates is not None and candidates != "auto"

    def _batch_kwargs(self, batch: tuple) -> dict:
        """The Trainer's per-batch extra arguments: ``candidates`` ``(N, C)`` in shortlist mode.

        With the set bound the shortlist is for the training steps only: validation (the model
        in eval mode) scores the full bound over all ``K`` labels, the objective early stopping
        should follow (its batch costs ``N x K`` either way). The ELBO's shortlist mode, meant
        for label spaces too wide for that, validates on shortlists too.
        """
        if not self.shortlist or (self.params["fit_objective"] == "set_bound" and not self.model.training):
            return {}
        x, y = batch
        return {"candidates": self.model.candidates(x, y, self.params["num_candidates"])}

    @property
    def spec(self) -> ModelSpec:
        return self._spec(self.params["input_dim"], self.params["max_labels"], self.params["include_zero"])

    def _spec(self, input_dim: int, max_labels: int, include_zero: bool) -> ModelSpec:
        return ModelSpec.from_options(input_dim, self.params["num_labels"], max_labels, include_zero=include_zero,
                                      binary=True, options=self.params)

    @property
    def count_levels(self) -> np.ndarray:
        """The counts indexing the columns of :meth:`count_posterior`."""
        return self.spec.levels().numpy()

    def _network_options(self) -> tuple:
        p = self.params
        return (p["guide"], p["per_slot"], p["hidden"], p["activation"], p["label_noise"], p["dropout"],
                p["fit_objective"])

    def _networks(self) -> tuple:
        return build_conditional(self.spec, *self._network_options())

    def _features(self, X, name="X") -> scipy.sparse.csr_matrix:
        return self._check_width(as_csr(X, name), name)

    def _check_width(self, matrix: scipy.sparse.csr_matrix, name: str) -> scipy.sparse.csr_matrix:
        expected = self.params["input_dim"]
        if expected is not None and matrix.shape[1] != expected:
            raise DataError(f"{name} has {matrix.shape[1]} features but the classifier was built for {expected}")
        return matrix

    def _labels(self, Y, n_rows: int, name="Y") -> scipy.sparse.csr_matrix:
        matrix = as_csr(Y, name)
        if matrix.shape != (n_rows, self.params["num_labels"]):
            raise DataError(f"{name} has shape {matrix.shape}, expected ({n_rows}, {self.params['num_labels']})")
        if not np.isin(matrix.data, (0.0, 1.0)).all():
            bad = matrix.data[~np.isin(matrix.data, (0.0, 1.0))][0]
            raise DataError(f"{name} must hold only 0 and 1, found {float(bad)}")
        matrix.eliminate_zeros()
        return matrix

    def prior_params(self, X, *, batch_size: int = 1024):
        """The ``x``-only networks' parameters of ``X (N, D)``, one
        :class:`~pyro_sdlgm.model.guides.GuideParams` per batch of ``batch_size`` rows:
        ``sparsity_logits (B, num_levels)`` (divided by ``count_temperature_``) and
        ``slot_logits (B, 1 or L0, K)``. What every prediction method reads; for studies of
        other read-outs (e.g. :func:`~pyro_sdlgm.estimators.decisions.label_scores`)."""
        yield from self._prior_params(X, batch_size, "prior_params")

    @torch.no_grad()
    def _prior_params(self, X, batch_size: int, method: str):
        self._check_fitted(method)
        matrix = self._features(X)
        for rows in self._eval_batches(matrix.shape[0], batch_size):
            (batch,) = take_rows((matrix,), rows, self.device)
            params = self.model.prior_params(batch)
            # the count logits divided by the calibrated temperature (1 before calibration)
            yield params._replace(sparsity_logits=params.sparsity_logits / self.count_temperature_)

    # -- training ---------------------------------------------------------------------------

    def fit(self, X, Y, *, validation_data: tuple | None = None, run_dir: str | Path | None = None,
            resume: bool = False, overwrite: bool = False, **train_options) -> list[dict]:
        """Train by SVI from a seeded initialization; return the per-epoch history.

        Args:
            X: ``(N, D)`` features, dense or scipy sparse (batches are densified one at a time).
            Y: ``(N, K)`` 0/1 labels, dense or sparse.
            validation_data: optional ``(X_val, Y_val)``; by default a seeded
                ``validation_fraction`` of the rows is held out for early stopping.
            run_dir: if given, per-epoch metrics and training checkpoints go there.
            resume: continue the interrupted training of ``run_dir`` from its newest checkpoint.
            overwrite: replace the checkpoints and metrics an earlier run left in ``run_dir``.
            **train_options: fields of :class:`pyro_sdlgm.config.TrainConfig`.

        In shortlist mode (``num_candidates``) each training batch draws its candidates once
        for the model and the guide, and ``train_loss`` is the shortlist objective. With the
        set bound, ``val_loss`` is the full bound over all labels. With the ELBO it is the
        shortlist ELBO too (truncated slot distributions, without the constant
        ``(K - C) log(1 - eps)`` per row of the labels outside the shortlist), its validation
        candidates drawn under the validation seed, so ``val_loss`` stays comparable across epochs.
        """
        cfg = self._train_config(train_options, "SDLGMClassifier.fit()")
        check_run_dir(run_dir, resume, overwrite)
        previous = dict(self.params)
        # the set bound holds no slot tensor: its batch costs N x K numbers (num_candidates=0 in the estimate)
        candidates = 0 if self.params["fit_objective"] == "set_bound" else None
        try:
            X, Y, val = self._prepare(X, Y, validation_data, cfg)
            if candidates is None:
                candidates = self.params["num_candidates"]
            self._refuse_unfit(cfg, X.shape[0], 0 if val is None else val[0].shape[0], num_candidates=candidates)
        except Exception:
            self.params = previous  # a refused fit leaves the classifier (and its fitted model) as it was
            raise
        self.count_temperature_ = 1.0
        self._train((X, Y), val, cfg, run_dir=run_dir, resume=resume, overwrite=overwrite,
                    identity={"classifier": dict(self.params)}, batch_kwargs=self._batch_kwargs,
                    num_candidates=candidates)
        if self.params["calibrate_count"] and val is not None:
            self.count_temperature_ = self._fit_count_temperature(*val, cfg.eval_batch_size)
        return self.history_

    def _prepare(self, X, Y, validation_data, cfg: TrainConfig) -> tuple:
        """Check the data, decide what is left to it (``input_dim``, ``max_labels``, ``include_zero``,
        ``num_candidates``), apply the overflow policy and hold out the validation rows: ``(X, Y, val)`` with ``val`` None or ``(X_val, Y_val)``, all CSR."""
        X = as_csr(X, "X")
        # the width given at construction, or that of the data (inferred anew at each fit)
        self.params["input_dim"] = self._fixed_input_dim or int(X.shape[1])
        X = self._check_width(X, "X")
        Y = self._labels(Y, X.shape[0])
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise DataError("validation_data must be a pair (X_val, Y_val)")
            X_val = self._features(validation_data[0], "X_val")
            val = (X_val, self._labels(validation_data[1], X_val.shape[0], "Y_val"))
        resolve_counts(self.params, self._requested, Y, *(() if val is None else (val[1],)))
        Y = capped(Y, self.params)
        if val is not None:
            val = (val[0], capped(val[1], self.params, "Y_val"))
        else:
            fit_rows, val_rows = validation_split(X.shape[0], cfg.validation_fraction, cfg.seed)
            if val_rows is not None:
                val = (X[val_rows], Y[val_rows])
                X, Y = X[fit_rows], Y[fit_rows]
        return X, Y, val

    @torch.no_grad()
    def _fit_count_temperature(self, X_val, Y_val, batch_size: int) -> float:
        """The temperature ``T`` that minimizes the validation rows' mean ``-log softmax(logits / T)[count]``
        (bounded 1-D search over ``log T`` in ``[-4, 4]``, scipy's ``minimize_scalar``), over the rows
        whose count is one of the model's levels."""
        self.count_temperature_ = 1.0
        logits = torch.cat([p.sparsity_logits.cpu() for p in self._prior_params(X_val, batch_size, "fit")]).double()
        target = torch.as_tensor(np.diff(Y_val.indptr) - self.spec.min_level, dtype=torch.long)
        in_range = (target >= 0) & (target < self.spec.num_levels)  # rows without a label under the ELBO
        if not bool(in_range.any()):
            logger.warning("no validation row has a count the model can hold: the count stays uncalibrated")
            return 1.0
        logits, target = logits[in_range], target[in_range]
        return fit_temperature(logits, target)

    # -- prediction -------------------------------------------------------------------------

    def count_posterior(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``p(L_i = l | x_i)`` from the count network, ``(N, L0)`` (``(N, L0 + 1)`` with ``include_zero``)."""
        return torch.cat([p.sparsity_logits.softmax(-1).cpu() for p in
                          self._prior_params(X, batch_size, "count_posterior")]).numpy()

    def predict_count(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``L_hat_i``, the mode of the count network, ``(N,)`` int."""
        return self.count_levels[self.count_posterior(X, batch_size=batch_size).argmax(-1)]

    @torch.no_grad()
    def posterior(self, X, Y=None, *, num_samples: int = 100, seed: int = 0, batch_size: int = 256, obs_names=None,
                  progress: bool = False, inclusion: Inclusion = "auto"):
        """The predicted distribution over each row's label count and labels, as ArviZ data.

        At prediction time labels are unknown, so this is the distribution of the ``x``-only
        networks (the count network ``p(L_i | x_i)`` and the slot networks), which training
        fits to the observed counts and label sets (the set bound) or to the label-aware
        posterior (the ELBO). Same groups as :meth:`pyro_sdlgm.SDLGM.posterior`
        (``sparsity`` draws are label counts, ``inclusion_probs`` ``(N, K)`` label
        probabilities, or ``top_dims``/``top_inclusion`` with ``inclusion="ranked"``, the
        default above 1,024 labels); with ``Y`` ``(N, K)``, ``observed_data.label_count`` holds the true
        counts (for :func:`pyro_sdlgm.analysis.inspection.count_calibration`).

        Memory: a draw holds the ``L0`` slot sites over all ``K`` labels, about ``8 L0 K``
        bytes per row (no shortlist at prediction). In shortlist mode ``batch_size`` is
        therefore lowered, if needed, so that one draw of a batch stays within 256 MB
        (logged); the full mode uses ``batch_size`` as given. ``progress`` shows a progress
        bar over the batches.
        """
        num_samples = check_num_samples(num_samples)
        self._check_fitted("posterior")
        inclusion = resolve_inclusion(inclusion, self.spec)
        if self.shortlist:
            per_row = 8 * self.spec.max_sparsity * self.spec.latent_dim
            rows = max(1, CHUNK_BYTES // per_row)
            if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > rows:
                logger.info("posterior: batch_size %d lowered to %d rows so that a draw of %d slots over %d labels "
                            "stays within %d MB", batch_size, rows, self.spec.max_sparsity, self.spec.latent_dim,
                            CHUNK_BYTES // 2**20)
                batch_size = rows
        true_counts = None
        X = self._features(X)  # checked and converted once; _prior_params reuses the CSR matrix as it is
        if Y is not None:
            labels = as_csr(Y, "Y")
            n_rows = X.shape[0]
            if labels.shape != (n_rows, self.params["num_labels"]):
                raise DataError(f"Y has shape {labels.shape}, expected ({n_rows}, {self.params['num_labels']})")
            true_counts = np.asarray((labels != 0).sum(1)).ravel().astype(np.int64)
        schedule = final_schedule(self.train_config)
        batches = ((params.sparsity_logits.softmax(-1), partial(self.guide.place_sites, params, None), (), schedule,
                    None) for params in self._prior_params(X, batch_size, "posterior"))
        probs, draws = sample_batches(self.spec, batches, num_samples, seed, self.device, progress=progress,
                                      num_batches=batch_count(X.shape[0], batch_size), inclusion=inclusion)
        return sparsity_inference_data(
            self.spec, probs, draws, num_samples=num_samples, seed=seed, model_name="SDLGMClassifier",
            obs_names=obs_names, observed=None if true_counts is None else {"label_count": true_counts},
            observed_dims={"label_count": ["obs"]},
        )

    def predict_scores(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, K)`` label scores for ranking (P@k, nDCG@k)."""
        return torch.cat([label_scores(p, self.spec, self.params["ranking"]).cpu() for p in self._prior_params(X, batch_size, "predict_scores")]).numpy()

    def predict_top_labels(self, X, k: int = 5, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, min(k, K))`` int64 label indices ranked best first by :meth:`predict_scores`.

        The ranking of :func:`pyro_sdlgm.analysis.metrics.top_k` (ties: lower index first), taken one
        batch at a time, so a wide label space never holds more than ``(batch_size, K)`` scores.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}")
        parts = [top_k(label_scores(p, self.spec, self.params["ranking"]).cpu().numpy(), k)
                 for p in self._prior_params(X, batch_size, "predict_top_labels")]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, min(k, self.spec.latent_dim)),
                                                                           dtype=np.int64)

    def predict(self, X, *, batch_size: int = 1024) -> scipy.sparse.csr_matrix:
        """``(N, K)`` CSR 0/1 label sets: with ``decision="f1"`` the F1-optimal sets
        (:func:`~pyro_sdlgm.estimators.decisions.f1_optimal_sets`), with ``"count"`` the top-``L_hat`` labels by :meth:`predict_scores`
        (``L_hat`` from the count network; with ``ranking="greedy"`` the greedy slot picks)."""
        parts = [scipy.sparse.csr_matrix(label_sets(params, self.spec, self.params["ranking"], self.params["decision"], self.guide).cpu().numpy())
                 for params in self._prior_params(X, batch_size, "predict")]
        return scipy.sparse.vstack(parts).tocsr().astype(np.int8)

    # -- persistence ------------------------------------------------------------------------

    def _checkpoint_fields(self) -> dict[str, Any]:
        return {"params": self.params, "count_temperature": self.count_temperature_}

    @classmethod
    def _from_checkpoint(cls, data) -> SDLGMClassifier:
        params: dict[str, Any] = dict(data["params"])
        num_labels, max_labels = params.pop("num_labels"), params.pop("max_labels")
        return cls(num_labels, max_labels, **params)

    def _restore_fields(self, data) -> None:
        self.count_temperature_ = float(data.get("count_temperature", 1.0))
