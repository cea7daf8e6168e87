"""scikit-learn's own estimator checks on both estimators, at small sizes and few epochs.

``SDLGM`` runs with the normal likelihood: the checks feed real-valued data, which the Bernoulli
likelihood (for data in [0, 1]) refuses by design. ``SDLGMClassifier`` takes both forms of
targets, ``(N, K)`` label sets and 1-D class labels (label sets of one label, ``L_i = 1``), so
scikit-learn's classifier checks run on it as on any classifier; the one expected failure is
listed below with its reason, and every other check must pass.
"""

from __future__ import annotations

import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from pyro_sdlgm import SDLGM, SDLGMClassifier

FAST = dict(batch_size=32, progress=False, num_threads=1)

#: checks whose premise the classifier's decision rule does not share
CLASSIFIER_EXPECTED_FAILURES = {
    "check_classifier_multioutput": "asserts that predict() is predict_proba() > 0.5 label by label; the "
                                    "classifier's label sets are the F1-optimal sets of its joint model of the "
                                    "count and the labels (decision='f1'), not per-label thresholds",
}


def expected_failed_checks(estimator) -> dict[str, str]:
    return CLASSIFIER_EXPECTED_FAILURES if isinstance(estimator, SDLGMClassifier) else {}


@parametrize_with_checks(
    [SDLGM(latent_dim=6, max_sparsity=2, likelihood="normal", decoder_hidden=(8,),
           guide={"name": "mlp_magnitude_slots", "hidden": [8]}, epochs=2, **FAST),
     # 20 epochs at a higher rate: check_classifiers_train asks for accuracy above 0.83
     SDLGMClassifier(hidden=(8,), epochs=20, learning_rate=1e-2, **FAST)],
    expected_failed_checks=expected_failed_checks,
)
def test_scikit_learn_checks(estimator, check):
    torch.manual_seed(0)
    check(estimator)
