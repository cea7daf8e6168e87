"""``SDLGMClassifier``: multi-label prediction that also predicts how many labels each row has."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Any, Literal

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
from sklearn.base import ClassifierMixin

from pyro_sdlgm.config import ClassifierOptions, TrainConfig, from_dict, options_dataclass, own_options
from pyro_sdlgm.data.arrays import as_csr, take_rows
from pyro_sdlgm.estimators.base import Estimator, validation_split
from pyro_sdlgm.estimators.decisions import Decision, Ranking, fit_temperature, label_scores, label_sets
from pyro_sdlgm.estimators.label_counts import OverflowPolicy, capped, class_labels, one_hot, resolve_counts
from pyro_sdlgm.exceptions import DataError
from pyro_sdlgm.inference.run_folder import check_run_dir
from pyro_sdlgm.inference.schedules import final_schedule
from pyro_sdlgm.model.conditional import ClassifierGuide, FitObjective, build_conditional
from pyro_sdlgm.model.registry import ComponentSpec
from pyro_sdlgm.model.spec import ModelSpec, Objective, SlotSelection, SparsityInference

logger = logging.getLogger(__name__)



class SDLGMClassifier(ClassifierMixin, Estimator):
    """Multi-label classifier whose label set is SDLGM's sparse support, capped at ``max_labels``.

    The count ``L_i`` and the labels are latent variables with ``x``-conditioned priors;
    prediction uses the ``x``-only networks: the predicted count ``L_hat`` (mode of the
    count network, temperature-scaled on the validation rows) and the top-``L_hat`` labels
    by inclusion probability. By default training maximizes the set bound (the count and the
    label set are observed; see :mod:`pyro_sdlgm.model.conditional`); ``fit_objective="elbo"``
    trains through a label-aware guide instead.

    A scikit-learn multi-label classifier: :meth:`fit` returns the classifier, :meth:`predict`
    gives 0/1 label sets, :meth:`predict_proba` the per-label inclusion probabilities and
    :meth:`decision_function` the ranking scores; :meth:`score` is scikit-learn's default for
    classifiers, the subset accuracy (the fraction of rows whose whole label set is right).
    ``get_params``/``set_params``/``clone`` see every argument below, the training options
    included. The Pyro model and guide are :attr:`model_` and :attr:`guide_`.

    Args:
        num_labels: ``K``; default None: taken from ``Y`` by :meth:`fit`.
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
        hidden: hidden sizes of the MLPs of the prior network and the guide.
        activation: activation of those MLPs.
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
        sparsity_inference: how the count is inferred (``"elbo"`` only), as for :class:`pyro_sdlgm.SDLGM`.
        objective: the KL terms of the ELBO (``"elbo"`` only), as for :class:`pyro_sdlgm.SDLGM`.
        slot_selection: whether the slots draw without replacement (``"elbo"`` only), as for
            :class:`pyro_sdlgm.SDLGM`.
        slot_layout: how the slots become Pyro sites (``"elbo"`` only), as for :class:`pyro_sdlgm.SDLGM`.
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
            bound's batch costs ``N x K`` with or without a shortlist. ``"all"`` is None.
        **training: the training options, keyword-only: the fields of
            :class:`~pyro_sdlgm.config.TrainConfig`, with its defaults.
    """

    checkpoint_format = "pyro_sdlgm.SDLGMClassifier"
    checkpoint_requires = ("params",)

    def __init__(self, num_labels: int | None = None, max_labels: int | None = None, *, input_dim: int | None = None,
                 include_zero: bool | None = None, on_overflow: OverflowPolicy = "error",
                 fit_objective: FitObjective = "set_bound", guide: ClassifierGuide = "label_aware",
                 per_slot: bool = False, hidden: tuple[int, ...] = (512,), activation: str = "relu",
                 dropout: float = 0.7, label_noise: float = 1e-3, ranking: Ranking = "inclusion",
                 decision: Decision = "f1", calibrate_count: bool = True,
                 sparsity_inference: SparsityInference = "relaxed", objective: Objective = "discrete_kl",
                 slot_selection: SlotSelection = "without_replacement",
                 num_candidates: int | Literal["auto", "all"] | None = "auto", slot_layout: ComponentSpec = "per_slot",
                 **training):
        self._store_parameters(locals())

    # -- options ----------------------------------------------------------------------------

    def _config_from_parameters(self) -> ClassifierConfig:
        return from_dict(ClassifierConfig, {name: getattr(self, name) for name in own_options(type(self))},
                         where=" passed to SDLGMClassifier")

    def _resolved_config(self, X: scipy.sparse.csr_matrix, Y: scipy.sparse.csr_matrix,
                         Y_val: scipy.sparse.csr_matrix | None) -> ClassifierConfig:
        """The parameters with what was left to the data decided (``input_dim``, ``num_labels``,
        ``max_labels``, ``include_zero``, ``num_candidates``; see
        :func:`~pyro_sdlgm.estimators.label_counts.resolve_counts`), checked."""
        requested = self._config_from_parameters()
        if requested.input_dim is not None and X.shape[1] != requested.input_dim:
            raise DataError(f"X has {X.shape[1]} features but the classifier was built for {requested.input_dim}")
        if requested.num_labels is not None and Y.shape[1] != requested.num_labels:
            raise DataError(f"Y has {Y.shape[1]} labels (columns) but num_labels={requested.num_labels}")
        options = dataclasses.asdict(requested)
        options.update(input_dim=int(X.shape[1]), num_labels=int(Y.shape[1]))
        wanted = {"max_labels": requested.max_labels, "include_zero": requested.include_zero,
                  "num_candidates": requested.num_candidates}
        resolve_counts(options, wanted, Y, *(() if Y_val is None else (Y_val,)))
        return from_dict(ClassifierConfig, options, where=" passed to SDLGMClassifier")

    @property
    def params(self) -> dict[str, Any]:
        """The options as a dict: once fitted (or loaded), with what the data decided."""
        return dataclasses.asdict(self.config)

    @property
    def networks_on_access(self) -> bool:
        """Whether reading ``model_`` or ``guide_`` builds them: once their sizes are known from the
        parameters (``input_dim``, ``num_labels``, ``max_labels`` and ``include_zero`` given)."""
        return None not in (self.input_dim, self.num_labels, self.max_labels, self.include_zero)

    @property
    def shortlist(self) -> bool:
        """True in shortlist mode (``num_candidates`` a number; ``"auto"`` is decided at ``fit``)."""
        return isinstance(self.config.num_candidates, int)

    def _batch_kwargs(self, batch: tuple) -> dict:
        """The Trainer's per-batch extra arguments: ``candidates`` ``(N, C)`` in shortlist mode.

        With the set bound the shortlist is for the training steps only: validation (the model
        in eval mode) scores the full bound over all ``K`` labels, the objective early stopping
        should follow (its batch costs ``N x K`` either way). The ELBO's shortlist mode, meant
        for label spaces too wide for that, validates on shortlists too.
        """
        if not self.shortlist or (self.config.fit_objective == "set_bound" and not self.model_.training):
            return {}
        x, y = batch
        return {"candidates": self.model_.candidates(x, y, self.config.num_candidates)}

    def _spec_of(self, config: ClassifierConfig) -> ModelSpec:
        return ModelSpec.from_options(config.input_dim, config.num_labels, config.max_labels,
                                      include_zero=config.include_zero, binary=True,
                                      options=dataclasses.asdict(config))

    @property
    def count_levels(self) -> np.ndarray:
        """The counts indexing the columns of :meth:`count_posterior`."""
        return self.spec.levels().numpy()

    def _networks(self, config: ClassifierConfig) -> tuple:
        return build_conditional(self._spec_of(config), config.guide, config.per_slot, config.hidden,
                                 config.activation, config.label_noise, config.dropout, config.fit_objective)

    def _features(self, X, name="X") -> scipy.sparse.csr_matrix:
        matrix = as_csr(X, name)
        self._check_features(X, reset=False)
        return self._check_width(matrix, name)

    def _check_width(self, matrix: scipy.sparse.csr_matrix, name: str) -> scipy.sparse.csr_matrix:
        expected = self.config.input_dim
        if expected is not None and matrix.shape[1] != expected:
            raise DataError(f"{name} has {matrix.shape[1]} features but the classifier was built for {expected}")
        return matrix

    def _labels(self, Y, n_rows: int, name="Y", num_labels: int | None = None) -> scipy.sparse.csr_matrix:
        """``Y (n_rows, K)`` as 0/1 CSR; ``K`` is ``num_labels`` (any, where None)."""
        matrix = as_csr(Y, name)
        if matrix.shape[0] != n_rows or (num_labels is not None and matrix.shape[1] != num_labels):
            raise DataError(f"{name} has shape {matrix.shape}, expected ({n_rows}, {num_labels or 'K'})")
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
            (batch,) = take_rows((matrix,), rows, self.device_)
            params = self.model_.prior_params(batch)
            # the count logits divided by the calibrated temperature (1 before calibration)
            yield params._replace(sparsity_logits=params.sparsity_logits / self.count_temperature_)

    # -- training ---------------------------------------------------------------------------

    def fit(self, X, Y, *, validation_data: tuple | None = None, run_dir: str | Path | None = None,
            resume: bool = False, overwrite: bool = False, **train_options) -> SDLGMClassifier:
        """Train by SVI from a seeded initialization; return the classifier (the per-epoch records
        are :attr:`history_`).

        Args:
            X: ``(N, D)`` features, dense or scipy sparse (batches are densified one at a time).
            Y: ``(N, K)`` 0/1 labels, dense or sparse; :meth:`predict` answers in the same form.
            validation_data: optional ``(X_val, Y_val)``; by default a seeded
                ``validation_fraction`` of the rows is held out for early stopping.
            run_dir: if given, per-epoch metrics and training checkpoints go there.
            resume: continue the interrupted training of ``run_dir`` from its newest checkpoint.
            overwrite: replace the checkpoints and metrics an earlier run left in ``run_dir``.
            **train_options: training options for this fit only, over the classifier's own (the
                fields of :class:`pyro_sdlgm.config.TrainConfig`).

        In shortlist mode (``num_candidates``) each training batch draws its candidates once
        for the model and the guide, and ``train_loss`` is the shortlist objective. With the
        set bound, ``val_loss`` is the full bound over all labels. With the ELBO it is the
        shortlist ELBO too (truncated slot distributions, without the constant
        ``(K - C) log(1 - eps)`` per row of the labels outside the shortlist), its validation
        candidates drawn under the validation seed, so ``val_loss`` stays comparable across epochs.
        A refused fit (bad data or options, too little memory) leaves a fitted classifier as it was.
        """
        cfg = self._train_config(train_options, "SDLGMClassifier.fit()")
        check_run_dir(run_dir, resume, overwrite)
        if Y is None:
            raise DataError("SDLGMClassifier requires y to be passed, but the target y is None")
        sparse_output = scipy.sparse.issparse(Y)
        output_dtype = np.int8 if sparse_output else np.asarray(Y).dtype
        classes = class_labels(Y)
        if classes is not None:  # single-label classification: label sets of one label
            Y = one_hot(Y, classes)
            if validation_data is not None and isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
                validation_data = (validation_data[0], one_hot(validation_data[1], classes, "Y_val"))
        config, X_fit, Y_fit, val = self._prepare(X, Y, validation_data, cfg)
        # the set bound holds no slot tensor: its batch costs N x K numbers (num_candidates=0 in the estimate)
        candidates = 0 if config.fit_objective == "set_bound" else config.num_candidates
        self._refuse_unfit(config, cfg, X_fit.shape[0], 0 if val is None else val[0].shape[0],
                           num_candidates=candidates)
        self._train(config, (X_fit, Y_fit), val, cfg, run_dir=run_dir, resume=resume, overwrite=overwrite,
                    identity={"classifier": dataclasses.asdict(config)}, batch_kwargs=self._batch_kwargs,
                    num_candidates=candidates)
        self._check_features(X, reset=True)
        self.multilabel_ = classes is None
        self.classes_ = np.arange(config.num_labels) if classes is None else classes
        self.sparse_output_, self._output_dtype = sparse_output, np.dtype(output_dtype).str
        self.count_temperature_ = 1.0
        if config.calibrate_count and val is not None:
            self.count_temperature_ = self._fit_count_temperature(*val, cfg.eval_batch_size)
        return self

    def _prepare(self, X, Y, validation_data, cfg: TrainConfig) -> tuple:
        """Check the data, decide what is left to it (:meth:`_resolved_config`), apply the overflow
        policy and hold out the validation rows: ``(config, X, Y, val)`` with ``val`` None or
        ``(X_val, Y_val)``, all CSR."""
        X = as_csr(X, "X")
        Y = self._labels(Y, X.shape[0])
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise DataError("validation_data must be a pair (X_val, Y_val)")
            X_val = as_csr(validation_data[0], "X_val")
            if X_val.shape[1] != X.shape[1]:
                raise DataError(f"X_val has {X_val.shape[1]} features but X has {X.shape[1]}")
            val = (X_val, self._labels(validation_data[1], X_val.shape[0], "Y_val", Y.shape[1]))
        config = self._resolved_config(X, Y, None if val is None else val[1])
        options = dataclasses.asdict(config)
        Y = capped(Y, options)
        if val is not None:
            val = (val[0], capped(val[1], options, "Y_val"))
        else:
            fit_rows, val_rows = validation_split(X.shape[0], cfg.validation_fraction, cfg.seed)
            if val_rows is not None:
                val = (X[val_rows], Y[val_rows])
                X, Y = X[fit_rows], Y[fit_rows]
        return config, X, Y, val

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
            if labels.shape != (n_rows, self.spec.latent_dim):
                raise DataError(f"Y has shape {labels.shape}, expected ({n_rows}, {self.spec.latent_dim})")
            true_counts = np.asarray((labels != 0).sum(1)).ravel().astype(np.int64)
        schedule = final_schedule(self.train_config_)
        batches = ((params.sparsity_logits.softmax(-1), partial(self.guide_.place_sites, params, None), (), schedule,
                    None) for params in self._prior_params(X, batch_size, "posterior"))
        probs, draws = sample_batches(self.spec, batches, num_samples, seed, self.device_, progress=progress,
                                      num_batches=batch_count(X.shape[0], batch_size), inclusion=inclusion)
        return sparsity_inference_data(
            self.spec, probs, draws, num_samples=num_samples, seed=seed, model_name="SDLGMClassifier",
            obs_names=obs_names, observed=None if true_counts is None else {"label_count": true_counts},
            observed_dims={"label_count": ["obs"]},
        )

    def predict_scores(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, K)`` label scores for ranking (P@k, nDCG@k)."""
        return torch.cat([label_scores(p, self.spec, self.config.ranking).cpu() for p in self._prior_params(X, batch_size, "predict_scores")]).numpy()

    def predict_top_labels(self, X, k: int = 5, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, min(k, K))`` int64 label indices ranked best first by :meth:`predict_scores`.

        The ranking of :func:`pyro_sdlgm.analysis.metrics.top_k` (ties: lower index first), taken one
        batch at a time, so a wide label space never holds more than ``(batch_size, K)`` scores.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}")
        parts = [top_k(label_scores(p, self.spec, self.config.ranking).cpu().numpy(), k)
                 for p in self._prior_params(X, batch_size, "predict_top_labels")]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, min(k, self.spec.latent_dim)),
                                                                           dtype=np.int64)

    def predict(self, X, *, batch_size: int = 1024):
        """``(N, K)`` 0/1 label sets, in the form of the training labels: a CSR matrix (int8) when
        ``fit`` got sparse ``Y``, else a dense array of ``Y``'s dtype; for class labels ``(N,)``, the most
        probable class of each row (from :attr:`classes_`). With ``decision="f1"`` the F1-optimal sets
        (:func:`~pyro_sdlgm.estimators.decisions.f1_optimal_sets`), with ``"count"`` the top-``L_hat``
        labels by :meth:`predict_scores` (``L_hat`` from the count network; with ``ranking="greedy"``
        the greedy slot picks)."""
        self._check_fitted("predict")
        if not self.multilabel_:  # class labels: the most probable class
            return self.classes_[self.predict_proba(X, batch_size=batch_size).argmax(1)]
        parts = [scipy.sparse.csr_matrix(label_sets(params, self.spec, self.config.ranking, self.config.decision,
                                                    self.guide_).cpu().numpy())
                 for params in self._prior_params(X, batch_size, "predict")]
        labels = scipy.sparse.vstack(parts).tocsr().astype(np.int8)
        return labels if self.sparse_output_ else labels.toarray().astype(self._output_dtype)

    def predict_proba(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, K)`` per-label inclusion probabilities ``P(label k in S | x) = 1 - prod_l (1 - g_l p_lk)``
        (the slots taken as independent; see ``ranking="inclusion"``), as scikit-learn's multi-label
        classifiers give them: one column per label, dense (``(batch_size, K)`` at a time)."""
        return torch.cat([label_scores(p, self.spec, "inclusion").cpu()
                          for p in self._prior_params(X, batch_size, "predict_proba")]).numpy()

    def decision_function(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, K)`` scores in scikit-learn's sign convention: positive exactly for the labels
        :meth:`predict` gives. For a multi-label classifier the inclusion probability
        (:meth:`predict_proba`) of a predicted label, and that minus 1 for the others, so the
        predicted labels rank first; the ranking of the P@k figures is :meth:`predict_scores`. For
        class labels: the class probabilities, or with two classes the ``(N,)`` log-odds of the
        second class."""
        proba = self.predict_proba(X, batch_size=batch_size)  # checks that the classifier is fitted
        if not self.multilabel_:
            if len(self.classes_) == 2:
                log_p = np.log(np.clip(proba, 1e-12, None))
                return log_p[:, 1] - log_p[:, 0]
            return proba
        chosen = self.predict(X, batch_size=batch_size)
        chosen = chosen.toarray() if scipy.sparse.issparse(chosen) else chosen
        return np.where(chosen != 0, proba, proba - 1.0)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = True
        return tags

    # -- persistence ------------------------------------------------------------------------

    def _checkpoint_fields(self) -> dict[str, Any]:
        return {"params": self.params, "count_temperature": self.count_temperature_,
                "sparse_output": self.sparse_output_, "output_dtype": self._output_dtype,
                "classes": None if self.multilabel_ else self.classes_.tolist()}

    @classmethod
    def _from_checkpoint(cls, data) -> tuple[SDLGMClassifier, ClassifierConfig]:
        config = from_dict(ClassifierConfig, data["params"])
        return cls(**dataclasses.asdict(config)), config

    def _restore_fields(self, data) -> None:
        self.count_temperature_ = float(data.get("count_temperature", 1.0))
        self.sparse_output_ = bool(data.get("sparse_output", True))  # before it was recorded: always CSR
        self._output_dtype = data.get("output_dtype", "|i1")
        classes = data.get("classes")
        self.multilabel_ = classes is None
        self.classes_ = np.arange(self.spec.latent_dim) if classes is None else np.asarray(classes)


#: the ``[classifier]`` config section: the options :class:`SDLGMClassifier`'s constructor declares
ClassifierConfig = options_dataclass("ClassifierConfig", SDLGMClassifier, ClassifierOptions)
