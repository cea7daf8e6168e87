"""``SDLGM``: the user-facing class (fit, encode, posterior over sparsity, evaluate, save/load)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyro
from pyro import poutine
import scipy.sparse
import torch

from pyro_sdlgm.analysis.evaluation import code_statistics, elbo_terms, slot_duplicates
from pyro_sdlgm.analysis.posterior import (
    Inclusion,
    batch_count,
    check_num_samples,
    resolve_inclusion,
    sample_batches,
    seeded,
    sparsity_inference_data,
)
from pyro_sdlgm.config import ModelOptions, from_dict, options_dataclass, own_options
from pyro_sdlgm.data.arrays import as_csr, as_dense_tensor, dense_numeric_2d
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin

from pyro_sdlgm.estimators.base import Estimator, validation_split
from pyro_sdlgm.exceptions import ConfigError, DataError
from pyro_sdlgm.inference.schedules import final_schedule
from pyro_sdlgm.inference.run_folder import check_run_dir
from pyro_sdlgm.model.generative import SDLGMModel
from pyro_sdlgm.model.guides import GUIDES
from pyro_sdlgm.model.likelihoods import LIKELIHOODS
from pyro_sdlgm.model.registry import ComponentSpec
from pyro_sdlgm.model.spec import CountCoupling, ModelSpec, Objective, SlotSelection, SparsityInference
from pyro_sdlgm.model.support_steps import SparseCode

logger = logging.getLogger(__name__)

#: the count posterior used after training (see :class:`SDLGM`, ``count_estimate``)
CountEstimate = Literal["amortized", "refined"]
COUNT_ESTIMATES = get_args(CountEstimate)
#: how codes are inferred after training (see :class:`SDLGM`, ``encoding``)
Encoding = Literal["amortized", "pursuit"]
ENCODINGS = get_args(Encoding)


def build_model_and_guide(config: ModelConfig):
    """Instantiate the model and the guide that ``config`` describes.

    They are created under ``module_local_params=True`` so that they work both with
    the trainer's local parameters and with ``pyro.infer.SVI`` in Pyro's default mode.
    """
    spec = config.spec()
    with pyro.settings.context(module_local_params=True):
        model = SDLGMModel(
            spec,
            likelihood=config.likelihood,
            sparsity_prior=config.sparsity_prior,
            support_prior=config.support_prior,
            value_prior=config.value_prior,
            decoder_hidden=config.decoder_hidden,
            activation=config.activation,
            decoder_skip=config.decoder_linear_part(),
        )
        guide = GUIDES.build(config.guide, spec)
    return model, guide


def as_data_tensor(X: Any, input_dim: int, likelihood, name: str = "X") -> torch.Tensor:
    """``X (N, D)`` checked (see :func:`~pyro_sdlgm.data.arrays.as_dense_tensor`) and accepted by the
    likelihood, as a float32 CPU tensor; :class:`DataError` otherwise."""
    x = as_dense_tensor(X, input_dim, name)
    likelihood.check_data(x.numpy())
    return x


def _place_guide_sites(guide, params, x, **schedule):
    """The guide's sites from given parameters, called as the guide is (for ``Predictive``)."""
    guide.place_sites(params, None, **schedule)


