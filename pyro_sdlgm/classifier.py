"""``SDLGMClassifier``: multi-label prediction that also predicts how many labels each row has."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import scipy.sparse
import torch

from .arrays import dense_numeric_2d
from .checkpoint import atomic_save, load_checkpoint
from .config import ClassifierConfig as C
from .config import TrainConfig, from_dict
from .conditional import build_conditional
from .exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from .guides import GuideParams
from .metrics import top_k
from .posterior import CHUNK_BYTES, batch_count, check_num_samples, sample_batches, sparsity_inference_data
from .resources import guard_training_memory
from .schedules import final_schedule
from .spec import ModelSpec
from .support import greedy_picks, slot_gates, soft_support
from .training import Trainer, check_run_dir, take_rows

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pyro_sdlgm.SDLGMClassifier"
CHECKPOINT_VERSION = 1
OVERFLOW_POLICIES = ("error", "truncate")


def _as_matrix(A, name: str) -> scipy.sparse.csr_matrix:
    """Dense or sparse ``(N, M)`` input as float32 CSR, checked for shape, emptiness and finiteness."""
    if scipy.sparse.issparse(A):
        matrix = scipy.sparse.csr_matrix(A, dtype=np.float32)
        if matrix.shape[0] == 0:
            raise DataError(f"{name} is empty (shape {matrix.shape})")
    else:
        matrix = scipy.sparse.csr_matrix(dense_numeric_2d(A, name).astype(np.float32))
    if not np.isfinite(matrix.data).all():
        row = int(np.searchsorted(matrix.indptr, np.flatnonzero(~np.isfinite(matrix.data))[0], side="right") - 1)
        raise DataError(f"{name} contains non-finite values (first in row {row})")
    return matrix


def validation_split(n_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(fit_rows, val_rows)``: the seeded hold-out :meth:`SDLGMClassifier.fit` uses when no
    validation data is given (``val_rows`` None when ``fraction`` leaves no row on either side)."""
    n_val = int(round(fraction * n_rows))
    if fraction <= 0 or not 1 <= n_val < n_rows:
        return np.arange(n_rows), None
    order = np.random.default_rng(seed).permutation(n_rows)
    return order[n_val:], order[:n_val]


