"""Generators with known supports and counts, and the metrics of the recovery benchmark.

Every generator draws, from one seeded ``numpy`` generator, its parameters first (the
dictionary ``W``, fixed per data seed), then the rows. Each row ``i`` has a count ``L_i``
uniform on ``1..L0`` and a support of ``L_i`` distinct dimensions out of ``K``, chosen
uniformly. A generator returns ``X (N, D)`` float32, the true support ``S (N, K)`` bool,
the true counts ``L (N,)`` int64 and a dict of its parameters (``W``, the true codes
``Z``, the noise level or the bias and the true logits).

- :func:`linear_gaussian`: values ``v = sign * Uniform(0.5, 1.5)`` with a random sign on the
  support (bounded away from 0, so the count is identifiable from ``x``), ``W`` with
  ``N(0, 1)`` entries, ``x = z W + noise * N(0, 1)``.
- :func:`random_mlp`: the same codes through a random one-hidden-layer network,
  ``x = tanh(z A) B + noise * N(0, 1)`` (``A`` with ``N(0, 1)`` entries, ``B`` with
  ``N(0, 1 / H)``): a nonlinear generator, with no dictionary to recover.
- :func:`bernoulli`: binary codes ``z = s``, ``W`` with ``N(0, weight_sd^2)`` entries (2 by
  default), a bias (-2 by default; it sets the density of the data) per feature,
  ``x ~ Bernoulli(sigmoid(z W + b))`` as 0/1 floats.

The metrics take numpy arrays and return plain floats.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit
from scipy.stats import spearmanr

VALUE_LOW, VALUE_HIGH = 0.5, 1.5


# ----------------------------------------------------------------------------- generators


def draw_supports(rng: np.random.Generator, n: int, K: int, L0: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts ``L (n,)`` uniform on ``1..L0`` and supports ``S (n, K)`` of ``L_i`` distinct uniform dimensions."""
    if not 1 <= L0 <= K:
        raise ValueError(f"L0 must lie in [1, K={K}], got {L0}")
    counts = rng.integers(1, L0 + 1, n)
    ranks = np.argsort(rng.random((n, K)), axis=1).argsort(axis=1)  # a uniform random permutation per row
    support = ranks < counts[:, None]
    return support, counts.astype(np.int64)


#: the distributions of the non-zero values of ``linear_gaussian`` (each of variance near 1 or above):
#: ``bounded``, signed magnitudes in [0.5, 1.5] (bounded away from 0); ``gaussian``, ``N(0, 1)``;
#: ``laplace``, ``Laplace(0, 1 / sqrt(2))`` (variance 1). The last two have mass near zero.
VALUE_DISTRIBUTIONS = ("bounded", "gaussian", "laplace")


def draw_values(rng: np.random.Generator, shape: tuple[int, int], values: str) -> np.ndarray:
    """Values of the distribution ``values`` (a name in :data:`VALUE_DISTRIBUTIONS`)."""
    if values == "bounded":
        magnitude = rng.uniform(VALUE_LOW, VALUE_HIGH, shape)
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0) * magnitude
    if values == "gaussian":
        return rng.normal(size=shape)
    if values == "laplace":
        return rng.laplace(scale=1 / np.sqrt(2), size=shape)
    raise ValueError(f"unknown values {values!r}; known: {', '.join(VALUE_DISTRIBUTIONS)}")


def linear_gaussian(n: int, *, K: int, D: int, L0: int, noise: float, seed: int, W: np.ndarray | None = None,
                    values: str = "bounded"):
    """``x = z W + noise * eps`` with values of the distribution ``values`` on a support of ``L_i`` dims.

    ``W (K, D)`` has ``N(0, 1)`` entries drawn first from ``seed`` unless given.
    Returns ``(X, S, L, params)``; ``params`` holds ``W``, ``Z`` (the true codes) and ``noise``.
    """
    rng = np.random.default_rng(seed)
    if W is None:
        W = rng.normal(size=(K, D))
    support, counts = draw_supports(rng, n, K, L0)
    Z = np.where(support, draw_values(rng, (n, K), values), 0.0)
    X = Z @ W + noise * rng.normal(size=(n, D))
    return X.astype(np.float32), support, counts, {"W": W, "Z": Z, "noise": noise}


