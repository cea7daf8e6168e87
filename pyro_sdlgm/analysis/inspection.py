"""Summaries of posteriors over sparsity: per observation, per group, and count calibration.

The functions take the ArviZ object of :mod:`pyro_sdlgm.analysis.posterior` (``SDLGM.posterior``
or ``SDLGMClassifier.posterior``) and return pandas tables. Quantities of ``L_i`` come
from the exact probabilities ``q(L_i = l | x_i)`` (group ``marginals``), not from the
draws; ``mean_nnz`` and the inclusion probabilities come from the draws. Two work on
arrays and models instead: :func:`calibration_of` (count probabilities against true counts)
and :func:`count_self_check` (a fitted SDLGM on data it generates itself).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pyro_sdlgm._optional import optional_import
from pyro_sdlgm.exceptions import DataError
from pyro_sdlgm.analysis.posterior import MARGINALS_GROUP, group

pd = optional_import("pandas", "the sparsity summary tables")


def _marginals(idata) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray]:
    """``(probs (N, levels), levels (levels,), inclusion, obs (N,))`` of ``idata``.

    ``inclusion`` is the ``(N, K)`` array, or ``(top_dims, top_inclusion)`` ``(N, R)`` each when the
    posterior was drawn with ``inclusion="ranked"``.
    """
    try:
        marginals = group(idata, MARGINALS_GROUP)
    except KeyError:
        raise DataError(f"this object has no {MARGINALS_GROUP!r} group: pass the result of .posterior()") from None
    probs = marginals["sparsity_probs"]
    if "top_dims" in marginals:
        inclusion = (marginals["top_dims"].values, marginals["top_inclusion"].values)
    else:
        inclusion = marginals["inclusion_probs"].values
    return probs.values, probs["level"].values, inclusion, probs["obs"].values


def _latent_dim(idata) -> int:
    return int(group(idata, MARGINALS_GROUP).attrs["latent_dim"])


def level_quantile(probs: np.ndarray, levels: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-quantile of each row's discrete distribution: the smallest level with CDF >= q."""
    cdf = np.cumsum(probs, axis=-1)
    index = (cdf < q - 1e-12).sum(-1)
    return levels[np.minimum(index, len(levels) - 1)]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of ``probs (N, levels)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, -probs * np.log(probs), 0.0)
    return terms.sum(-1)


def sparsity_summary(idata, *, top: int = 5, interval: float = 0.9) -> pd.DataFrame:
    """One row per observation: what ``q(L_i | x_i)`` says and which dimensions are on.

    Columns: ``obs``; ``mode``, ``mean``, ``sd`` of ``L_i``; ``lower``/``upper``, the
    equal-tailed ``interval`` (90%) of ``L_i``; ``p_mode``, the probability of the mode;
    ``entropy`` (nats; ``log(levels)`` is uniform); ``mean_nnz``, the mean non-zeros of the
    drawn hard codes; ``top1_dim``, ``top1_prob``, ... the ``top`` dimensions with the
    highest inclusion probability (ties broken by the lower index). From a ranked posterior
    (``inclusion="ranked"``), ranks past the dimensions any draw of the row took are given as
    dimension -1 with probability 0 (a dense posterior names dimensions of probability 0 there).
    """
    if not 0 < interval < 1:
        raise DataError(f"interval must lie in (0, 1), got {interval!r}")
    probs, levels, inclusion, obs = _marginals(idata)
    mean = probs @ levels
    table: dict[str, Any] = {
        "obs": obs,
        "mode": levels[probs.argmax(-1)],
        "mean": mean,
        "sd": np.sqrt(np.maximum(probs @ levels**2 - mean**2, 0.0)),
        "lower": level_quantile(probs, levels, (1 - interval) / 2),
        "upper": level_quantile(probs, levels, (1 + interval) / 2),
        "p_mode": probs.max(-1),
        "entropy": entropy(probs),
        "mean_nnz": group(idata, "posterior")["nnz"].values.mean(axis=(0, 1)),
    }
    if isinstance(inclusion, tuple):  # ranked already; beyond a row's used dimensions come -1 and 0
        dims, ranked = inclusion
        top = min(top, _latent_dim(idata))
        for j in range(top):
            table[f"top{j + 1}_dim"] = dims[:, j] if j < dims.shape[1] else np.full(len(obs), -1)
            table[f"top{j + 1}_prob"] = ranked[:, j] if j < dims.shape[1] else np.zeros(len(obs))
        return pd.DataFrame(table)
    top = min(top, inclusion.shape[1])
    order = np.argsort(-inclusion, axis=-1, kind="stable")[:, :top]
    for j in range(top):
        table[f"top{j + 1}_dim"] = order[:, j]
        table[f"top{j + 1}_prob"] = np.take_along_axis(inclusion, order[:, j : j + 1], -1)[:, 0]
    return pd.DataFrame(table)


