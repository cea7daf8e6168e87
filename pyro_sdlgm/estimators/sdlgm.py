"""``SDLGM``: the user-facing class (fit, encode, posterior over sparsity, evaluate, save/load)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

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
    sparsity_inference_data,
)
from pyro_sdlgm.config import ModelConfig, from_dict
from pyro_sdlgm.data.arrays import as_dense_tensor
from pyro_sdlgm.estimators.base import Estimator, validation_split
from pyro_sdlgm.exceptions import DataError
from pyro_sdlgm.inference.resources import guard_parameters
from pyro_sdlgm.inference.schedules import final_schedule
from pyro_sdlgm.inference.run_folder import check_run_dir
from pyro_sdlgm.model.generative import SDLGMModel
from pyro_sdlgm.model.guides import GUIDES
from pyro_sdlgm.model.registry import ComponentSpec

logger = logging.getLogger(__name__)


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


class SDLGM(Estimator):
    """Sparse deep latent generative model with adaptive, capped sparsity (unsupervised).

    Each observation ``x_i`` gets a sparse code ``z_i`` with at most ``max_sparsity``
    (``L0``) non-zeros out of ``latent_dim`` (``K``); its own count ``L_i`` is a random
    variable with an amortized posterior ``q(L_i | x_i)``.

    Args:
        input_dim: ``D``, features per observation.
        latent_dim: ``K``, width of the code.
        max_sparsity: ``L0``, cap on the non-zeros, ``1 <= L0 <= K``.
        likelihood: ``"bernoulli"`` (data in [0, 1]) or ``"normal"`` (learned scale), or a
            registered name or ``{"name": ..., **options}``.
        include_zero: allow ``L_i = 0`` (levels ``{0..L0}``).
        binary: binary codes ``z = s`` (no values); ``"auto"`` (default): binary for the
            Bernoulli likelihood, with values otherwise.
        sparsity_prior: ``"uniform"``, ``"truncated_geometric"`` (``p``),
            ``"truncated_poisson"`` (``rate``), ``"learned"``, or a registered name.
        support_prior: ``"uniform"`` or ``"learned"``.
        value_prior: ``"normal"`` or ``"laplace"`` (option ``scale``).
        guide: ``"mlp_magnitude_slots"`` (default: shared slot logits from the magnitudes of
            the value means, so the selection follows the values as a top-k autoencoder's
            does), ``"mlp_per_slot"`` or ``"mlp_shared_slots"`` (options ``hidden``,
            ``activation``).
        sparsity_inference: ``"relaxed"`` (Concrete ``L_i``), ``"enumerate"`` (exact sum
            over ``L_i`` with ``TraceEnum_ELBO``; needs ``objective="relaxed"``) or
            ``"marginal"`` (exact expectations over ``q(L_i)`` with its discrete KL; needs
            ``count_coupling="prefix_mixture"``). See :class:`~pyro_sdlgm.model.spec.ModelSpec`.
        objective: ``"discrete_kl"`` (KL terms of the discrete variables, analytic,
            ``TraceMeanField_ELBO``) or ``"relaxed"`` (the relaxed model's ELBO with
            Concrete densities, ``Trace_ELBO``). See ``docs/model.md`` for the measured difference.
        slot_selection: ``"without_replacement"`` (slots mask the dimensions earlier slots
            took, so ``L_i`` counts distinct non-zeros) or ``"independent"``.
        slot_layout: ``"auto"`` (the default: ``"gumbel_topk"`` above 1,024 dimensions when the
            other modes allow it, else ``"per_slot"``), ``"per_slot"`` (one Pyro site per slot,
            ``slot_1..slot_L0``),
            ``"joint"`` (one site ``slots`` for all of them: the same distribution with batched
            operations, faster; not with ``sparsity_inference="enumerate"``) or ``"gumbel_topk"``
            (one site ``support``: a Gumbel perturbation of the shared slot logits whose top
            ``L0`` are the slots; time and memory linear in ``K``; ``{"name": "gumbel_topk",
            "num_candidates": C}`` sets the relaxation's columns, default ``2 L0``); see
            :mod:`pyro_sdlgm.model.support_steps`.
        count_coupling: ``"gated_code"`` (the relaxed count gates the code inside the
            decoder) or ``"prefix_mixture"`` (the decoder sees the code of each whole count; the
            log-likelihoods are averaged over the count).
        slot_estimator: the support's gradient estimator, a name or ``{"name": ..., **options}`` in
            :data:`~pyro_sdlgm.model.slot_estimators.SLOT_ESTIMATORS`: ``"relaxed"`` (Gumbel-Softmax slots in
            the code), ``"straight_through"`` (their one-hot in the code, relaxed gradient) or
            ``"imle"`` (their one-hot, implicit-MLE gradient; option ``step``).
        count_estimate: the count posterior used after training (``sparsity_posterior``,
            ``predict_sparsity``, ``encode``, ``posterior``): ``"amortized"`` (the count
            network's ``q(L|x)``) or ``"refined"`` (default; ``q*(L = l | x) ∝ p(l) exp(-R_l - KL_{1..l})``
            from the hard reconstruction of each prefix; one decoder pass per level, see
            :mod:`pyro_sdlgm.analysis.diagnostics`).
        decoder_hidden: hidden sizes of the decoder MLP.
        activation: activation of the decoder MLP.

    Example::

        m = SDLGM(input_dim=784, latent_dim=200, max_sparsity=10, likelihood="bernoulli")
        history = m.fit(X, epochs=20, batch_size=128, seed=0)
        Z = m.encode(X)                # (N, 200), at most 10 non-zeros per row
        P = m.sparsity_posterior(X)    # (N, 10), q(L_i = l | x_i) for l = 1..10
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int = ModelConfig.latent_dim,
        max_sparsity: int = ModelConfig.max_sparsity,
        likelihood: ComponentSpec = ModelConfig.likelihood,
        *,
        include_zero: bool = ModelConfig.include_zero,
        binary: bool | str = ModelConfig.binary,
        sparsity_prior: ComponentSpec = ModelConfig.sparsity_prior,
        support_prior: ComponentSpec = ModelConfig.support_prior,
        value_prior: ComponentSpec = ModelConfig.value_prior,
        guide: ComponentSpec = ModelConfig.guide,
        sparsity_inference: str = ModelConfig.sparsity_inference,
        objective: str = ModelConfig.objective,
        slot_selection: str = ModelConfig.slot_selection,
        slot_layout: str | dict = ModelConfig.slot_layout,
        count_coupling: str = ModelConfig.count_coupling,
        slot_estimator: ComponentSpec = ModelConfig.slot_estimator,
        count_estimate: str = ModelConfig.count_estimate,
        decoder_hidden: Sequence[int] = ModelConfig.decoder_hidden,
        activation: str = ModelConfig.activation,
    ):
        arguments = dict(locals())
        del arguments["self"]
        config = ModelConfig(**arguments)  # the arguments are ModelConfig's fields: checked there, once
        self._init_from_config(config)

    checkpoint_format = "pyro_sdlgm.SDLGM"
    checkpoint_requires = ("model_config",)
    networks_on_access = True

    def _init_from_config(self, config: ModelConfig) -> None:
        self.config = config
        self.spec = config.spec()
        with torch.device("meta"):  # sizes only: refuse networks that cannot fit before allocating them
            self._sized = build_model_and_guide(config)
        guard_parameters(*self._sized)
        self._reset()  # the networks are built at fit, or when model or guide is first read

    def _meta_networks(self) -> tuple:
        return self._sized  # the sizes do not depend on the data

    def _networks(self) -> tuple:
        return build_model_and_guide(self.config)

    def _checkpoint_fields(self) -> dict[str, Any]:
        return {"model_config": self.config.to_dict()}

    @classmethod
    def _from_checkpoint(cls, data: Mapping[str, Any]) -> SDLGM:
        return cls.from_config(data["model_config"])

    @classmethod
    def from_config(cls, config: ModelConfig | Mapping[str, Any]) -> SDLGM:
        """Build from a :class:`ModelConfig` or a ``[model]`` table (``input_dim`` required)."""
        if not isinstance(config, ModelConfig):
            config = from_dict(ModelConfig, config)
        self = cls.__new__(cls)
        self._init_from_config(config)
        return self

    # -- properties -----------------------------------------------------------------------

    @property
    def sparsity_levels(self) -> np.ndarray:
        """The values of ``L_i`` indexing the columns of :meth:`sparsity_posterior`."""
        return self.spec.levels().numpy()

    def _check(self, X, name="X") -> torch.Tensor:
        # the likelihood's support check reads no parameter: the sized (meta) model's serves before fit
        likelihood = (self._model or self._sized[0]).likelihood
        return as_data_tensor(X, self.spec.input_dim, likelihood, name)

    def _batches(self, x: torch.Tensor, batch_size: int):
        """Batches of ``x`` on the networks' device, with the networks in eval mode."""
        for rows in self._eval_batches(x.shape[0], batch_size):
            yield x[rows].to(self.device)

    # -- training -------------------------------------------------------------------------

    def fit(self, X, *, validation_data=None, run_dir: str | Path | None = None, resume: bool = False,
            overwrite: bool = False, **train_options) -> list[dict]:
        """Train by SVI from a fresh, seeded initialization; return the per-epoch history.

        Args:
            X: ``(N, D)`` numpy array or torch tensor.
            validation_data: optional ``(M, D)`` data for early stopping; by default a
                seeded ``validation_fraction`` of ``X`` is held out.
            run_dir: if given, per-epoch metrics go to ``run_dir/metrics.jsonl`` and
                training checkpoints to ``run_dir/checkpoints/`` (``checkpoint_every``).
            resume: continue the interrupted training of ``run_dir`` from its newest
                checkpoint (same data, model and training options; the result equals an
                uninterrupted run's, see :meth:`pyro_sdlgm.inference.trainer.Trainer.fit`).
            overwrite: replace the checkpoints and metrics an earlier run left in ``run_dir``
                (else a fresh fit there raises :class:`ConfigError`).
            **train_options: fields of :class:`pyro_sdlgm.config.TrainConfig`, e.g.
                ``epochs``, ``batch_size``, ``learning_rate``, ``seed``, ``device``,
                ``tau_sparsity_start``/``_end``, ``tau_support_start``/``_end``,
                ``anneal_fraction``, ``kl_warmup_fraction``, ``patience``, ``progress``,
                ``checkpoint_every``, ``keep_checkpoints``, ``nan_policy``.

        Returns:
            list of dicts (``epoch``, ``train_loss``, ``val_loss``, temperatures, ``kl_weight``,
            ``skipped_batches``, ``seconds``): losses are negative ELBOs per example.
        """
        cfg = self._train_config(train_options, "SDLGM.fit()")
        check_run_dir(run_dir, resume, overwrite)
        x = self._check(X)
        x_val = self._check(validation_data, "validation_data") if validation_data is not None else None
        if x_val is None and cfg.validation_fraction > 0:
            fit_rows, val_rows = validation_split(x.shape[0], cfg.validation_fraction, cfg.seed)
            if val_rows is not None:
                x, x_val = x[torch.from_numpy(fit_rows)], x[torch.from_numpy(val_rows)]
            else:
                logger.warning("too few rows (%d) to hold out a validation split; early stopping is off", x.shape[0])
        self._refuse_unfit(cfg, x.shape[0], 0 if x_val is None else x_val.shape[0])
        return self._train((x,), None if x_val is None else (x_val,), cfg, run_dir=run_dir, resume=resume,
                           overwrite=overwrite, identity={"model": self.config.to_dict()})

    # -- inference ------------------------------------------------------------------------

    @torch.no_grad()
    def _guide_outputs(self, X, batch_size: int, method: str):
        self._check_fitted(method)
        x = self._check(X)
        self.guide.eval()
        self.model.eval()
        for batch in self._batches(x, batch_size):
            yield batch, self._amortize(batch)

    def _amortize(self, batch: torch.Tensor):
        """The guide's parameters of a batch, with the count posterior ``count_estimate`` names."""
        return self._refine(self.guide.amortize(batch), batch)

    def _refine(self, params, batch: torch.Tensor):
        """``params`` with the refined count logits when ``count_estimate="refined"``."""
        if self.config.count_estimate != "refined":
            return params
        from pyro_sdlgm.analysis.diagnostics import refined_count_logits

        return params._replace(sparsity_logits=refined_count_logits(self.model, params, batch))

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
            z = self.guide.hard_code(params)[0].cpu().numpy()
            codes.append(scipy.sparse.csr_matrix(z) if sparse else z)
        return scipy.sparse.vstack(codes, format="csr") if sparse else np.concatenate(codes)

    @torch.no_grad()
    def sparsity_posterior(self, X, *, batch_size: int = 1024) -> np.ndarray:
        """``q(L_i = l | x_i)``, shape ``(N, num_levels)``; columns follow :attr:`sparsity_levels`."""
        probs = [self.guide.sparsity_probs(p).cpu() for _, p in self._guide_outputs(X, batch_size, "sparsity_posterior")]
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
            z = self.guide.hard_code(params)[0]
            out.append(self.model.likelihood.mean(self.model.decoder(z)).cpu())
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
        self.model.eval()
        self.guide.eval()
        # the count network's own q(L|x) (with count_estimate="refined", L_hat would be the supported count)
        parts = [prefix_terms(self.model, self.guide.amortize(batch), batch) for batch in self._batches(x, batch_size)]
        terms = {key: torch.cat([part[key] for part in parts]).cpu().numpy() for key in parts[0]}
        # at width the hard codes stay sparse ((N, K) floats would not fit)
        effects = dimension_effects(self.model, self.encode(X, sparse=self.spec.wide, batch_size=batch_size))
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
        schedule = final_schedule(self.train_config)
        self.model.eval()
        self.guide.eval()

        def batches():
            for batch in self._batches(x, batch_size):
                params = self._amortize(batch)
                if posterior_predictive:  # the model replayed on guide draws: x of draw s from the code of draw s
                    guide = partial(_place_guide_sites, self.guide, params)
                    yield (self.guide.sparsity_probs(params), poutine.uncondition(self.model), (batch,), schedule,
                           guide)
                else:  # the guide's sites alone, from parameters amortized once per batch
                    yield (self.guide.sparsity_probs(params), partial(self.guide.place_sites, params, None),
                           (), {**schedule}, None)

        probs, draws = sample_batches(self.spec, batches(), num_samples, seed, self.device,
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
        z = torch.zeros(dims.size, self.spec.latent_dim, device=self.device)
        z[torch.arange(dims.size), torch.as_tensor(dims.copy())] = torch.as_tensor(values, dtype=z.dtype, device=self.device)
        self.model.eval()
        return self.model.likelihood.mean(self.model.decoder(z)).cpu().numpy()

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
        count posterior ``count_estimate`` names.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise DataError(f"num_samples must be a positive integer, got {num_samples!r}")
        self._check_fitted("evaluate")
        x = self._check(X)
        schedule = final_schedule(self.train_config)
        self.model.eval()
        self.guide.eval()
        sums: dict[str, float] = {}
        codes, duplicates, used, entropy, mse, recon_hard = [], 0, 0, 0.0, 0.0, 0.0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in self._batches(x, batch_size):
                for sample in range(num_samples):
                    terms, guide_trace = elbo_terms(self.model, self.guide, batch, schedule)
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + float(value.sum()) / num_samples
                    if sample == 0:
                        repeats, drawn_counts = slot_duplicates(guide_trace, self.spec)
                        duplicates += int(repeats.sum())
                        used += int(drawn_counts.sum())
                        # the guide's amortized parameters, with the count posterior in use
                        params = self._refine(guide_trace.nodes["_RETURN"]["value"], batch)
                z, _ = self.guide.hard_code(params)
                codes.append(z.cpu())
                decoded = self.model.decoder(z)
                recon_hard += float(-self.model.likelihood.dist(decoded).log_prob(batch).sum())
                mse += float(((self.model.likelihood.mean(decoded) - batch) ** 2).sum())
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
