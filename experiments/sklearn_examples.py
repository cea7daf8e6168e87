"""The scikit-learn examples of docs/sklearn.md at their documented settings, with a baseline each.

    python -m experiments.sklearn_examples      # writes experiments/results/sklearn_examples.json

The probe is compared with the same LogisticRegression on the raw pixels, the GridSearchCV
reports every candidate's mean validation ELBO, and the classifier's P@3 is compared with a
constant ranking by training-fold label frequency on the same folds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline

from pyro_sdlgm import SDLGM, SDLGMClassifier
from pyro_sdlgm.analysis.metrics import precision_at_k, precision_at_k_scorer
from pyro_sdlgm.data.multilabel import load_yeast

OUT = Path(__file__).parent / "results" / "sklearn_examples.json"


def probe_and_search() -> dict:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    start = time.perf_counter()
    probe = make_pipeline(SDLGM(latent_dim=64, max_sparsity=8, progress=False, seed=0, num_threads=1),
                          LogisticRegression(max_iter=2000))
    probe.fit(X_train, y_train)
    codes = probe[0].transform(X_test)
    result = {"probe_accuracy": probe.score(X_test, y_test), "probe_seconds": time.perf_counter() - start,
              "probe_mean_nonzeros": float(np.diff(codes.indptr).mean()),
              "raw_pixels_accuracy": LogisticRegression(max_iter=2000).fit(X_train, y_train).score(X_test, y_test)}
    start = time.perf_counter()
    search = GridSearchCV(SDLGM(latent_dim=64, progress=False, seed=0, num_threads=1),
                          {"max_sparsity": [4, 8, 16]}, cv=3)
    search.fit(X_train)
    result.update(search_best_params=search.best_params_, search_best_score=search.best_score_,
                  search_mean_scores=dict(zip(map(str, search.cv_results_["param_max_sparsity"]),
                                              search.cv_results_["mean_test_score"].tolist())),
                  search_seconds=time.perf_counter() - start)
    return result


def yeast_cross_validation() -> dict:
    data = load_yeast()
    X = data.X.toarray()
    X = (X - X.mean(0)) / X.std(0)
    Y = data.Y.toarray()
    folds = KFold(3, shuffle=True, random_state=0)
    start = time.perf_counter()
    scores = cross_val_score(SDLGMClassifier(progress=False, seed=0, num_threads=1), X, Y,
                             scoring=precision_at_k_scorer(3), cv=folds)
    constant = [precision_at_k(Y[test], np.tile(Y[train].mean(0), (len(test), 1)), 3)
                for train, test in folds.split(X)]
    return {"p_at_3_folds": scores.tolist(), "p_at_3_mean": scores.mean(), "p_at_3_std": scores.std(),
            "constant_p_at_3_folds": constant, "cv_seconds": time.perf_counter() - start}


def main() -> None:
    torch.set_num_threads(1)
    result = {**probe_and_search(), **yeast_cross_validation()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
