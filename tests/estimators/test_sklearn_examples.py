"""The examples of docs/sklearn.md, with fewer epochs: clone, Pipeline, GridSearchCV, cross_val_score."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline

from pyro_sdlgm import SDLGM, SDLGMClassifier
from pyro_sdlgm.analysis.metrics import precision_at_k, precision_at_k_scorer

QUICK = dict(epochs=4, progress=False, seed=0, num_threads=1)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split((X / 16.0).astype(np.float32), y, random_state=0)


def test_clone_keeps_every_parameter_and_no_fitted_state(digits):
    X_train = digits[0]
    m = SDLGM(latent_dim=16, max_sparsity=4, learning_rate=3e-3, **QUICK).fit(X_train)
    copy = clone(m)
    assert copy.get_params() == m.get_params() and not copy.is_fitted and not hasattr(copy, "history_")
    assert len(m.history_) == 4 and m.n_features_in_ == 64


def test_a_pipeline_probe_on_the_codes(digits):
    X_train, X_test, y_train, y_test = digits
    probe = make_pipeline(SDLGM(latent_dim=32, max_sparsity=8, **{**QUICK, "epochs": 20}),
                          LogisticRegression(max_iter=2000))
    accuracy = probe.fit(X_train, y_train).score(X_test, y_test)
    assert accuracy > 0.5  # ten classes: chance is 0.1
    codes = probe[0].transform(X_test)
    assert codes.shape == (len(X_test), 32) and np.diff(codes.indptr).max() <= 8


def test_grid_search_over_max_sparsity_by_the_elbo(digits):
    X_train = digits[0]
    search = GridSearchCV(SDLGM(latent_dim=16, **QUICK), {"max_sparsity": [2, 6]}, cv=2).fit(X_train)
    assert search.best_params_["max_sparsity"] in (2, 6)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.max_sparsity == search.best_params_["max_sparsity"]


def test_cross_val_score_of_precision_at_3_on_yeast():
    pytest.importorskip("river", reason="Yeast ships in the river package (the [data] extra)")
    from pyro_sdlgm.data.multilabel import load_yeast

    data = load_yeast()
    X = data.X.toarray()
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    Y = data.Y.toarray()  # scikit-learn's model selection splits dense targets
    scores = cross_val_score(SDLGMClassifier(hidden=(64,), **QUICK), X, Y, scoring=precision_at_k_scorer(3),
                             cv=KFold(3, shuffle=True, random_state=0))
    frequency = np.asarray(data.Y.sum(0)).ravel()
    constant = precision_at_k(data.Y, np.tile(frequency, (data.Y.shape[0], 1)), 3)  # the same ranking for every row
    assert scores.shape == (3,) and (scores > constant).all(), (scores, constant)


def test_pyro_svi_trains_the_estimators_model_and_guide():
    """Pyro's own clients take the fitted attributes: pyro.infer.SVI on ``model_`` and ``guide_``."""
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO

    pyro.clear_param_store()
    torch.manual_seed(0)
    m = SDLGM(10, latent_dim=8, max_sparsity=3, decoder_hidden=(16,), objective="relaxed")
    x = (torch.rand(64, 10) > 0.5).float()
    svi = SVI(m.model_, m.guide_, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, tau_sparsity=0.5, tau_support=0.5) for _ in range(40)]
    assert sum(losses[-10:]) < sum(losses[:10])
    pyro.clear_param_store()