class SDLGM(ClassNamePrefixFeaturesOutMixin, TransformerMixin, Estimator):
    """Sparse deep latent generative model with adaptive, capped sparsity (unsupervised).

    Each observation ``x_i`` gets a sparse code ``z_i`` with at most ``max_sparsity``
    (``L0``) non-zeros out of ``latent_dim`` (``K``); its own count ``L_i`` is a random
    variable with an amortized posterior ``q(L_i | x_i)``.

    A scikit-learn transformer: :meth:`fit` returns the estimator, :meth:`transform` gives the
    hard codes (CSR), :meth:`inverse_transform` the reconstruction and :meth:`score` the mean
    ELBO; ``get_params``/``set_params``/``clone`` see every argument below, the training options
    included. The Pyro model and guide are :attr:`model_` and :attr:`guide_`.

    An option that names a component takes a registered name or ``{"name": ..., **options}``;
    ``docs/options.md`` (or ``sdlgm options``) lists each option's registered components with
    their own options.

    Args:
        input_dim: ``D``, features per observation; None (default): taken from the data by
            :meth:`fit` (``n_features_in_``).
        latent_dim: ``K``, width of the code.
        max_sparsity: ``L0``, cap on the non-zeros, ``1 <= L0 <= K``.
        likelihood: the observation model: a registered name or ``{"name": ..., **options}``
            (``bernoulli`` for data in [0, 1], ``normal`` with a learned scale, or your own).
        include_zero: allow ``L_i = 0`` (levels ``{0..L0}``).
        binary: binary codes ``z = s`` (no values); ``"auto"`` (default): binary for the
            Bernoulli likelihood, with values otherwise.
        sparsity_prior: the prior ``p(L_i)`` over the levels, a registered name or table.
        support_prior: the prior over which dimension a slot selects, a registered name or table.
        value_prior: the prior of the non-zero values, a registered name or table.
        guide: the amortized guide network, a registered name or table (default
            ``mlp_magnitude_slots``: the selection follows the magnitudes of the value means, as
            a top-k autoencoder's does).
        sparsity_inference: ``"relaxed"`` (Concrete ``L_i``), ``"enumerate"`` (exact sum
            over ``L_i`` with ``TraceEnum_ELBO``; needs ``objective="relaxed"``) or
            ``"marginal"`` (exact expectations over ``q(L_i)`` with its discrete KL; needs
            ``count_coupling="prefix_mixture"``). See :class:`~pyro_sdlgm.model.spec.ModelSpec`.
        objective: ``"discrete_kl"`` (KL terms of the discrete variables, analytic,
            ``TraceMeanField_ELBO``) or ``"relaxed"`` (the relaxed model's ELBO with
            Concrete densities, ``Trace_ELBO``). See ``docs/model.md`` for the measured difference.
        slot_selection: ``"without_replacement"`` (slots mask the dimensions earlier slots
            took, so ``L_i`` counts distinct non-zeros) or ``"independent"``.
        slot_layout: how the slots become Pyro sites, a registered name or table, or ``"auto"``
            (the default: ``gumbel_topk``, time and memory linear in ``K``, above 1,024 dimensions
            when the other modes allow it, else ``per_slot``); see
            :mod:`pyro_sdlgm.model.support_steps`.
        count_coupling: ``"gated_code"`` (the relaxed count gates the code inside the
            decoder) or ``"prefix_mixture"`` (the decoder sees the code of each whole count; the
            log-likelihoods are averaged over the count).
        slot_estimator: the support's gradient estimator, a registered name or table (default
            ``relaxed``: the Gumbel-Softmax slots in the code).
        count_estimate: the count posterior used after training (``sparsity_posterior``,
            ``predict_sparsity``, ``encode``, ``posterior``): ``"amortized"`` (the count
            network's ``q(L|x)``) or ``"refined"`` (default; ``q*(L = l | x) ∝ p(l) exp(-R_l - KL_{1..l})``
            from the hard reconstruction of each prefix; one decoder pass per level, see
            :mod:`pyro_sdlgm.analysis.diagnostics`).
        encoding: how the supports and values are inferred after training (``encode``,
            ``transform``, ``reconstruct``, ``sparsity_posterior``, ``posterior``): ``"amortized"``
            (the guide network's, one pass) or ``"pursuit"`` (a matching pursuit through the fitted
            decoder: greedy picks by predicted gain, every prefix's values refitted by Gauss-Newton
            steps; about ``L0^2`` backward passes a batch; dense layouts only; see
            :mod:`pyro_sdlgm.inference.pursuit`). With ``"pursuit"``, ``count_estimate="refined"``
            scores the pursuit's prefixes. Training and :meth:`evaluate` use the guide either way.
        decoder_hidden: hidden sizes of the decoder MLP.
        activation: activation of the decoder MLP.
        decoder_skip: add a linear map of the code to the decoder MLP's output,
            ``decoder(z) = A z + MLP(z)``: the linear part is explicit and the MLP adds what is not
            linear. Needs hidden layers. ``"auto"`` (default): with hidden layers, up to 1,024
            dimensions (measured there; above, its ``K x D`` weights would add to a wide model's
            memory, which was not measured).
        **training: the training options, keyword-only: the fields of
            :class:`~pyro_sdlgm.config.TrainConfig` (``epochs``, ``batch_size``, ``learning_rate``,
            ``seed``, ``device``, the temperature schedules, ``patience``, ``progress`` ...), with its
            defaults.

    Example::

        m = SDLGM(latent_dim=200, max_sparsity=10, likelihood="bernoulli", epochs=20, seed=0).fit(X)
        Z = m.encode(X)                # (N, 200), at most 10 non-zeros per row
        P = m.sparsity_posterior(X)    # (N, 10), q(L_i = l | x_i) for l = 1..10
    """

    def __init__(
        self,
        input_dim: int | None = None,
        latent_dim: int = 200,
        max_sparsity: int = 10,
        likelihood: ComponentSpec = "bernoulli",
        *,
        include_zero: bool = False,
        binary: bool | Literal["auto"] = "auto",
        sparsity_prior: ComponentSpec = "uniform",
        support_prior: ComponentSpec = "uniform",
        value_prior: ComponentSpec = "normal",
        guide: ComponentSpec = "mlp_magnitude_slots",
        sparsity_inference: SparsityInference = "relaxed",
        objective: Objective = "discrete_kl",
        slot_selection: SlotSelection = "without_replacement",
        slot_layout: ComponentSpec = "auto",
        count_coupling: CountCoupling = "gated_code",
        slot_estimator: ComponentSpec = "relaxed",
        count_estimate: CountEstimate = "refined",
        encoding: Encoding = "amortized",
        decoder_hidden: tuple[int, ...] = (256, 512),
        activation: str = "relu",
        decoder_skip: bool | Literal["auto"] = "auto",
        **training,
    ):
        self._store_parameters(locals())

    checkpoint_format = "pyro_sdlgm.SDLGM"
    checkpoint_requires = ("model_config",)

    @property
    def networks_on_access(self) -> bool:
        """Whether reading ``model_`` or ``guide_`` builds the networks: when ``input_dim`` is given."""
        return self.input_dim is not None

    def _config_from_parameters(self, input_dim: int | None = None) -> ModelConfig:
        """The current parameters as a checked :data:`~pyro_sdlgm.config.ModelConfig`, with
        ``input_dim`` (the data's width) where the parameter is None."""
        options = {name: getattr(self, name) for name in own_options(type(self))}
        if input_dim is not None and options["input_dim"] is not None and options["input_dim"] != input_dim:
            raise DataError(f"X has {input_dim} features but the model has input_dim={options['input_dim']}")
        if options["input_dim"] is None:
            options["input_dim"] = input_dim
        return from_dict(ModelConfig, options, where=" passed to SDLGM")

    def _networks(self, config: ModelConfig) -> tuple:
        return build_model_and_guide(config)

    def _spec_of(self, config: ModelConfig) -> ModelSpec:
        return config.spec()

    def _checkpoint_fields(self) -> dict[str, Any]:
        return {"model_config": dataclasses.replace(self.config, count_estimate=self.count_estimate,
                                                    encoding=self.encoding).to_dict()}

    @classmethod
    def _from_checkpoint(cls, data: Mapping[str, Any]) -> tuple[SDLGM, ModelConfig]:
        # a checkpoint without decoder_skip predates the option: its decoder had no linear part
        config = from_dict(ModelConfig, {"decoder_skip": False, **data["model_config"]})
        return cls(**dataclasses.asdict(config)), config

    @classmethod
    def from_config(cls, config: ModelConfig | Mapping[str, Any], **training) -> SDLGM:
        """An unfitted SDLGM with the options of a :data:`~pyro_sdlgm.config.ModelConfig` or a
        ``[model]`` table and the training options ``training``, checked: the components' own
        options too (the networks are built once on the ``meta`` device, nothing allocated)."""
        if not isinstance(config, ModelConfig):
            config = from_dict(ModelConfig, config)
        self = cls(**dataclasses.asdict(config), **training)
        if config.input_dim is not None:
            self._meta_networks(config)
        return self

    # -- properties -----------------------------------------------------------------------

    @property
    def sparsity_levels(self) -> np.ndarray:
        """The values of ``L_i`` indexing the columns of :meth:`sparsity_posterior`."""
        return self.spec.levels().numpy()

    def _check(self, X, name="X", config: ModelConfig | None = None) -> torch.Tensor:
        """``X`` checked against the fitted model (or ``config``'s, in ``fit``) as a float32 tensor."""
        if config is None:
            dense_numeric_2d(X, name)  # its shape first: a 1-D X is told to be reshaped
            self._check_features(X, reset=False)
            config, likelihood = self.config, self.model_.likelihood
        else:  # the likelihood's support check reads no parameter
            likelihood = LIKELIHOODS.build(config.likelihood, config.spec())
        return as_data_tensor(X, config.input_dim, likelihood, name)

    def _batches(self, x: torch.Tensor, batch_size: int):
        """Batches of ``x`` on the networks' device, with the networks in eval mode."""
        for rows in self._eval_batches(x.shape[0], batch_size):
            yield x[rows].to(self.device_)

    # -- training -------------------------------------------------------------------------

    def fit(self, X, y=None, *, validation_data=None, run_dir: str | Path | None = None, resume: bool = False,
            overwrite: bool = False, **train_options) -> SDLGM:
        """Train by SVI from a fresh, seeded initialization; return the estimator (the per-epoch
        records are :attr:`history_`).

        Args:
            X: ``(N, D)`` numpy array or torch tensor (``D`` is ``input_dim``, or sets it when None).
            y: not used (scikit-learn's transformer protocol passes it).
            validation_data: optional ``(M, D)`` data for early stopping; by default a
                seeded ``validation_fraction`` of ``X`` is held out.
            run_dir: if given, per-epoch metrics go to ``run_dir/metrics.jsonl`` and
                training checkpoints to ``run_dir/checkpoints/`` (``checkpoint_every``).
            resume: continue the interrupted training of ``run_dir`` from its newest
                checkpoint (same data, model and training options; the result equals an
                uninterrupted run's, see :meth:`pyro_sdlgm.inference.trainer.Trainer.fit`).
            overwrite: replace the checkpoints and metrics an earlier run left in ``run_dir``
                (else a fresh fit there raises :class:`ConfigError`).
            **train_options: training options for this fit only, over the estimator's own
                (the fields of :class:`pyro_sdlgm.config.TrainConfig`).

        :attr:`history_` is a list of dicts (``epoch``, ``train_loss``, ``val_loss``, temperatures,
        ``kl_weight``, ``skipped_batches``, ``seconds``): losses are negative ELBOs per example.
        """
        cfg = self._train_config(train_options, "SDLGM.fit()")
        check_run_dir(run_dir, resume, overwrite)
        config = self._config_from_parameters(dense_numeric_2d(X, "X").shape[1])
        x = self._check(X, config=config)
        x_val = self._check(validation_data, "validation_data", config) if validation_data is not None else None
        if x_val is None and cfg.validation_fraction > 0:
            fit_rows, val_rows = validation_split(x.shape[0], cfg.validation_fraction, cfg.seed)
            if val_rows is not None:
                x, x_val = x[torch.from_numpy(fit_rows)], x[torch.from_numpy(val_rows)]
            else:
                logger.warning("too few rows (%d) to hold out a validation split; early stopping is off", x.shape[0])
        self._refuse_unfit(config, cfg, x.shape[0], 0 if x_val is None else x_val.shape[0])
        self._train(config, (x,), None if x_val is None else (x_val,), cfg, run_dir=run_dir, resume=resume,
                    overwrite=overwrite, identity={"model": config.to_dict()})
        self._check_features(X, reset=True)
        return self

    # -- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def _guide_outputs(self, X, batch_size: int, method: str):
        self._check_fitted(method)
        x = self._check(X)
        self.guide_.eval()
        self.model_.eval()
        for batch in self._batches(x, batch_size):
            yield batch, self._amortize(batch)

    def _amortize(self, batch: torch.Tensor):
        """The parameters of a batch: the guide's, with the codes ``encoding`` and the count
        posterior ``count_estimate`` name (:meth:`_infer`)."""
        return self._infer(self.guide_.amortize(batch), batch)

    def _infer(self, params, batch: torch.Tensor):
        """The guide's parameters ``params`` of a batch with the pursuit's codes (``encoding="pursuit"``)
        and the refined count logits (``count_estimate="refined"``)."""
        # post-training options: the current parameters (set_params applies without refitting)
        estimate, encoding = self.count_estimate, self.encoding
        if estimate not in COUNT_ESTIMATES:
            raise ConfigError(f"count_estimate must be one of {COUNT_ESTIMATES}, got {estimate!r}")
        if encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if encoding == "pursuit":
            from pyro_sdlgm.inference.pursuit import pursuit_params

            return pursuit_params(self.model_, params, batch, refined=estimate == "refined")
        if estimate == "amortized":
            return params
        from pyro_sdlgm.analysis.diagnostics import refined_count_logits

        return params._replace(sparsity_logits=refined_count_logits(self.model_, params, batch))

    @torch.no_grad()
    def encode(self, X, *, sparse: bool = False, batch_size: int = 1024):
        """Hard codes ``(N, K)``: at most ``L_hat_i <= L0`` non-zeros per row.

        ``L_hat_i`` is the mode of ``q(L_i | x_i)``; the support is the ``L_hat_i``
        highest-scoring dimensions (without replacement); values are the guide means
        (ones in binary mode). Returns a float32 numpy array, or a scipy CSR matrix
        when ``sparse=True`` (built batch by batch: memory of ``batch_size`` dense rows, not ``N``).
        """
        codes = []
        for _, params in self._guide_outputs(X, batch_size, "encode"):
            z = self.guide_.hard_code(params)[0].cpu().numpy()
            codes.append(scipy.sparse.csr_matrix(z) if sparse else z)
        return scipy.sparse.vstack(codes, format="csr") if sparse else np.concatenate(codes)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # codes are float32, whatever X's dtype
        return tags

    def transform(self, X) -> scipy.sparse.csr_matrix:
        """scikit-learn's transform: the hard codes of ``X (N, D)``, a CSR matrix ``(N, K)`` with at most
        ``L0`` non-zeros a row (:meth:`encode` with ``sparse=True``)."""
        return self.encode(X, sparse=True)

    @torch.no_grad()
    def inverse_transform(self, Z, *, batch_size: int = 1024) -> np.ndarray:
        """The expected observation given codes ``Z (N, K)`` (dense or sparse), ``(N, D)``: for the
        codes of :meth:`transform`, the reconstruction :meth:`reconstruct` gives. The codes reach
        the decoder by their non-zeros (:class:`~pyro_sdlgm.model.support_steps.SparseCode`), so no
        ``(batch, K)`` block is built."""
        self._check_fitted("inverse_transform")
        codes = self._codes(Z)
        out = []
        for rows in self._eval_batches(codes.shape[0], batch_size):
            z = SparseCode.from_csr(codes[rows.numpy()], self.device_)
            out.append(self.model_.likelihood.mean(self.model_.decoder(z)).cpu())
        return torch.cat(out).numpy()

    def _codes(self, Z) -> scipy.sparse.csr_matrix:
        """Codes ``Z (N, K)`` (dense or sparse) as CSR, checked against the model's ``K``."""
        codes = as_csr(Z, "Z")
        if codes.shape[1] != self.spec.latent_dim:
            raise DataError(f"Z has {codes.shape[1]} columns but the model has latent_dim={self.spec.latent_dim}")
        return codes

    def score(self, X, y=None) -> float:
        """The mean ELBO per row of ``X (N, D)`` in nats (higher is better): :meth:`evaluate`'s
        ``elbo`` (one seeded draw a row, at the final training temperatures). scikit-learn's model
        selection (``GridSearchCV``, ``cross_val_score``) maximizes it on held-out rows by default."""
        return float(self.evaluate(X)["elbo"])

    @torch.no_grad()
    def sparsity_posterior(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``q(L_i = l | x_i)``, shape ``(N, num_levels)``; columns follow :attr:`sparsity_levels`."""
        probs = [self.guide_.sparsity_probs(p).cpu() for _, p in self._guide_outputs(X, batch_size, "sparsity_posterior")]
        return torch.cat(probs).numpy()

    def predict_sparsity(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``L_hat_i``, the mode of ``q(L_i | x_i)``, shape ``(N,)`` (int)."""
        probs = self.sparsity_posterior(X, batch_size=batch_size)
        return self.sparsity_levels[probs.argmax(-1)]

    @torch.no_grad()
    def reconstruct(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """Expected observation given the hard code, ``(N, D)``."""
        out = []
        for _, params in self._guide_outputs(X, batch_size, "reconstruct"):
            z = self.guide_.hard_code(params)[0]
            out.append(self.model_.likelihood.mean(self.model_.decoder(z)).cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def diagnose(self, X, *, batch_size: int = 1024) -> dict[str, Any]:
        """Why the rows of ``X (N, D)`` got their sparsity (see :mod:`pyro_sdlgm.analysis.diagnostics`).

        Returns a dict: ``prefix_recon (N, num_levels)``, the hard reconstruction cost
        ``R_l`` of the code with the first ``l`` slots; ``prefix_slot_kl (N, num_levels)``,
        the discrete KL of those slots; ``l_hat (N,)``, the mode of the count network's
        ``q(L|x)`` (whatever ``count_estimate`` is);
        ``best_count (N,)``, the level minimising ``R_l + KL_{1..l}``; ``summary``, their
        means and agreement; ``dimension_effect (K,)`` and ``dimension_usage (K,)``, what
        each dimension adds to the empty code's output and how often hard codes use it;
        ``dimension_value (K,)``, its mean non-zero value in those codes (1 if unused or binary).
        """
        from pyro_sdlgm.analysis.diagnostics import dimension_effects, prefix_terms, summarize_prefixes

        self._check_fitted("diagnose")
        x = self._check(X)
        self.model_.eval()
        self.guide_.eval()
        # the count network's own q(L|x) (with count_estimate="refined", L_hat would be the supported count)
        parts = [prefix_terms(self.model_, self.guide_.amortize(batch), batch) for batch in self._batches(x, batch_size)]
        terms = {key: torch.cat([part[key] for part in parts]).cpu().numpy() for key in parts[0]}
        # at width the hard codes stay sparse ((N, K) floats would not fit)
        effects = dimension_effects(self.model_, self.encode(X, sparse=self.spec.wide, batch_size=batch_size))
        return {"prefix_recon": terms["recon"], "prefix_slot_kl": terms["slot_kl"], "l_hat": terms["l_hat"],
                "best_count": terms["best"], "summary": summarize_prefixes(terms, self.sparsity_levels),
                "dimension_effect": effects["effect"], "dimension_usage": effects["usage"],
                "dimension_value": effects["value"]}

    @torch.no_grad()
    def posterior(self, X, *, num_samples: int = 100, seed: int = 0, batch_size: int = 256,
                  posterior_predictive: bool = False, obs_names=None, progress: bool = False,
                  inclusion: Inclusion = "auto"):
        """The posterior over sparsity of each row of ``X (N, D)`` as ArviZ data.

        Groups (see :mod:`pyro_sdlgm.analysis.posterior`): ``posterior`` with ``sparsity`` (draws of
        ``L_i``) and ``nnz`` (non-zeros of each draw's hard code), dims ``(chain=1,
        draw=num_samples, obs=N)``; ``marginals`` with ``sparsity_probs`` ``(N, levels)``,
        the exact ``q(L_i = l | x_i)``, and ``inclusion_probs`` ``(N, K)``, the fraction of
        draws whose support holds each dimension; with ``posterior_predictive=True``,
        ``posterior_predictive.x`` ``(1, S, N, D)`` and ``observed_data.x`` (``X``).

        Draws use the final training temperatures and are seeded by ``seed``; the global
        RNG state is left untouched. ``progress`` shows a progress bar over the batches.
        Returns ``arviz.InferenceData`` (ArviZ 0.x) or an ``xarray.DataTree`` (ArviZ 1.x).
        """
        num_samples = check_num_samples(num_samples)
        self._check_fitted("posterior")
        inclusion = resolve_inclusion(inclusion, self.spec)
        x = self._check(X)
        schedule = final_schedule(self.train_config_)
        self.model_.eval()
        self.guide_.eval()

        def batches():
            for batch in self._batches(x, batch_size):
                params = self._amortize(batch)
                if posterior_predictive:  # the model replayed on guide draws: x of draw s from the code of draw s
                    guide = partial(_place_guide_sites, self.guide_, params)
                    yield (self.guide_.sparsity_probs(params), poutine.uncondition(self.model_), (batch,), schedule,
                           guide)
                else:  # the guide's sites alone, from parameters amortized once per batch
                    yield (self.guide_.sparsity_probs(params), partial(self.guide_.place_sites, params, None),
                           (), {**schedule}, None)

        probs, draws = sample_batches(self.spec, batches(), num_samples, seed, self.device_,
                                      obs_dim=self.spec.input_dim if posterior_predictive else None,
                                      progress=progress, num_batches=batch_count(x.shape[0], batch_size),
                                      inclusion=inclusion)
        return sparsity_inference_data(
            self.spec, probs, draws, num_samples=num_samples, seed=seed, model_name="SDLGM", obs_names=obs_names,
            observed={"x": x.cpu().numpy()} if posterior_predictive else None,
        )

    @torch.no_grad()
    def decode_dimensions(self, dims, values=None) -> np.ndarray:
        """The decoder's picture of single dimensions: ``E[x | z = v_k e_k]``, shape ``(len(dims), D)``.

        Args:
            dims: dimension indices ``(M,)``.
            values: ``v_k`` per dimension ``(M,)``; default 1 (the value of a binary code).
        """
        self._check_fitted("decode_dimensions")
        dims = np.asarray(dims, dtype=np.int64).reshape(-1)
        if dims.size and (dims.min() < 0 or dims.max() >= self.spec.latent_dim):
            raise DataError(f"dimension indices must lie in [0, {self.spec.latent_dim}), got {dims.tolist()}")
        values = np.ones(dims.shape) if values is None else np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != dims.shape:
            raise DataError(f"values has shape {values.shape}, expected {dims.shape}")
        z = torch.zeros(dims.size, self.spec.latent_dim, device=self.device_)
        z[torch.arange(dims.size), torch.as_tensor(dims.copy())] = torch.as_tensor(values, dtype=z.dtype, device=self.device_)
        self.model_.eval()
        return self.model_.likelihood.mean(self.model_.decoder(z)).cpu().numpy()

    @torch.no_grad()
    def sample(self, n_samples: int = 1, *, seed: int = 0, batch_size: int = 1024):
        """Draws from the fitted generative model, nothing relaxed: ``(X, Z, L)``.

        ``X (n_samples, D)`` float32 observations, ``Z (n_samples, K)`` their codes (a float32
        array, or a scipy CSR matrix above 1,024 dimensions, as in :meth:`diagnose`) and
        ``L (n_samples,)`` the counts drawn from ``p(L)`` (see
        :meth:`~pyro_sdlgm.model.generative.SDLGMModel.draw`). Seeded by ``seed``; the global
        random state is left as it was.
        """
        self._check_fitted("sample")
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise DataError(f"n_samples must be a positive integer, got {n_samples!r}")
        self.model_.eval()
        xs, codes, counts = [], [], []
        with seeded(seed, self.device_):
            for rows in self._eval_batches(int(n_samples), batch_size):
                x, z, count = self.model_.draw(len(rows))
                xs.append(x.cpu().numpy())
                counts.append(count.cpu().numpy())
                # wide: from the non-zeros, no (batch, K) block
                codes.append(z.to_csr() if self.spec.wide else z.to_dense().cpu().numpy())
        Z = scipy.sparse.vstack(codes, format="csr") if self.spec.wide else np.concatenate(codes)
        return np.concatenate(xs).astype(np.float32), Z, np.concatenate(counts).astype(np.int64)

    @torch.no_grad()
    def sample_observations(self, Z, *, seed: int = 0, batch_size: int = 1024) -> np.ndarray:
        """One draw ``x ~ p(x | decoder(z))`` for each code of ``Z (N, K)`` (dense or sparse, as
        :meth:`inverse_transform` takes it), ``(N, D)`` float32. Seeded by ``seed``; the global
        random state is left as it was."""
        self._check_fitted("sample_observations")
        codes = self._codes(Z)
        out = []
        with seeded(seed, self.device_):
            for rows in self._eval_batches(codes.shape[0], batch_size):
                z = SparseCode.from_csr(codes[rows.numpy()], self.device_)
                out.append(self.model_.obs_dist(z).sample().cpu())
        return torch.cat(out).numpy().astype(np.float32)

    @torch.no_grad()
    def evaluate(self, X, *, num_samples: int = 1, seed: int = 0, batch_size: int = 1024) -> dict[str, Any]:
        """Metrics per example on ``X``, at the final training temperatures.

        Returns a dict with: ``elbo`` (relaxed, Monte Carlo over ``num_samples``),
        ``recon_relaxed`` and ``kl_sparsity``/``kl_slots``/``kl_values`` (its terms),
        ``recon`` (``-log p(x | decoder(hard code))``), ``mse`` (squared error of the
        hard reconstruction, summed over features), ``mean_nnz``, ``std_nnz``,
        ``min_nnz``, ``max_nnz``, ``nnz_histogram`` (counts for 0..L0),
        ``codes_over_cap`` (always 0), ``unused_dim_fraction`` (the fraction of the K
        dimensions non-zero in no hard code of ``X``; ``inspect``'s *dead* dimensions are
        another measure, posterior inclusion below 0.001), ``slot_duplicate_rate``
        (fraction of the used slots of a relaxed guide draw at the final temperature whose
        argmax repeats an earlier used slot's),
        ``mean_sparsity_entropy`` (nats) and ``num_examples``.

        The ELBO and its terms are those of the trained guide (the count network's
        ``q(L|x)``); the hard codes, their statistics and ``mean_sparsity_entropy`` use the
        codes ``encoding`` and the count posterior ``count_estimate`` name.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise DataError(f"num_samples must be a positive integer, got {num_samples!r}")
        self._check_fitted("evaluate")
        x = self._check(X)
        schedule = final_schedule(self.train_config_)
        self.model_.eval()
        self.guide_.eval()
        sums: dict[str, float] = {}
        codes, duplicates, used, entropy, mse, recon_hard = [], 0, 0, 0.0, 0.0, 0.0
        with seeded(seed, self.device_):
            for batch in self._batches(x, batch_size):
                for sample in range(num_samples):
                    terms, guide_trace = elbo_terms(self.model_, self.guide_, batch, schedule)
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + float(value.sum()) / num_samples
                    if sample == 0:
                        repeats, drawn_counts = slot_duplicates(guide_trace, self.spec)
                        duplicates += int(repeats.sum())
                        used += int(drawn_counts.sum())
                        # the guide's amortized parameters, with the codes and count posterior in use
                        params = self._infer(guide_trace.nodes["_RETURN"]["value"], batch)
                z, _ = self.guide_.hard_code(params)
                codes.append(z.cpu())
                decoded = self.model_.decoder(z)
                recon_hard += float(-self.model_.likelihood.dist(decoded).log_prob(batch).sum())
                mse += float(((self.model_.likelihood.mean(decoded) - batch) ** 2).sum())
                q = torch.distributions.Categorical(logits=params.sparsity_logits)
                entropy += float(q.entropy().sum())
        n = x.shape[0]
        result: dict[str, Any] = {k if k != "recon" else "recon_relaxed": v / n for k, v in sums.items()}
        result.update(
            recon=recon_hard / n,
            mse=mse / n,
            **code_statistics(torch.cat(codes), self.spec.max_sparsity),
            slot_duplicate_rate=duplicates / used if used else 0.0,
            mean_sparsity_entropy=entropy / n,
            num_examples=n,
        )
        return result


#: the ``[model]`` config section: the options :class:`SDLGM`'s constructor declares, with their types and defaults
ModelConfig = options_dataclass("ModelConfig", SDLGM, ModelOptions)