def shared_inclusion(gates: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``1 - prod_l (1 - g_l p_k)`` for slots sharing one distribution ``probs``, without an ``(N, L0, K)`` tensor.

    Args:
        gates: ``(N, L0)`` slot gates ``P(L >= l)``.
        probs: ``(N, K)`` the slots' shared label probabilities.

    Returns:
        ``(N, K)``, equal to :func:`pyro_sdlgm.support.soft_support` of ``probs`` repeated for
        every slot (up to rounding), computed one slot at a time in ``N x K`` memory.
    """
    remaining = torch.ones_like(probs)
    for index in range(gates.shape[-1]):
        remaining.mul_(1.0 - gates[:, index:index + 1] * probs)
    return 1.0 - remaining


class SDLGMClassifier:
    """Multi-label classifier whose label set is SDLGM's sparse support, capped at ``max_labels``.

    The count ``L_i`` and the labels are latent variables with ``x``-conditioned priors
    trained through a label-aware guide; prediction uses the ``x``-only networks: the
    predicted count ``L_hat`` (mode of the count network) and the top-``L_hat`` labels.

    Args:
        num_labels: ``K``.
        max_labels: ``L0``, the most labels a prediction can hold (``1 <= L0 <= K``).
        input_dim: ``D``; default: taken from the data at ``fit``.
        include_zero: allow predicting no label (counts ``0..L0``).
        on_overflow: what to do with training rows that have more than ``L0`` labels:
            ``"error"`` (default) or ``"truncate"`` (keep the ``L0`` labels that are most
            frequent in the training data; logged with the number of rows affected).
        guide: ``"label_aware"`` (``q(L, labels | x, y)``) or ``"prior_as_guide"`` (ablation).
        per_slot: one logit vector per slot (else shared).
        hidden, activation: MLP sizes of the prior network and the guide.
        label_noise: ``eps`` in ``y ~ Bernoulli(eps + (1 - 2 eps) s)``.
        sparsity_inference, objective, slot_selection, slot_layout: as for :class:`pyro_sdlgm.SDLGM`.
        num_candidates: None (default, the full mode: every slot draws over all ``K``
            labels) or ``C`` with ``L0 <= C <= K``: the shortlist mode for wide label spaces.
            Each training (and validation) batch then draws its slots over a per-row
            shortlist of ``C`` labels (the row's true labels, then hard negatives, the
            highest prior-network scores among the other labels, for half of the remaining
            places, then uniform random negatives); see :mod:`pyro_sdlgm.conditional` for
            the approximation (slot distributions truncated to the shortlist). Needs
            ``per_slot=False`` (per-slot heads cost ``L0 x K x hidden`` parameters).
            Prediction still ranks all ``K`` labels, with ``(N, K)`` memory per batch.
    """

    def __init__(self, num_labels: int, max_labels: int = C.max_labels, *, input_dim: int | None = None,
                 include_zero: bool = C.include_zero, on_overflow: str = C.on_overflow, guide: str = C.guide,
                 per_slot: bool = C.per_slot, hidden: Sequence[int] = C.hidden, activation: str = C.activation,
                 label_noise: float = C.label_noise, sparsity_inference: str = C.sparsity_inference,
                 objective: str = C.objective, slot_selection: str = C.slot_selection,
                 num_candidates: int | None = C.num_candidates, slot_layout: str = C.slot_layout):
        if on_overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"on_overflow must be one of {OVERFLOW_POLICIES}, got {on_overflow!r}")
        for key, value in (("num_labels", num_labels), ("max_labels", max_labels)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        num_labels, max_labels = int(num_labels), int(max_labels)
        if max_labels > num_labels:
            raise ConfigError(f"max_labels={max_labels} exceeds num_labels={num_labels}")
        if num_candidates is not None:
            num_candidates = self._check_candidates(num_candidates, num_labels, max_labels, per_slot)
        self.params = dict(num_labels=num_labels, max_labels=max_labels, input_dim=input_dim,
                           include_zero=include_zero, on_overflow=on_overflow, guide=guide, per_slot=per_slot,
                           hidden=list(hidden) if isinstance(hidden, Sequence) else hidden,
                           activation=activation, label_noise=label_noise,
                           sparsity_inference=sparsity_inference, objective=objective,
                           slot_selection=slot_selection, num_candidates=num_candidates)
        if slot_layout != C.slot_layout:  # absent from older checkpoints' params: the default
            self.params["slot_layout"] = slot_layout
        if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral)
                                      or input_dim < 1):
            raise ConfigError(f"input_dim must be a positive integer or None, got {input_dim!r}")
        self._fixed_input_dim = None if input_dim is None else int(input_dim)
        # build once now, on a placeholder width if needed and on the meta device (nothing is
        # allocated), so that bad options fail here, not in fit()
        with torch.device("meta"):
            build_conditional(self._spec(self._fixed_input_dim or 1), guide, per_slot, self.params["hidden"],
                              activation, label_noise)
        self.model = self.guide = None
        self.train_config: TrainConfig | None = None
        self.history_: list[dict] | None = None

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _check_candidates(num_candidates, num_labels: int, max_labels: int, per_slot) -> int:
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, numbers.Integral):
            raise ConfigError(f"num_candidates must be an integer or None, got {num_candidates!r}")
        num_candidates = int(num_candidates)
        if not max_labels <= num_candidates <= num_labels:
            raise ConfigError(f"num_candidates={num_candidates} must lie between max_labels={max_labels} and "
                              f"num_labels={num_labels} (every row's true labels must fit in its shortlist)")
        if per_slot:
            raise ConfigError(f"num_candidates={num_candidates} (shortlist mode) needs per_slot=False: per-slot "
                              f"heads cost max_labels x num_labels x the last hidden size parameters "
                              f"({max_labels} x {num_labels} x hidden), which the shortlist cannot reduce")
        return num_candidates

    @property
    def shortlist(self) -> bool:
        """True in shortlist mode (``num_candidates`` set)."""
        return self.params.get("num_candidates") is not None

    def _batch_kwargs(self, batch: tuple) -> dict:
        """The Trainer's per-batch extra arguments: ``candidates`` ``(N, C)`` in shortlist mode."""
        if not self.shortlist:
            return {}
        x, y = batch
        return {"candidates": self.model.candidates(x, y, self.params["num_candidates"])}

    @property
    def spec(self) -> ModelSpec:
        return self._spec(self.params["input_dim"])

    def _spec(self, input_dim: int) -> ModelSpec:
        p = self.params
        return ModelSpec(input_dim, p["num_labels"], p["max_labels"], include_zero=p["include_zero"],
                         binary=True, sparsity_inference=p["sparsity_inference"], objective=p["objective"],
                         slot_selection=p["slot_selection"], slot_layout=p.get("slot_layout", C.slot_layout))

    @property
    def count_levels(self) -> np.ndarray:
        """The counts indexing the columns of :meth:`count_posterior`."""
        return self.spec.levels().numpy()

    def _networks(self):
        p = self.params
        return build_conditional(self.spec, p["guide"], p["per_slot"], p["hidden"], p["activation"],
                                 p["label_noise"])

    def _build(self) -> None:
        self.model, self.guide = self._networks()

    def _check_fitted(self, method: str) -> None:
        if self.model is None:
            raise NotFittedError(f"SDLGMClassifier.{method}() needs a trained model: call fit() or load() first")

    def _features(self, X, name="X") -> scipy.sparse.csr_matrix:
        return self._check_width(_as_matrix(X, name), name)

    def _check_width(self, matrix: scipy.sparse.csr_matrix, name: str) -> scipy.sparse.csr_matrix:
        expected = self.params["input_dim"]
        if expected is not None and matrix.shape[1] != expected:
            raise DataError(f"{name} has {matrix.shape[1]} features but the classifier was built for {expected}")
        return matrix

    def _labels(self, Y, n_rows: int, name="Y") -> scipy.sparse.csr_matrix:
        matrix = _as_matrix(Y, name)
        if matrix.shape != (n_rows, self.params["num_labels"]):
            raise DataError(f"{name} has shape {matrix.shape}, expected ({n_rows}, {self.params['num_labels']})")
        if not np.isin(matrix.data, (0.0, 1.0)).all():
            bad = matrix.data[~np.isin(matrix.data, (0.0, 1.0))][0]
            raise DataError(f"{name} must hold only 0 and 1, found {float(bad)}")
        matrix.eliminate_zeros()
        counts = np.diff(matrix.indptr)
        cap = self.params["max_labels"]
        over = counts > cap
        if over.any():
            if self.params["on_overflow"] == "error":
                raise DataError(
                    f"{int(over.sum())} training rows have more than max_labels={cap} labels (at most "
                    f"{int(counts.max())}); raise max_labels or pass on_overflow='truncate'"
                )
            matrix = self._truncate(matrix, cap)
            logger.warning("truncated %d training rows with more than %d labels (max %d) to their %d most "
                           "frequent labels", int(over.sum()), cap, int(counts.max()), cap)
        return matrix

    @staticmethod
    def _truncate(Y: scipy.sparse.csr_matrix, cap: int) -> scipy.sparse.csr_matrix:
        frequency = np.asarray(Y.sum(0)).ravel()
        rows = Y.tolil(copy=True)
        for i, labels in enumerate(rows.rows):
            if len(labels) > cap:
                keep = sorted(labels, key=lambda label: (-frequency[label], label))[:cap]
                rows.rows[i] = sorted(keep)
                rows.data[i] = [1.0] * cap
        return rows.tocsr()

    @torch.no_grad()
    def _prior_params(self, X, batch_size: int, method: str):
        self._check_fitted(method)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        matrix = self._features(X)
        device = next(self.model.parameters()).device
        self.model.eval()
        for rows in torch.arange(matrix.shape[0]).split(batch_size):
            (batch,) = take_rows((matrix,), rows, device)
            yield self.model.prior_params(batch)

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

        In shortlist mode (``num_candidates``) each batch draws its candidates once for the
        model and the guide; the history's ``train_loss`` and ``val_loss`` are then the
        shortlist ELBO (truncated slot distributions, without the constant
        ``(K - C) log(1 - eps)`` per row of the labels outside the shortlist), and the
        validation candidates are drawn under the validation seed, so ``val_loss`` stays
        comparable across epochs.
        """
        cfg = from_dict(TrainConfig, train_options, where=" passed to SDLGMClassifier.fit()")
        check_run_dir(run_dir, resume, overwrite)
        X = _as_matrix(X, "X")
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
        else:
            fit_rows, val_rows = validation_split(X.shape[0], cfg.validation_fraction, cfg.seed)
            if val_rows is not None:
                val = (X[val_rows], Y[val_rows])
                X, Y = X[fit_rows], Y[fit_rows]
        with torch.device("meta"):  # sizes only: refuse a configuration that cannot fit before allocating it
            guard_training_memory(*self._networks(), cfg, X.shape[0], 0 if val is None else val[0].shape[0],
                                  num_candidates=self.params["num_candidates"])
        pyro.set_rng_seed(cfg.seed)
        self.model = self.guide = None  # free the current networks before building the fresh ones
        self._build()
        self.history_ = Trainer(self.model, self.guide, cfg, batch_kwargs=self._batch_kwargs).fit(
            (X, Y), val, run_dir, resume=resume, overwrite=overwrite, identity={"classifier": dict(self.params)})
        self.train_config = cfg
        return self.history_

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
                  progress: bool = False):
        """The predicted distribution over each row's label count and labels, as ArviZ data.

        At prediction time labels are unknown, so this is the distribution of the ``x``-only
        networks (the count network ``p(L_i | x_i)`` and the slot networks), which training
        fits to the label-aware posterior. Same groups as :meth:`pyro_sdlgm.SDLGM.posterior`
        (``sparsity`` draws are label counts, ``inclusion_probs`` ``(N, K)`` label
        probabilities); with ``Y`` ``(N, K)``, ``observed_data.label_count`` holds the true
        counts (for :func:`pyro_sdlgm.inspection.count_calibration`).

        Memory: a draw holds the ``L0`` slot sites over all ``K`` labels, about ``8 L0 K``
        bytes per row (no shortlist at prediction). In shortlist mode ``batch_size`` is
        therefore lowered, if needed, so that one draw of a batch stays within 256 MB
        (logged); the full mode uses ``batch_size`` as given. ``progress`` shows a progress
        bar over the batches.
        """
        num_samples = check_num_samples(num_samples)
        self._check_fitted("posterior")
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
            labels = _as_matrix(Y, "Y")
            n_rows = X.shape[0]
            if labels.shape != (n_rows, self.params["num_labels"]):
                raise DataError(f"Y has shape {labels.shape}, expected ({n_rows}, {self.params['num_labels']})")
            true_counts = np.asarray((labels != 0).sum(1)).ravel().astype(np.int64)
        schedule = final_schedule(self.train_config)
        batches = ((params.sparsity_logits.softmax(-1), partial(self.guide.place_sites, params, None), (), schedule,
                    None) for params in self._prior_params(X, batch_size, "posterior"))
        probs, draws = sample_batches(self.spec, batches, num_samples, seed, next(self.model.parameters()).device,
                                      progress=progress, num_batches=batch_count(X.shape[0], batch_size))
        return sparsity_inference_data(
            self.spec, probs, draws, num_samples=num_samples, seed=seed, model_name="SDLGMClassifier",
            obs_names=obs_names, observed=None if true_counts is None else {"label_count": true_counts},
            observed_dims={"label_count": ["obs"]},
        )

    def _ranking(self, params: GuideParams) -> torch.Tensor:
        """Scores ``(N, K)``: labels the zero-temperature slot selection picks (slots 1..L0, in
        order) rank first, the rest by the probability that a slot in use selects them.

        In shortlist mode (shared slot logits) the inclusion probability
        ``1 - prod_l (1 - g_l p_k)`` is accumulated one slot at a time, so no ``(N, L0, K)``
        tensor is built: memory ``N x K``.
        """
        spec = self.spec
        n, k = params.slot_logits.shape[0], spec.latent_dim
        gates = slot_gates(params.sparsity_logits.softmax(-1), spec.min_level)  # P(L >= l)
        if self.shortlist:
            inclusion = shared_inclusion(gates, params.slot_logits[:, 0].softmax(-1))
        else:
            probs = params.slot_logits.softmax(-1).expand(n, spec.max_sparsity, k)
            inclusion = soft_support(gates, probs)  # P(a slot in use selects the label), in [0, 1]
        picks = greedy_picks(params.slot_logits, spec.max_sparsity)  # (N, L0), in slot order
        rank_scores = torch.arange(spec.max_sparsity, 0, -1, device=inclusion.device, dtype=inclusion.dtype)
        return inclusion.scatter(-1, picks, 1.0 + rank_scores.expand(n, -1))

    def predict_scores(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, K)`` label scores for ranking (P@k, nDCG@k)."""
        return torch.cat([self._ranking(p).cpu() for p in self._prior_params(X, batch_size, "predict_scores")]).numpy()

    def predict_top_labels(self, X, k: int = 5, *, batch_size: int = 1024) -> np.ndarray:
        """``(N, min(k, K))`` int64 label indices ranked best first by :meth:`predict_scores`.

        The ranking of :func:`pyro_sdlgm.metrics.top_k` (ties: lower index first), taken one
        batch at a time, so a wide label space never holds more than ``(batch_size, K)`` scores.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}")
        parts = [top_k(self._ranking(p).cpu().numpy(), k)
                 for p in self._prior_params(X, batch_size, "predict_top_labels")]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, min(k, self.spec.latent_dim)),
                                                                           dtype=np.int64)

    def predict(self, X, *, batch_size: int = 1024) -> scipy.sparse.csr_matrix:
        """``(N, K)`` CSR 0/1: the top-``L_hat`` labels of each row (``L_hat`` from the count network)."""
        parts = [scipy.sparse.csr_matrix(self.guide.hard_code(params)[0].cpu().numpy())
                 for params in self._prior_params(X, batch_size, "predict")]
        return scipy.sparse.vstack(parts).tocsr().astype(np.int8)

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Weights-only checkpoint (constructor arguments, state dicts, history), written atomically."""
        self._check_fitted("save")
        atomic_save({
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "params": self.params,
            "train_config": self.train_config.to_dict() if self.train_config else None,
            "model_state": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "guide_state": {k: v.cpu() for k, v in self.guide.state_dict().items()},
            "history": self.history_,
        }, path)

    @classmethod
    def load(cls, path: str | Path) -> SDLGMClassifier:
        data = load_checkpoint(path, CHECKPOINT_FORMAT, ("params", "model_state", "guide_state"))
        if data.get("format_version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint {str(path)!r} has format version {data.get('format_version')!r}")
        params: dict[str, Any] = dict(data["params"])
        num_labels, max_labels = params.pop("num_labels"), params.pop("max_labels")
        self = cls(num_labels, max_labels, **params)
        self._build()
        try:
            self.model.load_state_dict(data["model_state"])
            self.guide.load_state_dict(data["guide_state"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match its parameters: {err}") from None
        if data.get("train_config") is not None:
            self.train_config = from_dict(TrainConfig, data["train_config"])
        self.history_ = data.get("history")
        return self
