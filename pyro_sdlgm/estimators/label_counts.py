"""How many labels a classifier holds: ``max_labels`` and ``include_zero`` left to the data, the
training shortlist size, and the overflow policy for rows with more labels than ``max_labels``."""

from __future__ import annotations

import logging
import numbers
from typing import get_args

import numpy as np
import scipy.sparse

from pyro_sdlgm.config import OverflowPolicy
from pyro_sdlgm.exceptions import ConfigError, DataError

logger = logging.getLogger(__name__)

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


def check_candidates(num_candidates, num_labels: int, max_labels: int, per_slot: bool) -> int:
    """A shortlist size ``C`` with ``max_labels <= C <= num_labels`` and shared slots; :class:`ConfigError` otherwise."""
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, numbers.Integral):
        raise ConfigError(f"num_candidates must be an integer, 'auto', 'all' or None, got {num_candidates!r}")
    num_candidates = int(num_candidates)
    if not max_labels <= num_candidates <= num_labels:
        raise ConfigError(f"num_candidates={num_candidates} must lie between max_labels={max_labels} and "
                          f"num_labels={num_labels} (every row's true labels must fit in its shortlist)")
    if per_slot:
        raise ConfigError(f"num_candidates={num_candidates} (shortlist mode) needs per_slot=False: per-slot "
                          f"heads cost max_labels x num_labels x the last hidden size parameters "
                          f"({max_labels} x {num_labels} x hidden), which the shortlist cannot reduce")
    return num_candidates


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