def check_groups(groups: Any, num_obs: int, source: str = "groups") -> np.ndarray:
    """``groups`` as a 1-d array of length ``num_obs``; :class:`DataError` naming ``source`` otherwise."""
    array = np.asarray(groups)
    if array.ndim != 1 or array.shape[0] != num_obs:
        raise DataError(f"{source} has shape {array.shape}; expected one label per observation, ({num_obs},)")
    return array


def group_summary(idata, groups: Any) -> pd.DataFrame:
    """Sparsity per group of observations (e.g. digit class), one row per group.

    Columns: ``group``, ``count``; ``mean_L``, the mean over the group's observations of
    ``E[L_i]``; ``sd_between``, the standard deviation of ``E[L_i]`` across them;
    ``sd_L``, the standard deviation of ``L`` under the group's mixture of posteriors
    (within plus between observations); ``mean_mode``; ``mean_entropy`` (nats);
    ``mean_nnz`` (from the draws).
    """
    probs, levels, _, obs = _marginals(idata)
    labels = check_groups(groups, len(obs))
    nnz = group(idata, "posterior")["nnz"].values.mean(axis=(0, 1))
    mean = probs @ levels
    second = probs @ levels**2
    rows = []
    for label in np.unique(labels):
        members = labels == label
        mixture_mean = mean[members].mean()
        rows.append({
            "group": label,
            "count": int(members.sum()),
            "mean_L": mixture_mean,
            "sd_between": mean[members].std(),
            "sd_L": np.sqrt(max(second[members].mean() - mixture_mean**2, 0.0)),
            "mean_mode": levels[probs[members].argmax(-1)].mean(),
            "mean_entropy": entropy(probs[members]).mean(),
            "mean_nnz": nnz[members].mean(),
        })
    return pd.DataFrame(rows)