def random_mlp(n: int, *, K: int, D: int, L0: int, noise: float, seed: int, hidden: int = 100,
               values: str = "gaussian"):
    """``x = tanh(z A) B + noise * eps``: codes as in :func:`linear_gaussian` through a random network.

    ``A (K, hidden)`` has ``N(0, 1)`` entries and ``B (hidden, D)`` ``N(0, 1 / hidden)``, drawn first
    from ``seed``. Returns ``(X, S, L, params)``; ``params`` holds ``A``, ``B``, ``Z`` and ``noise``
    (no ``W``: the generator has no dictionary).
    """
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, hidden))
    B = rng.normal(scale=1 / np.sqrt(hidden), size=(hidden, D))
    support, counts = draw_supports(rng, n, K, L0)
    Z = np.where(support, draw_values(rng, (n, K), values), 0.0)
    X = np.tanh(Z @ A) @ B + noise * rng.normal(size=(n, D))
    return X.astype(np.float32), support, counts, {"A": A, "B": B, "Z": Z, "noise": noise}


def bernoulli(n: int, *, K: int, D: int, L0: int, seed: int, weight_sd: float = 2.0, bias: float = -2.0,
              W: np.ndarray | None = None):
    """Binary codes ``z = s`` on a support of ``L_i`` dims, ``x ~ Bernoulli(sigmoid(z W + b))``.

    ``W (K, D)`` has ``N(0, weight_sd^2)`` entries drawn first from ``seed`` unless given;
    ``b = bias`` for every feature. Returns ``(X, S, L, params)``; ``params`` holds ``W``,
    ``b``, ``Z`` and ``logits`` (the true ones, for the oracle's reconstruction).
    """
    rng = np.random.default_rng(seed)
    if W is None:
        W = weight_sd * rng.normal(size=(K, D))
    support, counts = draw_supports(rng, n, K, L0)
    Z = support.astype(np.float64)
    b = np.full(D, bias)
    logits = Z @ W + b
    X = (rng.random((n, D)) < expit(logits)).astype(np.float32)
    return X, support, counts, {"W": W, "b": b, "Z": Z, "logits": logits}


GENERATORS = {"linear_gaussian": linear_gaussian, "random_mlp": random_mlp, "bernoulli": bernoulli}
GENERATOR_KEYS = {"linear_gaussian": ("K", "D", "L0", "noise", "values"),
                  "random_mlp": ("K", "D", "L0", "noise", "hidden", "values"),
                  "bernoulli": ("K", "D", "L0", "weight_sd", "bias")}


def make_splits(setting: dict, data_seed: int) -> dict:
    """Train, validation and test rows of one setting, all from one generator and one dictionary.

    ``setting``: ``kind`` (a key of :data:`GENERATORS`), its sizes, and ``n_train``,
    ``n_val``, ``n_test``. The rows are drawn in one call (so the three splits share ``W``
    and come from the same stream) and cut in that order. Returns a dict with
    ``train``/``val``/``test``, each ``(X, S, L, params)`` where ``params`` holds the rows'
    own ``Z`` (and ``logits``), plus ``W`` (and ``b``) of the generator.
    """
    kind = setting["kind"]
    sizes = {key: setting[key] for key in GENERATOR_KEYS[kind] if key in setting}  # a missing key: its default
    n = [setting["n_train"], setting["n_val"], setting["n_test"]]
    X, S, L, params = GENERATORS[kind](sum(n), seed=data_seed, **sizes)
    bounds = np.cumsum([0] + n)
    out = {}
    for name, start, stop in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
        rows = {key: value[start:stop] for key, value in params.items() if key in ("Z", "logits")}
        shared = {key: value for key, value in params.items() if key not in ("Z", "logits")}
        out[name] = (X[start:stop], S[start:stop], L[start:stop], {**shared, **rows})
    return out


