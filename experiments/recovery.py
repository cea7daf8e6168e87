"""Recovery benchmark: does SDLGM find the true supports and counts of data with known sparse codes?

    python -m experiments.recovery --settings lg_k40 --seeds 0 1 2 --epochs 60 --jobs 2
    python -m experiments.recovery --settings lg_k40 bern_k40 --methods sdlgm_default topk_ae_kL0 oracle
    python -m experiments.recovery --settings lg_tiny --seeds 0 --epochs 2 --jobs 0   # smoke run

What it measures. Synthetic data are drawn with a known support ``S_i`` (the non-zero
dimensions of the true code) and a known count ``L_i = |S_i|`` per row; every method is
trained on the same train split (validation split for early stopping) with the same
budget, and scored on the test split on how well its hard codes reconstruct ``x``, how well
its count tracks ``L_i`` and how well its supports match ``S_i``.

Generators (:mod:`recovery_data`; ``L_i`` uniform on ``1..L0``, a support of ``L_i``
distinct uniform dimensions out of ``K``; the dictionary ``W`` is fixed by the data seed):

- ``linear_gaussian``: ``x = z W + noise * N(0, 1)``, ``W`` with ``N(0, 1)`` entries, values
  ``sign * Uniform(0.5, 1.5)`` (bounded away from 0, so the count is identifiable) or, with the
  setting's ``values``, ``N(0, 1)`` or ``Laplace`` values with mass near zero;
- ``random_mlp``: the same codes through a random network, ``x = tanh(z A) B + noise * N(0, 1)``
  (nonlinear; no dictionary);
- ``bernoulli``: binary ``z = s``, ``x ~ Bernoulli(sigmoid(z W + b))``, ``W`` with ``N(0, 2^2)``,
  ``b = -2`` (the setting's ``bias`` changes the density).

Settings are the entries of :data:`SETTINGS` (main: ``lg_k40``, ``K = 40, D = 100, L0 = 8``,
noise 0.1). Splits: 4000 train, 500 validation, 1000 test rows from one generator call with
``--data-seed`` (default 0); the benchmark seed (``--seeds``) drives model initialization
and training only, so all seeds see the same data.

Methods:

- the entries of :data:`SDLGM_VARIANTS`: ``SDLGM(input_dim=D, latent_dim=K, max_sparsity=L0,
  likelihood="normal" | "bernoulli", **model options)``, fitted with
  ``fit(X_train, validation_data=X_val, epochs, batch_size=128, learning_rate=1e-3, seed,
  patience=10, **fit options)``; hard codes ``encode``, reconstruction ``reconstruct`` (the
  likelihood mean of the decoded hard code), ``E[L|x] = sparsity_posterior @ sparsity_levels``,
  predicted count ``predict_sparsity`` (the mode of ``q(L|x)``);
- ``topk_ae_k<k>`` (also ``topk_ae_kL0`` and ``topk_ae_kmatched``, the latter at ``k =
  round(mean non-zeros of sdlgm_default)`` on the same seed, or ``ceil(L0 / 2)`` when
  ``sdlgm_default`` is not in the run): a top-k autoencoder with an MLP encoder of the
  default SDLGM guide's hidden sizes and a linear decoder (``K -> D`` with bias), squared
  error (linear_gaussian) or Bernoulli cross-entropy (bernoulli), Adam, the same batch size,
  learning rate, epochs and early stopping as SDLGM (:func:`unsupervised_baselines.train_autoencoder`).
  Two top-k forms exist: ``relu`` (the ``k`` largest pre-activations, then ReLU; Makhzani &
  Frey 2013, Gao et al. 2024) and ``abs`` (the ``k`` pre-activations largest in absolute
  value, kept signed; a signed true code needs two ReLU dimensions per true one). By default
  both are trained and the one with the lower validation loss is kept (for linear_gaussian
  that is the one explaining more validation variance; for bernoulli, the lower validation
  cross-entropy); the ``form`` column names it; the suffix ``_relu`` or ``_abs`` fixes the
  form. Its predicted count is ``k``; it has no ``E[L|x]``;
- ``pca_norm``: the heuristic count, the norm of the projection of ``x`` on the top ``K``
  principal components (fitted on train); only ``spearman_L`` is reported;
- ``omp_oracle`` (linear_gaussian, when named): orthogonal matching pursuit with the true
  dictionary, stopping at a squared residual of ``factor * D noise^2`` (the factor chosen on the
  validation rows' counts) and capped at ``L0`` atoms
  (scikit-learn's ``orthogonal_mp``): the classical ceiling for counts that must be found;
- ``dict_omp`` (linear_gaussian, when named): scikit-learn's ``MiniBatchDictionaryLearning``
  (``K`` atoms, its lasso penalty chosen on the validation counts) on the training rows, then the
  same OMP with the learned atoms: what a signal-processing user would pick, told the noise level;
- ``oracle``: the true dictionary and the true supports. For linear_gaussian, the
  least-squares values on the true support of each row, reconstruction ``z W`` (the data
  have mean 0): the ceiling of explained variance for codes with the true count. For
  bernoulli, the true codes and the true probabilities ``sigmoid(z W + b)``. It is given the
  counts, so its ``spearman_L`` and ``count_accuracy`` are NaN.

Metrics per (setting, method, seed), on the test rows:

- ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean_train(x)||^2`` (for
  bernoulli, of the probabilities, for information);
- ``recon_nats`` (bernoulli only): mean over rows of the Bernoulli negative log-likelihood of
  ``x`` under the probabilities ``x_hat`` clipped to ``[1e-6, 1 - 1e-6]``, summed over features;
- ``spearman_L``: Spearman's correlation of ``E[L|x]`` (``pca_norm``: of the norm) with ``L``;
- ``count_accuracy``: the fraction of rows whose predicted count equals ``L_i``;
  ``nnz_count_accuracy``: the same for the number of non-zeros of the hard code;
- ``support_f1``: learned dimensions are matched one-to-one to true ones by the Hungarian
  algorithm on the co-occurrence of "learned ``j`` active" and "true ``k`` in the support"
  over the train rows' hard codes; then the micro-F1 of the mapped test supports;
- ``atom_cosine`` (linear_gaussian and bernoulli): dictionary recovery, the mean ``|cos|`` between
  each true atom (a row of ``W``) and the learned one it is matched to one-to-one (Hungarian
  algorithm on ``|cos|``); a learned atom is what the dimension adds to the decoder's output
  (mean or logits), ``decoder(e_k) - decoder(0)``, the weight column of a linear decoder;
- ``mean_nnz``, ``max_nnz`` of the hard test codes; ``epochs`` run, ``train_seconds`` (for
  the top-k autoencoder, of the kept form), ``train_peak_mb`` (resident memory above the
  level at the start of training, :class:`suite_common.PeakMemory`).

Each run trains in a fresh process with one torch thread (``--jobs N`` at a time; ``--jobs 0``
runs in this process). As each run finishes, its row is merged into
``<out>/recovery_<setting>.csv`` (a rerun of a (method, seed) replaces its row, the others
stay) and ``<out>/recovery_<setting>_summary.csv`` is rewritten: mean, standard deviation
(ddof=1) and worst seed of every metric per method (worst: the minimum of
explained_variance, spearman_L, the accuracies and support_f1; the maximum of the others,
e.g. recon_nats and mean_nnz).
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import fcntl
import inspect
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from experiments import recovery_data as data
from experiments.suite_common import PeakMemory, mean_and_std, run_pool, write_csv

HERE = Path(__file__).resolve().parent

logger = logging.getLogger("recovery")

SPLIT_SIZES = dict(n_train=4000, n_val=500, n_test=1000)

SETTINGS = {
    "lg_k40": dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.1),  # the main setting
    "lg_k40_noisy": dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.5),
    "lg_k40_l4": dict(kind="linear_gaussian", K=40, D=100, L0=4, noise=0.1),
    "lg_k40_d30": dict(kind="linear_gaussian", K=40, D=30, L0=8, noise=0.1),  # overcomplete: K > D
    "lg_k100": dict(kind="linear_gaussian", K=100, D=200, L0=10, noise=0.1),
    # values with mass near zero (3,000 training rows), at three noise levels
    "lg_k40_gauss": dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.1, values="gaussian", n_train=3000),
    "lg_k40_gauss_noisy": dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.3, values="gaussian", n_train=3000),
    "lg_k40_gauss_quiet": dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.03, values="gaussian",
                               n_train=3000),
    "lg_k40_laplace": dict(kind="linear_gaussian", K=40, D=100, L0=8, noise=0.1, values="laplace", n_train=3000),
    # a nonlinear generator: the same codes through a random tanh network
    "mlp_k40_gauss": dict(kind="random_mlp", K=40, D=100, L0=8, noise=0.1, values="gaussian", n_train=3000),
    "bern_k40": dict(kind="bernoulli", K=40, D=100, L0=8),
    # Bernoulli data of other densities (the bias sets the mean of x: about 0.12 at -3, 0.30 at -1)
    "bern_k40_sparse": dict(kind="bernoulli", K=40, D=100, L0=8, bias=-3.0),
    "bern_k40_dense": dict(kind="bernoulli", K=40, D=100, L0=8, bias=-1.0),
    "bern_k20_l4": dict(kind="bernoulli", K=20, D=100, L0=4),
    # tiny settings for smoke runs and the tests
    "lg_tiny": dict(kind="linear_gaussian", K=6, D=12, L0=3, noise=0.1, n_train=300, n_val=100, n_test=200),
    "bern_tiny": dict(kind="bernoulli", K=6, D=12, L0=3, n_train=300, n_val=100, n_test=200),
}

# method name -> options: either SDLGM keyword options, or {"model": {...}, "fit": {...}}
# the previous library defaults: per-slot logits and the count network's q(L|x)
PREVIOUS = {"guide": "mlp_per_slot", "count_estimate": "amortized", "binary": False}
MAGNITUDE = {"guide": "mlp_magnitude_slots", "count_estimate": "amortized", "binary": False}
MARGINAL = {"sparsity_inference": "marginal", "count_coupling": "prefix_mixture"}
SDLGM_VARIANTS = {
    "sdlgm_default": {},  # the library's defaults at the time of the run
    "sdlgm_previous": PREVIOUS,
    "sdlgm_linear_decoder": {**PREVIOUS, "decoder_hidden": []},  # the generators' decoders are linear
    "sdlgm_prefix": {**PREVIOUS, "count_coupling": "prefix_mixture"},
    "sdlgm_marginal": {**PREVIOUS, **MARGINAL},
    "sdlgm_st": {**PREVIOUS, "slot_estimator": "straight_through"},
    "sdlgm_magnitude": MAGNITUDE,
    "sdlgm_magnitude_st_marginal": {**MAGNITUDE, **MARGINAL, "slot_estimator": "straight_through"},
    # linear decoders
    "sdlgm_lin_magnitude": {**MAGNITUDE, "decoder_hidden": []},
    "sdlgm_lin_magnitude_marginal": {**MAGNITUDE, **MARGINAL, "decoder_hidden": []},
    "sdlgm_lin_magnitude_marginal_st": {**MAGNITUDE, **MARGINAL, "decoder_hidden": [],
                                        "slot_estimator": "straight_through"},
    "sdlgm_lin_magnitude_refined": {**MAGNITUDE, "decoder_hidden": [], "count_estimate": "refined"},
    "sdlgm_lin_magnitude_marginal_refined": {**MAGNITUDE, **MARGINAL, "decoder_hidden": [],
                                             "count_estimate": "refined"},
    # the library's defaults at the time of the run, with a linear decoder
    "sdlgm_lin": {"decoder_hidden": []},
    "sdlgm_lin_marginal": {**MARGINAL, "decoder_hidden": []},
    "sdlgm_lin_imle": {"decoder_hidden": [], "slot_estimator": "imle"},
    "sdlgm_lin_marginal_imle": {**MARGINAL, "decoder_hidden": [], "slot_estimator": "imle"},
    "sdlgm_lin_patience30": {"model": {"decoder_hidden": []}, "fit": {"patience": 30}},
    # the default MLP decoder with an explicit linear part
    "sdlgm_skip": {"decoder_skip": True},
    "sdlgm_mlp": {"decoder_skip": False},  # the MLP decoder without a linear part (the default before decoder_skip)
    "sdlgm_skip_dup": {"model": {"decoder_skip": True}, "fit": {"revive_duplicates": True}},
    "sdlgm_lin_dup": {"model": {"decoder_hidden": []}, "fit": {"revive_duplicates": True}},
    # codes by a matching pursuit through the fitted decoder (a post-training option)
    "sdlgm_pursuit": {"encoding": "pursuit"},
    # dead-dimension revival every 10 epochs while the schedules run
    "sdlgm_revive": {"model": {}, "fit": {"revive_every": 10}},
    "sdlgm_lin_revive": {"model": {"decoder_hidden": []}, "fit": {"revive_every": 10}},
    "sdlgm_lin_marginal_revive": {"model": {**MARGINAL, "decoder_hidden": []}, "fit": {"revive_every": 10}},
    "sdlgm_lin_revive5": {"model": {"decoder_hidden": []}, "fit": {"revive_every": 5}},
    "sdlgm_lin_revive_copy": {"model": {"decoder_hidden": []}, "fit": {"revive_every": 10, "revive": "copy"}},
    "sdlgm_lin_marginal_revive_copy": {"model": {**MARGINAL, "decoder_hidden": []},
                                       "fit": {"revive_every": 10, "revive": "copy"}},
}

LIKELIHOODS = {"linear_gaussian": "normal", "random_mlp": "normal", "bernoulli": "bernoulli"}
TOPK_PATTERN = re.compile(r"topk_ae_k(\d+|L0|matched)(?:_(relu|abs))?")
TOPK_FORMS = ("relu", "abs")
OTHER_METHODS = ("pca_norm", "oracle", "omp_oracle", "dict_omp")

METRICS = ["explained_variance", "recon_nats", "spearman_L", "count_accuracy", "spearman_L_amortized",
           "count_accuracy_amortized", "nnz_count_accuracy", "support_f1", "atom_cosine",
           "mean_nnz", "max_nnz", "epochs", "train_seconds", "train_peak_mb"]
HIGHER_IS_BETTER = {"explained_variance", "spearman_L", "count_accuracy", "spearman_L_amortized", "count_accuracy_amortized",
                    "nnz_count_accuracy", "support_f1", "atom_cosine"}
COLUMNS = ["setting", "kind", "method", "seed", "data_seed", "K", "D", "L0", "k", "form", "epoch_budget"] + METRICS
NAN = float("nan")


def default_methods() -> list[str]:
    return [*SDLGM_VARIANTS, "topk_ae_kL0", "topk_ae_kmatched", "pca_norm", "oracle"]  # the OMP methods: when named


def check_method(name: str) -> str:
    if name in SDLGM_VARIANTS or name in OTHER_METHODS or TOPK_PATTERN.fullmatch(name):
        return name
    raise argparse.ArgumentTypeError(
        f"unknown method {name!r}; known: {', '.join(SDLGM_VARIANTS)}, topk_ae_k<k|L0|matched>[_relu|_abs], "
        f"{', '.join(OTHER_METHODS)}")


def setting_config(name: str) -> dict:
    """The setting ``name`` with the default split sizes filled in."""
    return {**SPLIT_SIZES, **SETTINGS[name]}


def variant_options(entry: dict) -> tuple[dict, dict]:
    """``(model options, fit options)`` of an :data:`SDLGM_VARIANTS` entry."""
    if entry and set(entry) <= {"model", "fit"}:
        return dict(entry.get("model", {})), dict(entry.get("fit", {}))
    return dict(entry), {}


def default_guide_hidden() -> tuple[int, ...]:
    """Hidden sizes of SDLGM's default guide (``ModelConfig.guide`` with its factory's default ``hidden``)."""
    from pyro_sdlgm import ModelConfig
    from pyro_sdlgm.model.guides import GUIDES
    from pyro_sdlgm.model.registry import component_name

    name, options = component_name(ModelConfig.guide, GUIDES.kind)
    hidden = options.get("hidden", inspect.signature(GUIDES.get(name)).parameters["hidden"].default)
    return tuple(hidden)


# ----------------------------------------------------------------------------- methods
# Each returns a dict with (where it has them) ``codes_train``, ``codes_test`` (hard codes),
# ``x_hat`` (test reconstruction from the hard codes), ``expected_L``, ``predicted_L``,
# ``epochs``, ``train_seconds``, ``train_peak_mb`` and extra row fields (``k``, ``form``).


def fit_sdlgm(method: str, splits: dict, cfg: dict, job: dict) -> dict:
    from pyro_sdlgm import SDLGM

    (x_train, *_), (x_val, *_), (x_test, *_) = splits["train"], splits["val"], splits["test"]
    model_options, fit_options = variant_options(SDLGM_VARIANTS[method])
    model = SDLGM(input_dim=cfg["D"], latent_dim=cfg["K"], max_sparsity=cfg["L0"],
                  **{"likelihood": LIKELIHOODS[cfg["kind"]], **model_options})
    fit_options = {**dict(epochs=job["epochs"], batch_size=job["batch_size"], learning_rate=job["learning_rate"],
                          seed=job["seed"], patience=job["patience"], progress=False), **fit_options}
    meter = PeakMemory()
    started = time.perf_counter()
    with meter:
        history = model.fit(x_train, validation_data=x_val, **fit_options).history_
    seconds = time.perf_counter() - started
    out = dict(codes_train=model.encode(x_train), codes_test=model.encode(x_test), x_hat=model.reconstruct(x_test),
               expected_L=model.sparsity_posterior(x_test) @ model.sparsity_levels,
               predicted_L=model.predict_sparsity(x_test), epochs=len(history), train_seconds=seconds,
               train_peak_mb=meter.peak_mb, atoms=decoder_atoms(model))
    # the count network's own q(L|x) of the same fitted model (count_estimate changes no training step)
    model.set_params(count_estimate="amortized")  # a post-training option: read at each call
    out.update(expected_L_amortized=model.sparsity_posterior(x_test) @ model.sparsity_levels,
               predicted_L_amortized=model.predict_sparsity(x_test))
    return out


def decoder_atoms(model) -> np.ndarray:
    """``(K, D)``: what each dimension adds to the decoder's output (the likelihood's parameter: the
    mean or the logits), ``decoder(e_k) - decoder(0)``; for a linear decoder, its weight columns
    (the pursuit's :func:`~pyro_sdlgm.inference.pursuit.decoder_atoms`, as float64 numpy)."""
    from pyro_sdlgm.inference.pursuit import decoder_atoms as atoms

    return atoms(model.model_).cpu().double().numpy()


def make_topk_module(input_dim: int, latent_dim: int, k: int, form: str, likelihood: str, hidden):
    """A top-k autoencoder (see the module docstring) as a module with ``loss``, ``codes``, ``reconstruct``."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from pyro_sdlgm.model.networks import mlp
    from experiments.unsupervised_baselines import bernoulli_nll

    if form not in TOPK_FORMS:
        raise ValueError(f"form must be one of {TOPK_FORMS}, got {form!r}")
    if not 1 <= k <= latent_dim:
        raise ValueError(f"k must lie in [1, {latent_dim}], got {k}")

    class TopKLinearAutoencoder(nn.Module):
        has_elbo = False

        def __init__(self):
            super().__init__()
            self.k, self.form, self.likelihood = k, form, likelihood
            self.encoder = mlp(input_dim, hidden, latent_dim)
            self.decoder = nn.Linear(latent_dim, input_dim)

        def codes(self, x):
            pre = self.encoder(x)
            if self.form == "relu":
                values, index = pre.topk(self.k, dim=-1)
                values = F.relu(values)
            else:
                index = pre.abs().topk(self.k, dim=-1).indices
                values = pre.gather(-1, index)
            return torch.zeros_like(pre).scatter(-1, index, values)

        def loss(self, x, tau=None, kl_weight=None):  # tau and kl_weight: train_autoencoder's interface, unused
            out = self.decoder(self.codes(x))
            if self.likelihood == "bernoulli":
                return bernoulli_nll(out, x)
            return ((out - x) ** 2).sum(-1)

        @torch.no_grad()
        def reconstruct(self, x):
            out = self.decoder(self.codes(x))
            return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    return TopKLinearAutoencoder()


def fit_topk(method: str, splits: dict, cfg: dict, job: dict) -> dict:
    import torch

    from experiments.unsupervised_baselines import train_autoencoder

    fixed_form = TOPK_PATTERN.fullmatch(method).group(2)
    forms = [fixed_form] if fixed_form else list(TOPK_FORMS)
    k = job["k"]
    (x_train, *_), (x_val, *_), (x_test, *_) = splits["train"], splits["val"], splits["test"]
    t_train, t_val, t_test = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, x_val, x_test))
    best = None
    for form in forms:
        torch.manual_seed(job["seed"])
        module = make_topk_module(cfg["D"], cfg["K"], k, form, LIKELIHOODS[cfg["kind"]], default_guide_hidden())
        meter = PeakMemory()
        started = time.perf_counter()
        with meter:
            history = train_autoencoder(module, t_train, t_val, epochs=job["epochs"], batch_size=job["batch_size"],
                                        learning_rate=job["learning_rate"], seed=job["seed"], patience=job["patience"])
        seconds = time.perf_counter() - started
        with torch.no_grad():
            val_loss = float(module.loss(t_val).mean())
        logger.info("%s seed %d: form %s, validation loss %.4f", method, job["seed"], form, val_loss)
        if best is None or val_loss < best[0]:
            best = (val_loss, form, module, history, seconds, meter.peak_mb)
    _, form, module, history, seconds, peak = best
    with torch.no_grad():
        out = dict(codes_train=module.codes(t_train).numpy(), codes_test=module.codes(t_test).numpy(),
                   x_hat=module.reconstruct(t_test).numpy(), atoms=module.decoder.weight.double().numpy().T)
    return dict(out, predicted_L=np.full(len(x_test), k), epochs=len(history), train_seconds=seconds,
                train_peak_mb=peak, k=k, form=form)


def fit_pca_norm(method: str, splits: dict, cfg: dict, job: dict) -> dict:
    from sklearn.decomposition import PCA

    (x_train, *_), (x_test, *_) = splits["train"], splits["test"]
    started = time.perf_counter()
    pca = PCA(n_components=min(cfg["K"], *x_train.shape), svd_solver="full").fit(x_train)
    seconds = time.perf_counter() - started
    return dict(expected_L=np.linalg.norm(pca.transform(x_test), axis=1), epochs=0, train_seconds=seconds)


def least_squares_on_support(X: np.ndarray, support: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Per row, the values on its support minimizing ``||x - z W||^2`` (zeros elsewhere)."""
    Z = np.zeros(support.shape)
    for i in range(len(X)):
        dims = np.flatnonzero(support[i])
        Z[i, dims] = np.linalg.lstsq(W[dims].T, X[i].astype(np.float64), rcond=None)[0]
    return Z


def fit_oracle(method: str, splits: dict, cfg: dict, job: dict) -> dict:
    from scipy.special import expit

    (x_train, S_train, _, _), (x_test, S_test, _, p_test) = splits["train"], splits["test"]
    started = time.perf_counter()
    if cfg["kind"] == "linear_gaussian":
        W = p_test["W"]
        codes_train = least_squares_on_support(x_train, S_train, W)
        codes_test = least_squares_on_support(x_test, S_test, W)
        x_hat = codes_test @ W
    elif cfg["kind"] == "random_mlp":
        codes_train, codes_test = splits["train"][3]["Z"], p_test["Z"]
        x_hat = np.tanh(codes_test @ p_test["A"]) @ p_test["B"]
    else:
        codes_train, codes_test = splits["train"][3]["Z"], p_test["Z"]
        x_hat = expit(p_test["logits"])
    return dict(codes_train=codes_train, codes_test=codes_test, x_hat=x_hat, epochs=0,
                train_seconds=time.perf_counter() - started)


#: the OMP tolerance factors ``omp_oracle`` chooses among on the validation rows
OMP_TOLERANCE_FACTORS = (1.0, 1.1, 1.2, 1.3, 1.5, 2.0)


def omp_codes(X: np.ndarray, W: np.ndarray, tol: float, L0: int) -> np.ndarray:
    """Orthogonal matching pursuit of each row of ``X`` on the dictionary ``W (K, D)``, stopping when
    the squared residual falls below ``tol``; a row that needs more than ``L0`` atoms is pursued
    again with exactly ``L0`` (scikit-learn's ``orthogonal_mp``)."""
    from sklearn.linear_model import orthogonal_mp

    dictionary, targets = W.T, X.T.astype(np.float64)
    Z = np.atleast_2d(orthogonal_mp(dictionary, targets, tol=tol).T)
    over = np.flatnonzero((Z != 0).sum(1) > L0)
    if len(over):
        Z[over] = np.atleast_2d(orthogonal_mp(dictionary, targets[:, over], n_nonzero_coefs=L0).T)
    return Z


def omp_with_tolerance(splits: dict, cfg: dict, W: np.ndarray, center: np.ndarray, method: str) -> dict:
    """OMP of the centred rows on ``W (K, D)`` at a squared residual of ``factor * D noise^2``, the factor
    of :data:`OMP_TOLERANCE_FACTORS` whose counts have the best Spearman correlation with the true ones
    on the validation rows; the outputs of a method (codes, reconstruction, counts)."""
    (x_train, *_), (x_val, _, L_val, _), (x_test, *_) = splits["train"], splits["val"], splits["test"]
    base = x_test.shape[1] * cfg["noise"] ** 2
    factor = max(OMP_TOLERANCE_FACTORS,
                 key=lambda f: data.spearman((omp_codes(x_val - center, W, f * base, cfg["L0"]) != 0).sum(1), L_val))
    codes_train = omp_codes(x_train - center, W, factor * base, cfg["L0"])
    codes_test = omp_codes(x_test - center, W, factor * base, cfg["L0"])
    counts = (codes_test != 0).sum(1)
    logger.info("%s: tolerance factor %.1f chosen on the validation rows", method, factor)
    return dict(codes_train=codes_train, codes_test=codes_test, x_hat=codes_test @ W + center, expected_L=counts,
                predicted_L=counts, atoms=W, tol=factor * base)


def check_linear(method: str, cfg: dict) -> None:
    if cfg["kind"] != "linear_gaussian":
        raise ValueError(f"{method} needs a linear_gaussian setting, got {cfg['kind']!r}")


def fit_omp_oracle(method: str, splits: dict, cfg: dict, job: dict) -> dict:
    """The classical ceiling (linear_gaussian): :func:`omp_with_tolerance` on the true dictionary."""
    check_linear(method, cfg)
    started = time.perf_counter()
    out = omp_with_tolerance(splits, cfg, splits["test"][3]["W"], np.zeros(cfg["D"]), method)
    return dict(out, epochs=0, train_seconds=time.perf_counter() - started)


#: ``dict_omp``: passes of the dictionary learning over the training rows, and the lasso penalties
#: it chooses among on the validation rows
DICT_LEARNING_PASSES = 20
DICT_LEARNING_ALPHAS = (1.0, 3.0, 10.0)


def fit_dict_omp(method: str, splits: dict, cfg: dict, job: dict) -> dict:
    """What a signal-processing user would pick (linear_gaussian): scikit-learn's
    ``MiniBatchDictionaryLearning`` with ``K`` atoms on the centred training rows (batches of the
    benchmark's size, :data:`DICT_LEARNING_PASSES` full passes, the run's seed), then
    :func:`omp_with_tolerance` on the learned (unit-norm) atoms, told the true noise level as the
    ceiling is. The lasso penalty of the learning is the one of :data:`DICT_LEARNING_ALPHAS` whose
    OMP counts have the best validation Spearman."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    check_linear(method, cfg)
    x_train = splits["train"][0].astype(np.float64)
    x_val, L_val = splits["val"][0], splits["val"][2]
    center = x_train.mean(0)
    started = time.perf_counter()
    best = None
    for alpha in DICT_LEARNING_ALPHAS:
        # tol=0 and no early stop: sklearn's default stop ends after 2 passes here, far from converged
        learner = MiniBatchDictionaryLearning(n_components=cfg["K"], alpha=alpha, batch_size=job["batch_size"],
                                              max_iter=DICT_LEARNING_PASSES, tol=0.0, max_no_improvement=None,
                                              random_state=job["seed"])
        W = learner.fit(x_train - center).components_
        out = omp_with_tolerance(splits, cfg, W, center, method)
        quality = data.spearman((omp_codes(x_val - center, W, out["tol"], cfg["L0"]) != 0).sum(1), L_val)
        logger.info("%s: alpha %g, validation Spearman %.3f", method, alpha, quality)
        if best is None or quality > best[0]:
            best = (quality, out)
    return dict(best[1], epochs=DICT_LEARNING_PASSES, train_seconds=time.perf_counter() - started)


def method_function(method: str):
    if method in SDLGM_VARIANTS:
        return fit_sdlgm
    if TOPK_PATTERN.fullmatch(method):
        return fit_topk
    return {"pca_norm": fit_pca_norm, "oracle": fit_oracle, "omp_oracle": fit_omp_oracle, "dict_omp": fit_dict_omp}[method]


# ----------------------------------------------------------------------------- one run


def score(out: dict, splits: dict, kind: str) -> dict:
    """The test metrics of one method's outputs (NaN where the method has no such output)."""
    x_train = splits["train"][0]
    S_train = splits["train"][1]
    x_test, S_test, L_test, _ = splits["test"]
    row = dict.fromkeys(METRICS, NAN)
    if out.get("x_hat") is not None:
        row["explained_variance"] = data.explained_variance(x_test, out["x_hat"], x_train.mean(0))
        if kind == "bernoulli":
            row["recon_nats"] = data.bernoulli_nats(x_test, out["x_hat"])
    if out.get("expected_L") is not None:
        row["spearman_L"] = data.spearman(out["expected_L"], L_test)
    if out.get("predicted_L") is not None:
        row["count_accuracy"] = float((np.asarray(out["predicted_L"]) == L_test).mean())
    if out.get("expected_L_amortized") is not None:
        row["spearman_L_amortized"] = data.spearman(out["expected_L_amortized"], L_test)
        row["count_accuracy_amortized"] = float((np.asarray(out["predicted_L_amortized"]) == L_test).mean())
    if out.get("atoms") is not None and "W" in splits["test"][3]:
        row["atom_cosine"] = data.atom_cosine(out["atoms"], splits["test"][3]["W"])
    if out.get("codes_test") is not None:
        row.update(data.code_recovery(out["codes_train"], S_train, out["codes_test"], S_test, L_test))
    for key in ("epochs", "train_seconds", "train_peak_mb"):
        if out.get(key) is not None:
            row[key] = out[key]
    return row


def run_one(job: dict) -> dict:
    """Train and score one method with one seed on one setting; merge its row into the CSVs when ``job["out"]``."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(job["threads"])
    try:
        row = _run(job)
    finally:
        torch.set_num_threads(previous_threads)  # in-process runs (--jobs 0) leave the caller as it was
    if job.get("out"):
        record(row, Path(job["out"]), job["setting"])
    return row


def _run(job: dict) -> dict:
    import torch

    cfg, method, seed = job["config"], job["method"], job["seed"]
    np.random.seed(seed)
    torch.manual_seed(seed)
    splits = data.make_splits(cfg, job["data_seed"])
    out = method_function(method)(method, splits, cfg, job)
    row = {"setting": job["setting"], "kind": cfg["kind"], "method": method, "seed": seed,
           "data_seed": job["data_seed"], "K": cfg["K"], "D": cfg["D"], "L0": cfg["L0"],
           "k": out.get("k", ""), "form": out.get("form", ""), "epoch_budget": job["epochs"]}
    row.update(score(out, splits, cfg["kind"]))
    for key, value in row.items():  # plain Python numbers for the CSV
        if isinstance(value, np.generic):
            row[key] = value.item()
    return row


# ----------------------------------------------------------------------------- results


def results_path(out: Path, setting: str) -> Path:
    return out / f"recovery_{setting}.csv"


def summary_path(out: Path, setting: str) -> Path:
    return out / f"recovery_{setting}_summary.csv"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def merge_rows(rows: list[dict], new: dict) -> list[dict]:
    """``rows`` with ``new`` in place of the row of the same (method, seed), or appended."""
    key = (str(new["method"]), str(new["seed"]))
    merged, replaced = [], False
    for row in rows:
        if (str(row["method"]), str(row["seed"])) == key:
            merged.append(new)
            replaced = True
        else:
            merged.append(row)
    return merged if replaced else merged + [new]


def method_order(method: str) -> tuple:
    known = default_methods()
    return (known.index(method), "") if method in known else (len(known), method)


def summarize(rows: list[dict]) -> list[dict]:
    """Per method: seeds, mean, standard deviation (ddof=1) and worst seed of every metric."""
    out = []
    for method in sorted(dict.fromkeys(str(r["method"]) for r in rows), key=method_order):
        # rows written before a metric existed count it as NaN
        group = [{**dict.fromkeys(METRICS, NAN), **r} for r in rows if str(r["method"]) == method]
        summary = {"setting": group[0]["setting"], "method": method, "n_seeds": len(group),
                   "seeds": " ".join(str(r["seed"]) for r in group),
                   "k": " ".join(dict.fromkeys(str(r["k"]) for r in group)).strip(),
                   "form": " ".join(dict.fromkeys(str(r["form"]) for r in group)).strip()}
        stats = mean_and_std(group, METRICS)
        for key in METRICS:
            values = np.array([float(r[key]) for r in group])
            summary[f"{key}_mean"], summary[f"{key}_std"] = stats[f"{key}_mean"], stats[f"{key}_std"]
            summary[f"{key}_worst"] = float(values.min() if key in HIGHER_IS_BETTER else values.max())
        out.append(summary)
    return out


def record(row: dict, out: Path, setting: str) -> None:
    """Merge ``row`` into the setting's results and rewrite its summary, under a lock on ``out``.

    Both files are written to a temporary name and renamed, so a stopped run never leaves
    a partial file; the lock keeps parallel runs from losing each other's rows.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = results_path(out, setting)
        rows = merge_rows(read_rows(path), row)
        for target, table in ((path, rows), (summary_path(out, setting), summarize(rows))):
            temporary = target.with_name(target.name + ".tmp")
            write_csv(table, temporary, COLUMNS if table is rows else list(table[0]))
            os.replace(temporary, target)
    finally:
        os.close(lock)  # closing the descriptor releases the lock


def describe(row: dict) -> str:
    return (f"{row['setting']} {row['method']} seed {row['seed']}: EV {row['explained_variance']:.4f}, "
            f"nnz {row['mean_nnz']:.2f}, spearman {row['spearman_L']:.3f}, F1 {row['support_f1']:.3f}, "
            f"{row['train_seconds']:.0f} s")


def print_summary(setting: str, summary: list[dict]) -> None:
    kind = SETTINGS[setting]["kind"] if setting in SETTINGS else ""
    print(f"\n{setting} ({kind}): mean ± sd over seeds (worst seed)")
    for s in summary:
        parts = [f"{s['method']:22s}"]
        if kind == "bernoulli":
            parts.append(f"nats {s['recon_nats_mean']:7.2f} ± {s['recon_nats_std']:.2f} ({s['recon_nats_worst']:.2f})")
        parts.append(f"EV {s['explained_variance_mean']:.4f} ± {s['explained_variance_std']:.4f} "
                     f"({s['explained_variance_worst']:.4f})")
        parts.append(f"nnz {s['mean_nnz_mean']:5.2f}")
        parts.append(f"spearman {s['spearman_L_mean']:6.3f}")
        parts.append(f"count acc {s['count_accuracy_mean']:.3f} (nnz {s['nnz_count_accuracy_mean']:.3f})")
        parts.append(f"F1 {s['support_f1_mean']:.3f}")
        parts.append(f"{s['train_seconds_mean']:.0f} s")
        print("  ".join(parts))


# ----------------------------------------------------------------------------- runner


def matched_k(method: str, cfg: dict, seed: int, sdlgm_nnz: dict[int, float]) -> int | None:
    """The ``k`` of a top-k method (None for the others); ``sdlgm_nnz``: seed -> sdlgm_default's mean non-zeros."""
    match = TOPK_PATTERN.fullmatch(method)
    if match is None:
        return None
    which = match.group(1)
    if which == "L0":
        k = cfg["L0"]
    elif which == "matched":
        k = round(sdlgm_nnz[seed]) if seed in sdlgm_nnz else math.ceil(cfg["L0"] / 2)
    else:
        k = int(which)
    return min(max(int(k), 1), cfg["K"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["lg_k40"], choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", type=check_method, help="default: " + " ".join(default_methods()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="model seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generator (the same data for all seeds)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=10, help="early stopping on the validation loss")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel, each in a fresh process with --threads threads (0: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    methods = list(dict.fromkeys(args.methods or default_methods()))
    out = Path(args.out)

    for setting in args.settings:
        cfg = setting_config(setting)

        def job(method, seed, k=None):
            return dict(setting=setting, config=cfg, method=method, seed=seed, data_seed=args.data_seed,
                        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                        patience=args.patience, threads=args.threads, out=str(out), k=k)

        later = [m for m in methods if TOPK_PATTERN.fullmatch(m) and TOPK_PATTERN.fullmatch(m).group(1) == "matched"]
        if later and "sdlgm_default" not in methods:
            logger.warning("sdlgm_default is not in the run: %s use k = ceil(L0 / 2) = %d", ", ".join(later),
                           math.ceil(cfg["L0"] / 2))
        first = [job(m, seed, matched_k(m, cfg, seed, {})) for m in methods if m not in later for seed in args.seeds]
        rows = run_pool(run_one, first, args.jobs, describe)
        nnz = {r["seed"]: r["mean_nnz"] for r in rows if r["method"] == "sdlgm_default"}
        second = [job(m, seed, matched_k(m, cfg, seed, nnz)) for m in later for seed in args.seeds]
        if second:
            run_pool(run_one, second, args.jobs, describe)
        print_summary(setting, summarize(read_rows(results_path(out, setting))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