def count_calibration(idata, true_counts: Any = None, *, num_bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """How well ``q(L_i | x_i)`` predicts true counts (multi-label: the number of labels):
    :func:`calibration_of` the posterior's probabilities.

    Args:
        true_counts: ``(N,)`` whole numbers; default ``observed_data.label_count`` of ``idata``.
    """
    probs, levels, _, obs = _marginals(idata)
    if true_counts is None:
        try:
            true_counts = group(idata, "observed_data")["label_count"].values
        except KeyError:
            raise DataError("no true counts: pass true_counts or a posterior computed with Y") from None
    return calibration_of(probs, levels, check_groups(true_counts, len(obs), "true_counts"), num_bins=num_bins)


def calibration_of(probs: np.ndarray, levels: np.ndarray, truth: np.ndarray, *,
                   num_bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """Calibration of count probabilities ``probs (N, levels)`` (columns: ``levels``) against ``truth (N,)``.

    The expected calibration error is the top-label ECE of Guo et al. (2017): rows are
    binned by the probability of their predicted count (``num_bins`` equal-width bins on
    [0, 1]); ECE is the row-weighted mean of ``|accuracy - confidence|`` over the bins.
    Written here because scikit-learn's ``calibration_curve`` is binary-only and returns
    no bin sizes, which the weighting needs. A true count outside the model's levels (over
    ``L0``, or 0 without ``include_zero``) counts as a miss and gets probability 0.

    Returns:
        ``(metrics, bins)``: metrics ``ece``, ``accuracy`` (mode = truth), ``mean_confidence``,
        ``nll`` (mean ``-log q(true count)`` over rows whose count is a level),
        ``out_of_range`` (rows whose count is not a level) and ``num_examples``; ``bins`` has
        ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy`` per non-empty bin.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise DataError(f"num_bins must be a positive integer, got {num_bins!r}")
    truth = np.asarray(truth)
    if truth.dtype.kind not in "iu":
        numeric = truth.astype(np.float64) if truth.dtype.kind in "fb" else None
        if numeric is None or not np.all(np.isfinite(numeric)) or not np.all(numeric == np.round(numeric)):
            bad = truth[0] if numeric is None else truth[~(np.isfinite(numeric) & (numeric == np.round(numeric)))][0]
            raise DataError(f"true_counts must be whole numbers, found {bad}")
    truth = truth.astype(np.int64)
    predicted = levels[probs.argmax(-1)]
    confidence = probs.max(-1)
    correct = predicted == truth
    in_range = (truth >= levels[0]) & (truth <= levels[-1])
    p_true = np.where(in_range, probs[np.arange(len(truth)), np.clip(truth - levels[0], 0, len(levels) - 1)], 0.0)
    p_true = p_true.astype(np.float64)  # float32 would round the floor of the log below to 0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, num_bins - 1)
    rows, ece = [], 0.0
    for b in range(num_bins):
        members = which == b
        if not members.any():
            continue
        acc, conf = correct[members].mean(), confidence[members].mean()
        ece += members.mean() * abs(acc - conf)
        rows.append({"lower": edges[b], "upper": edges[b + 1], "count": int(members.sum()),
                     "confidence": conf, "accuracy": acc})
    metrics = {
        "ece": float(ece),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(confidence.mean()),
        "nll": float(-np.log(np.maximum(p_true[in_range], 1e-300)).mean()) if in_range.any() else float("nan"),
        "out_of_range": int((~in_range).sum()),
        "num_examples": int(len(truth)),
    }
    return metrics, pd.DataFrame(rows, columns=["lower", "upper", "count", "confidence", "accuracy"])


def count_self_check(model, X=None, *, num_rows: int = 1000, seed: int = 0,
                     num_bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """Does a fitted SDLGM's ``q(L|x)`` find the counts of data it generates itself?

    Draws rows whose counts are known from the fitted generative model, infers their counts with
    the model's count estimate, and scores them against the known ones; no ground truth of the
    user's data is needed. The rows:

    - with ``X (N, D)``: the hard codes of ``X`` (:meth:`SDLGM.encode`), each decoded and drawn
      once, ``x' ~ p(x | decoder(z_i))`` (:meth:`SDLGM.sample_observations`); the known count is
      the code's number of non-zeros. Codes like the data's: a parametric bootstrap.
    - without: ``num_rows`` draws of the whole generative process (:meth:`SDLGM.sample`), counts
      from the prior ``p(L)`` and supports from the support prior, which can lie far from the
      codes the guide was trained on.

    Seeded by ``seed``. A count posterior that fails on the model's own data cannot be trusted on
    real data; one that passes is consistent with the model, which is necessary, not sufficient
    (a model whose noise scale hides small values passes on its own noisy draws).

    Returns:
        ``(metrics, bins)``: those of :func:`calibration_of`, plus ``spearman`` (Spearman's
        correlation of ``E[L|x]`` with the drawn count; NaN when either is constant),
        ``mean_count`` (of the draws), ``mean_expected_count`` (of ``E[L|x]``) and
        ``mean_abs_error`` (of the mode).
    """
    from scipy.stats import spearmanr

    if X is None:
        X, _, counts = model.sample(num_rows, seed=seed)
    else:
        codes = model.encode(X, sparse=True)
        counts = np.diff(codes.indptr).astype(np.int64)
        X = model.sample_observations(codes, seed=seed)
    probs, levels = model.sparsity_posterior(X), model.sparsity_levels
    metrics, bins = calibration_of(probs, levels, counts, num_bins=num_bins)
    expected = probs @ levels
    constant = np.ptp(expected) == 0 or np.ptp(counts) == 0
    metrics.update(spearman=float("nan") if constant else float(spearmanr(expected, counts).statistic),
                   mean_count=float(counts.mean()), mean_expected_count=float(expected.mean()),
                   mean_abs_error=float(np.abs(levels[probs.argmax(-1)] - counts).mean()))
    return metrics, bins


DEAD_INCLUSION = 1e-3  # a dimension whose mean inclusion probability is below this is dead
ALWAYS_ON_FRACTION = 0.99  # ... and one with inclusion >= 0.5 in this fraction of observations is always on


def dead(usage: pd.DataFrame) -> pd.Series:
    """Which dimensions of a :func:`dimension_usage` table are dead (mean inclusion < 0.001)."""
    return usage["mean_inclusion"] < DEAD_INCLUSION


def always_on(usage: pd.DataFrame) -> pd.Series:
    """Which dimensions are in the support (inclusion >= 0.5) of at least 99% of observations."""
    return usage["used_by"] >= ALWAYS_ON_FRACTION


def dimension_usage(idata) -> pd.DataFrame:
    """Per dimension: ``mean_inclusion`` (average inclusion probability over observations)
    and ``used_by`` (fraction of observations whose inclusion probability is at least 0.5)."""
    _, _, inclusion, obs = _marginals(idata)
    if isinstance(inclusion, tuple):  # ranked: sum each row's listed dimensions (the others are 0)
        dims, ranked = inclusion
        size, listed = _latent_dim(idata), dims >= 0
        total = np.bincount(dims[listed], weights=ranked[listed], minlength=size)
        majority = np.bincount(dims[listed & (ranked >= 0.5)], minlength=size)
        return pd.DataFrame({"dim": np.arange(size), "mean_inclusion": total / len(obs),
                             "used_by": majority / len(obs)})
    return pd.DataFrame({"dim": np.arange(inclusion.shape[1]), "mean_inclusion": inclusion.mean(0),
                         "used_by": (inclusion >= 0.5).mean(0)})


def group_difference(idata, groups: Any) -> dict[str, float]:
    """Does sparsity differ across groups? Kruskal-Wallis test (scipy) on ``E[L_i]`` by group.

    Returns ``statistic`` (H), ``p_value``, ``num_groups`` and ``eta_squared``, the share
    of the variance of ``E[L_i]`` explained by the groups (the effect size; with
    hundreds of observations a tiny difference can have a small p-value).
    """
    from scipy.stats import kruskal

    probs, levels, _, obs = _marginals(idata)
    labels = check_groups(groups, len(obs))
    mean = probs @ levels
    members = [mean[labels == label] for label in np.unique(labels)]
    if len(members) < 2:
        raise DataError("a group comparison needs at least 2 groups")
    if np.ptp(mean) == 0:  # every E[L_i] equal: nothing to rank (scipy would divide by zero)
        statistic, p_value = float("nan"), float("nan")
    else:
        statistic, p_value = kruskal(*members)
    between = sum(len(m) * (m.mean() - mean.mean()) ** 2 for m in members)
    total = ((mean - mean.mean()) ** 2).sum()
    return {"statistic": float(statistic), "p_value": float(p_value), "num_groups": len(members),
            "eta_squared": float(between / total) if total > 0 else 0.0}