# ----------------------------------------------------------------------------- metrics


def explained_variance(x: np.ndarray, x_hat: np.ndarray, train_mean: np.ndarray) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - train_mean||^2`` over the rows (float64 sums)."""
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    residual = ((x - x_hat) ** 2).sum()
    total = ((x - np.asarray(train_mean, np.float64)) ** 2).sum()
    return float(1.0 - residual / total)


def bernoulli_nats(x: np.ndarray, probs: np.ndarray, clip: float = 1e-6) -> float:
    """Mean over rows of ``-log p(x | probs)`` summed over features; ``probs`` clipped to ``[clip, 1 - clip]``."""
    x = np.asarray(x, np.float64)
    p = np.clip(np.asarray(probs, np.float64), clip, 1.0 - clip)
    return float(-(x * np.log(p) + (1.0 - x) * np.log1p(-p)).sum(1).mean())


def spearman(a, b) -> float:
    """Spearman's rank correlation of ``a`` and ``b``; NaN when either is missing or constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def atom_cosine(learned: np.ndarray, true: np.ndarray) -> float:
    """Dictionary recovery: the mean ``|cos|`` between the true atoms ``true (K, D)`` and the learned
    ones ``learned (K', D)`` they are matched to one-to-one (Hungarian algorithm on ``|cos|``);
    with ``K' < K``, over the ``K'`` matched true atoms. A learned atom of norm 0 has cosine 0."""
    def unit(a):
        a = np.asarray(a, np.float64)
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)

    cos = np.abs(unit(learned) @ unit(true).T)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


def match_dimensions(active_train: np.ndarray, support_train: np.ndarray) -> np.ndarray:
    """For each learned dimension ``j``, the true dimension it is matched to (or -1).

    The Hungarian algorithm maximizes the total co-occurrence ``C[j, k]`` = the number of
    training rows where learned ``j`` is active and true ``k`` is in the support. With more
    learned than true dimensions, the unmatched learned ones map to -1.
    """
    C = np.asarray(active_train, np.float64).T @ np.asarray(support_train, np.float64)
    rows, cols = linear_sum_assignment(C, maximize=True)
    mapping = np.full(C.shape[0], -1, np.int64)
    mapping[rows] = cols
    return mapping


def support_f1(active_test: np.ndarray, support_test: np.ndarray, mapping: np.ndarray) -> float:
    """Micro-F1 of the learned supports, mapped to true dimensions by ``mapping``, against the true supports.

    A learned active dimension is a true positive when the dimension it maps to is in the
    row's true support; an unmatched (-1) one is always a false positive.
    """
    active = np.asarray(active_test, bool)
    support = np.asarray(support_test, bool)
    rows, dims = np.nonzero(active)
    mapped = mapping[dims]
    hit = mapped >= 0
    tp = int(support[rows[hit], mapped[hit]].sum())
    denominator = int(active.sum()) + int(support.sum())
    return float(2.0 * tp / denominator) if denominator else float("nan")


def code_recovery(codes_train: np.ndarray, support_train: np.ndarray, codes_test: np.ndarray,
                  support_test: np.ndarray, counts_test: np.ndarray) -> dict:
    """``support_f1`` (dimensions matched on the train codes), ``nnz_count_accuracy``, ``mean_nnz`` and
    ``max_nnz`` of the test codes."""
    active_test = np.asarray(codes_test) != 0
    mapping = match_dimensions(np.asarray(codes_train) != 0, support_train)
    nnz = active_test.sum(1)
    return {
        "support_f1": support_f1(active_test, support_test, mapping),
        "nnz_count_accuracy": float((nnz == counts_test).mean()),
        "mean_nnz": float(nnz.mean()),
        "max_nnz": int(nnz.max()),
    }
