"""Multi-label metrics: ranking (P@k, nDCG@k, PSP@k), set (F1s, Hamming, subset accuracy), and counts.

Ranking metrics are small numpy versions of the Extreme Classification definitions,
written here so that the library needs no compiled extra; the tests check them against
``napkinxc.metrics``. Set metrics come from scikit-learn. Rows with no true labels are
kept: they score 0 in P@k and nDCG@k and add nothing to PSP@k (as in napkinXC); in
example-F1 an empty row predicted empty scores 1 (``zero_division=1``), any other empty
side scores 0.

Shapes: ``Y`` (true labels) and ``Y_pred`` are ``(N, K)`` 0/1 arrays or scipy sparse
matrices; ``scores`` is ``(N, K)``; counts are ``(N,)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from pyro_sdlgm.exceptions import DataError

KS = (1, 3, 5)


def skm():
    """``sklearn.metrics``, imported when a report needs it (``import pyro_sdlgm`` does not load scikit-learn)."""
    from sklearn import metrics

    return metrics


def _csr(Y) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix(Y, dtype=np.float64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first, ``(N, k)`` (ties: lower index first)."""
    scores = np.asarray(scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def _hits(Y, scores, k) -> np.ndarray:
    """``(N, k)`` 0/1 relevance of the top-``k`` predictions."""
    return _ranked_hits(_csr(Y), top_k(scores, k))


def _ranked_hits(Y: scipy.sparse.csr_matrix, ranked: np.ndarray) -> np.ndarray:
    """``(N, k)`` 0/1 relevance of ranked label indices ``(N, k)``, best first."""
    if not Y.shape[0]:
        return np.zeros((0, ranked.shape[1]))
    return np.asarray(Y[np.arange(Y.shape[0])[:, None], ranked].todense())


def precision_at_k(Y, scores, k: int) -> float:
    """Mean over rows of ``|top-k ∩ y| / k``."""
    return _precision(_hits(Y, scores, k), k)


def precision_at_k_scorer(k: int):
    """A scikit-learn scorer ``(estimator, X, Y) -> P@k`` of an estimator's ``predict_scores``
    (e.g. :class:`~pyro_sdlgm.SDLGMClassifier`), for ``cross_val_score(..., scoring=...)`` and
    ``GridSearchCV``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")

    def precision(estimator, X, Y) -> float:
        return precision_at_k(Y, estimator.predict_scores(X), k)

    precision.__name__ = f"precision_at_{k}"
    return precision


def _precision(hits: np.ndarray, k: int) -> float:
    return float(hits[:, :k].sum(1).mean() / k)


def ndcg_at_k(Y, scores, k: int) -> float:
    """Mean over rows of ``DCG@k / IDCG@k`` (binary relevance, ``log2(rank + 1)`` discount); 0 for empty rows."""
    return _ndcg(_csr(Y), _hits(Y, scores, k), k)


def _ndcg(Y: scipy.sparse.csr_matrix, hits: np.ndarray, k: int) -> float:
    hits = hits[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = hits @ discounts
    counts = np.minimum(np.asarray(Y.sum(1)).ravel().astype(int), hits.shape[1])
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[counts]
    return float(np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0).mean())


def inverse_propensities(Y_train, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Jain et al. (2016) inverse propensities ``1 + C (N_l + B)^-A``, ``C = (log N - 1)(B + 1)^A``, ``(K,)``."""
    Y_train = _csr(Y_train)
    n = Y_train.shape[0]
    freq = np.asarray(Y_train.sum(0)).ravel()
    # C < 0 for fewer than 3 rows would make weights negative: fall back to uniform weights
    c = max(np.log(max(n, 1)) - 1.0, 0.0) * (B + 1.0) ** A
    return 1.0 + c * (freq + B) ** (-A)


def psp_at_k(Y, scores, k: int, inv_propensities: np.ndarray) -> float:
    """Propensity-scored P@k, normalized by the best achievable value (napkinXC's default).

    ``sum_rows sum_{top k} y_l / p_l`` divided by the same sum for the ideal ranking (each
    row's true labels ordered by ``1 / p_l``).
    """
    return _psp(_csr(Y), top_k(scores, k), k, inv_propensities)


def _psp(Y: scipy.sparse.csr_matrix, ranked: np.ndarray, k: int, inv_propensities: np.ndarray) -> float:
    ranked = ranked[:, :k]
    gained = (_ranked_hits(Y, ranked) * inv_propensities[ranked]).sum()
    best = 0.0
    for row in range(Y.shape[0]):
        weights = np.sort(inv_propensities[Y.indices[Y.indptr[row]:Y.indptr[row + 1]]])[::-1][:k]
        best += weights.sum()
    return float(gained / best) if best > 0 else 0.0


def count_accuracy(true_counts, predicted_counts) -> float:
    return float(np.mean(np.asarray(true_counts) == np.asarray(predicted_counts)))


def count_mae(true_counts, predicted_counts) -> float:
    return float(np.mean(np.abs(np.asarray(true_counts) - np.asarray(predicted_counts))))


def multilabel_report(Y, Y_pred, scores=None, *, top_labels=None, predicted_counts=None,
                      inv_propensities=None) -> dict[str, float]:
    """All metrics of one prediction.

    Args:
        Y: true labels ``(N, K)``.
        Y_pred: predicted label sets ``(N, K)`` 0/1.
        scores: ``(N, K)`` ranking scores; or, instead of them,
        top_labels: ``(N, k)`` label indices ranked best first, ``k >= min(5, K)`` (what
            :func:`top_k` gives; the ranking metrics need no more, so a wide label space
            needs no dense ``(N, K)`` array).
        predicted_counts: ``(N,)`` predicted numbers of labels (default: row sums of ``Y_pred``).
        inv_propensities: ``(K,)`` for PSP@k (default: from ``Y`` itself; pass the training
            labels' for a fair test-time value).

    Returns:
        ``p@k``, ``ndcg@k``, ``psp@k`` for k in 1, 3, 5; ``example_f1`` (scikit-learn's
        ``average="samples"``; a row with no true and no predicted labels scores 1, a correct
        empty prediction),
        ``micro_f1``, ``macro_f1`` (over labels; a label never true nor predicted scores 0),
        ``hamming_loss`` (divided by ``N K``), ``subset_accuracy``, ``count_accuracy``,
        ``count_mae``, ``mean_predicted_labels``.
    """
    Y, Y_pred = _csr(Y), _csr(Y_pred)
    if (scores is None) == (top_labels is None):
        raise DataError("pass either scores (N, K) or top_labels (N, k), not both or neither")
    if Y.shape != Y_pred.shape:
        raise DataError(f"shapes disagree: true labels {Y.shape}, predictions {Y_pred.shape}")
    if Y.shape[0] < 1 or Y.shape[1] < 2:  # scikit-learn's sample-wise F1 needs a multi-label indicator
        raise DataError(f"a multi-label report needs at least 1 row and 2 labels, got labels of shape {Y.shape}")
    depth = min(max(KS), Y.shape[1])
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape != Y.shape:
            raise DataError(f"shapes disagree: true labels {Y.shape}, scores {scores.shape}")
        ranked = top_k(scores, depth)  # stable: each top-k is a prefix of the top-5
    else:
        ranked = np.asarray(top_labels)
        if (ranked.ndim != 2 or ranked.shape[0] != Y.shape[0] or ranked.shape[1] < depth
                or not np.issubdtype(ranked.dtype, np.integer)):
            raise DataError(f"top_labels must be ({Y.shape[0]}, >= {depth}) integer label indices, got "
                            f"shape {ranked.shape} and dtype {ranked.dtype}")
        if ranked.size and (ranked.min() < 0 or ranked.max() >= Y.shape[1]):
            raise DataError(f"top_labels holds indices in [{ranked.min()}, {ranked.max()}], outside the "
                            f"{Y.shape[1]} labels")
        ranked = ranked[:, :depth]
        ordered = np.sort(ranked, axis=1)
        repeated = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(1))
        if repeated.size:  # a ranking of scores never repeats a label
            row = int(repeated[0])
            raise DataError(f"top_labels repeats a label in row {row}: {ranked[row].tolist()} (the first {depth} "
                            "indices of a row must be distinct)")
    if inv_propensities is None:
        inv_propensities = inverse_propensities(Y)
    true_counts = np.asarray(Y.sum(1)).ravel()
    if predicted_counts is None:
        predicted_counts = np.asarray(Y_pred.sum(1)).ravel()
    hits = _ranked_hits(Y, ranked)
    report = {}
    for k in KS:
        report[f"p@{k}"] = _precision(hits, k)
        report[f"ndcg@{k}"] = _ndcg(Y, hits, k)
        report[f"psp@{k}"] = _psp(Y, ranked, k, inv_propensities)
    Yb, Pb = Y.astype(np.int8), Y_pred.astype(np.int8)
    report.update(
        example_f1=float(skm().f1_score(Yb, Pb, average="samples", zero_division=1)),
        micro_f1=float(skm().f1_score(Yb, Pb, average="micro", zero_division=0)),
        macro_f1=float(skm().f1_score(Yb, Pb, average="macro", zero_division=0)),
        hamming_loss=float(skm().hamming_loss(Yb, Pb)),
        subset_accuracy=float(skm().accuracy_score(Yb, Pb)),
        count_accuracy=count_accuracy(true_counts, predicted_counts),
        count_mae=count_mae(true_counts, predicted_counts),
        mean_predicted_labels=float(np.mean(predicted_counts)),
    )
    return report
