"""How many labels a classifier holds: ``max_labels`` and ``include_zero`` left to the data, the
training shortlist size, and the overflow policy for rows with more labels than ``max_labels``."""

from __future__ import annotations

import logging
import numbers
from typing import Literal, get_args

import numpy as np
import scipy.sparse
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from pyro_sdlgm.config import check_candidates
from pyro_sdlgm.exceptions import ConfigError, DataError

logger = logging.getLogger(__name__)

#: what training rows with more labels than max_labels do (see :func:`capped`)
OverflowPolicy = Literal["error", "truncate"]
OVERFLOW_POLICIES = get_args(OverflowPolicy)
#: the set bound's training shortlist with num_candidates="auto": max(this, 2 L0) labels a row, when below K
SET_BOUND_CANDIDATES = 40


def auto_candidates(fit_objective: str, num_labels: int, max_labels: int) -> int | None:
    """``num_candidates="auto"``: with the set bound, ``max(SET_BOUND_CANDIDATES, 2 L0)`` labels a
    row when that is below ``K`` (else None, all labels); with the ELBO, None (the full mode).

    Chosen by measurement (``experiments/NOTES.md``): on Bibtex the set bound over shortlists of
    40 (true labels, hard negatives, random negatives) had a higher validation P@1 than over
    all 159 labels in 9 of 12 paired runs."""
    if fit_objective != "set_bound":
        return None
    size = max(SET_BOUND_CANDIDATES, 2 * max_labels)
    return size if size < num_labels else None


def resolve_counts(params: dict, requested: dict, *label_matrices: scipy.sparse.csr_matrix) -> None:
    """Set in ``params`` what was left to the data at construction (None in ``requested``), from
    the training and validation labels: ``max_labels``, the most labels of a row; ``include_zero``,
    whether a row has none; ``num_candidates`` (``"auto"``: :func:`auto_candidates`)."""
    counts = np.concatenate([np.diff(m.indptr) for m in label_matrices])
    if requested["max_labels"] is None:
        params["max_labels"] = int(min(max(counts.max(), 1), params["num_labels"]))
        logger.info("max_labels=%d: the most labels of a training row", params["max_labels"])
    else:
        params["max_labels"] = requested["max_labels"]
    if requested["include_zero"] is None:
        params["include_zero"] = bool((counts == 0).any())
        if params["include_zero"]:
            logger.info("include_zero=True: %d rows have no label", int((counts == 0).sum()))
    else:
        params["include_zero"] = requested["include_zero"]
    candidates = requested["num_candidates"]
    if candidates == "auto":
        candidates = auto_candidates(params["fit_objective"], params["num_labels"],
                                     params["max_labels"])
    params["num_candidates"] = candidates
    if candidates is not None:
        check_candidates(candidates, params["num_labels"], params["max_labels"],
                               params["per_slot"])

def capped(matrix: scipy.sparse.csr_matrix, params: dict, name: str = "Y") -> scipy.sparse.csr_matrix:
    """``matrix`` with the overflow policy ``params["on_overflow"]`` applied to its rows of more
    than ``params["max_labels"]`` labels.

    Raises:
        DataError: with the set bound, rows without a label while ``include_zero`` is False
            (the bound gives them probability 0).
    """
    counts = np.diff(matrix.indptr)
    if params["fit_objective"] == "set_bound" and not params["include_zero"] and (counts == 0).any():
        raise DataError(f"{int((counts == 0).sum())} rows of {name} have no label (the first is row "
                        f"{int(np.flatnonzero(counts == 0)[0])}) but include_zero=False: the set bound needs the "
                        "count 0 for them; pass include_zero=True or None (decided from the data)")
    cap = params["max_labels"]
    over = counts > cap
    if over.any():
        if params["on_overflow"] == "error":
            raise DataError(
                f"{int(over.sum())} training rows have more than max_labels={cap} labels (at most "
                f"{int(counts.max())}); raise max_labels or pass on_overflow='truncate'"
            )
        matrix = truncate(matrix, cap)
        logger.warning("truncated %d training rows with more than %d labels (max %d) to their %d most "
                       "frequent labels", int(over.sum()), cap, int(counts.max()), cap)
    return matrix

def truncate(Y: scipy.sparse.csr_matrix, cap: int) -> scipy.sparse.csr_matrix:
    """``Y`` with each row of more than ``cap`` labels cut to its ``cap`` most frequent labels
    (frequency over ``Y``; ties: lower index)."""
    frequency = np.asarray(Y.sum(0)).ravel()
    rows = Y.tolil(copy=True)
    for i, labels in enumerate(rows.rows):
        if len(labels) > cap:
            keep = sorted(labels, key=lambda label: (-frequency[label], label))[:cap]
            rows.rows[i] = sorted(keep)
            rows.data[i] = [1.0] * cap
    return rows.tocsr()


def class_labels(Y, name: str = "Y") -> np.ndarray | None:
    """The classes of single-label targets ``Y``: 1-D class labels (or one column of them), which
    :class:`~pyro_sdlgm.SDLGMClassifier` fits as label sets of one label (``L_i = 1``); None for a
    label matrix (dense ``(N, K)`` with ``K >= 2`` or sparse), which is multi-label.

    Raises:
        DataError: 1-D targets that are not class labels (continuous values, for example; the
            message is scikit-learn's ``Unknown label type``).
    """
    if scipy.sparse.issparse(Y):
        return None
    array = np.asarray(Y)
    if array.ndim == 2 and array.shape[1] >= 2 or array.ndim not in (1, 2) or array.size == 0:
        return None
    if np.issubdtype(array.dtype, np.number) and not np.isfinite(array).all():
        raise DataError(f"Input {name} contains NaN or infinity (first at position "
                        f"{int(np.flatnonzero(~np.isfinite(array.ravel()))[0])})")
    try:
        check_classification_targets(array.ravel())
    except ValueError as err:
        raise DataError(f"{name}: {err}") from None
    if type_of_target(array.ravel()) not in ("binary", "multiclass"):
        return None
    return np.unique(array.ravel())


def one_hot(Y, classes: np.ndarray, name: str = "Y") -> scipy.sparse.csr_matrix:
    """Class labels ``Y (N,)`` as ``(N, len(classes))`` 0/1 CSR rows of one label each.

    Raises:
        DataError: a label that is not one of ``classes`` (named).
    """
    labels = np.asarray(Y).ravel()
    index = np.searchsorted(classes, labels)
    bad = (index >= len(classes)) | (classes[np.minimum(index, len(classes) - 1)] != labels)
    if bad.any():
        raise DataError(f"{name} holds the class {labels[bad][0]!r}, which the classifier was not fitted on "
                        f"(its classes: {classes.tolist()})")
    rows = np.arange(len(labels))
    return scipy.sparse.csr_matrix((np.ones(len(labels), dtype=np.float32), (rows, index)),
                                   shape=(len(labels), len(classes)))
