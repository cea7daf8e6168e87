"""Multi-label metrics against napkinXC and scikit-learn on random data (empty rows included)."""

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro_sdlgm.exceptions import DataError
from pyro_sdlgm.analysis.metrics import (
    inverse_propensities,
    multilabel_report,
    ndcg_at_k,
    precision_at_k,
    psp_at_k,
    top_k,
)

napkinxc_metrics = pytest.importorskip("napkinxc.metrics", reason="napkinxc is the reference implementation")


@pytest.fixture
def random_labels():
    rng = np.random.default_rng(0)
    Y = (rng.random((60, 12)) < 0.2).astype(np.float32)
    Y[:5] = 0  # rows with no labels
    scores = rng.random((60, 12))
    return Y, scores


def as_lists(Y):
    return [[int(i) for i in np.flatnonzero(row)] for row in np.asarray(Y)]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_ranking_metrics_match_napkinxc(random_labels, k):
    Y, scores = random_labels
    ranked = [[int(i) for i in r] for r in top_k(scores, 12)]
    assert precision_at_k(Y, scores, k) == pytest.approx(napkinxc_metrics.precision_at_k(as_lists(Y), ranked, k=k)[-1])
    assert ndcg_at_k(Y, scores, k) == pytest.approx(napkinxc_metrics.ndcg_at_k(as_lists(Y), ranked, k=k)[-1])
    inv = inverse_propensities(Y)
    assert np.allclose(inv, napkinxc_metrics.Jain_et_al_inverse_propensity(as_lists(Y), A=0.55, B=1.5))
    assert psp_at_k(Y, scores, k, inv) == pytest.approx(
        napkinxc_metrics.psprecision_at_k(as_lists(Y), ranked, inv, k=k)[-1])


def test_top_k_orders_best_first():
    assert top_k(np.array([[0.1, 0.9, 0.5, 0.7]]), 3).tolist() == [[1, 3, 2]]


def test_report_set_metrics_match_sklearn_definitions(random_labels):
    from sklearn.metrics import f1_score, hamming_loss

    Y, scores = random_labels
    Y_pred = (scores > 0.7).astype(np.float32)
    report = multilabel_report(scipy.sparse.csr_matrix(Y), Y_pred, scores)
    assert report["example_f1"] == pytest.approx(f1_score(Y, Y_pred, average="samples", zero_division=1))
    empty = multilabel_report(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)))
    assert empty["example_f1"] == 1.0 and empty["subset_accuracy"] == 1.0
    assert report["hamming_loss"] == pytest.approx(hamming_loss(Y, Y_pred))
    assert report["hamming_loss"] == pytest.approx(np.mean(Y != Y_pred))  # divided by N K
    assert report["subset_accuracy"] == pytest.approx(np.mean((Y == Y_pred).all(1)))
    assert report["count_accuracy"] == pytest.approx(np.mean(Y.sum(1) == Y_pred.sum(1)))
    assert report["count_mae"] == pytest.approx(np.mean(np.abs(Y.sum(1) - Y_pred.sum(1))))


def test_perfect_ranking_scores_one_on_nonempty_rows():
    Y = np.eye(4)
    assert precision_at_k(Y, Y, 1) == 1.0 and ndcg_at_k(Y, Y, 3) == 1.0
    assert psp_at_k(Y, Y, 1, inverse_propensities(Y)) == 1.0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(rows=st.integers(1, 12), labels=st.integers(2, 9), seed=st.integers(0, 2**16), ties=st.booleans())
def test_report_from_ranked_labels_equals_report_from_scores(rows, labels, seed, ties):
    """Wide label spaces pass the top-5 indices instead of (N, K) scores: the same report."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((rows, labels)) < 0.3).astype(np.float32)
    scores = rng.integers(0, 3, (rows, labels)).astype(float) if ties else rng.random((rows, labels))
    Y_pred = (scores > scores.mean()).astype(np.float32)
    from_scores = multilabel_report(Y, Y_pred, scores)
    from_ranked = multilabel_report(Y, Y_pred, top_labels=top_k(scores, 5))
    assert from_ranked == pytest.approx(from_scores, nan_ok=True)


def test_report_refuses_bad_rankings(random_labels):
    Y, scores = random_labels
    with pytest.raises(DataError, match="either scores"):
        multilabel_report(Y, Y, scores, top_labels=top_k(scores, 5))
    with pytest.raises(DataError, match="either scores"):
        multilabel_report(Y, Y)
    with pytest.raises(DataError, match=r"\(60, >= 5\).*shape \(60, 3\)"):
        multilabel_report(Y, Y, top_labels=top_k(scores, 3))
    with pytest.raises(DataError, match="dtype float64"):
        multilabel_report(Y, Y, top_labels=top_k(scores, 5).astype(float))
    with pytest.raises(DataError, match=r"\[1, 12\], outside the 12 labels"):
        multilabel_report(Y, Y, top_labels=top_k(scores, 5) + 1)
    repeated = top_k(scores, 5)
    repeated[7, 3] = repeated[7, 0]
    with pytest.raises(DataError, match=r"repeats a label in row 7"):
        multilabel_report(Y, Y, top_labels=repeated)
    with pytest.raises(DataError, match=r"at least 1 row and 2 labels, got labels of shape \(60, 1\)"):
        multilabel_report(Y[:, :1], Y[:, :1], scores[:, :1])
    with pytest.raises(DataError, match=r"scores \(60, 11\)"):
        multilabel_report(Y, Y, scores[:, :11])
