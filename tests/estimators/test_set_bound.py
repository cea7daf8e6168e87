"""The multi-label set bound, the F1-optimal decision and the calibrated count."""

import itertools
import math

import numpy as np
import pyro
import pytest
import scipy.sparse
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_sdlgm import CheckpointError, ConfigError, DataError
from pyro_sdlgm.estimators.classifier import SDLGMClassifier
from pyro_sdlgm.estimators.decisions import distinct_draw_inclusion, f1_optimal_sets
from pyro_sdlgm.model.conditional import ConditionalSDLGMModel, ObservedSupportGuide
from pyro_sdlgm.model.distributions import DistinctDraws
from pyro_sdlgm.model.spec import ModelSpec
from conftest import ELBO_AS_MEASURED, count_data

FAST = dict(epochs=3, batch_size=32, progress=False, seed=0)


# -- DistinctDraws ---------------------------------------------------------------------------


def test_distinct_draws_is_the_probability_that_draws_with_replacement_form_the_set():
    torch.manual_seed(0)
    logits = torch.randn(5)
    p = logits.softmax(-1)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    members = [0, 2, 3]
    # brute force: every sequence of 3 draws over 5 labels whose set of values is exactly {0, 2, 3}
    exact = sum(math.prod(float(p[i]) for i in seq) for seq in itertools.product(range(5), repeat=3)
                if set(seq) == set(members))
    assert float(DistinctDraws(logits).log_prob(y)) == pytest.approx(math.log(exact), rel=1e-5)
    # and a lower bound on the Plackett-Luce (without-replacement) probability of the set
    plackett_luce = 0.0
    for order in itertools.permutations(members):
        taken, prob = 0.0, 1.0
        for i in order:
            prob *= float(p[i]) / (1.0 - taken)
            taken += float(p[i])
        plackett_luce += prob
    assert math.log(exact) < math.log(plackett_luce)


def test_distinct_draws_shapes_and_no_sampler():
    d = DistinctDraws(torch.zeros(3, 6))
    assert d.batch_shape == (3,) and d.event_shape == (6,)
    assert d.expand((2, 3)).batch_shape == (2, 3)
    assert d.log_prob(torch.eye(6)[:3]).shape == (3,)
    with pytest.raises(NotImplementedError, match="observed"):
        d.sample()


def test_distinct_draws_maximizer_orders_labels_as_their_marginals():
    """Maximizing E[log p(y)] over softmax(logits) gives p_k = E[y_k] / E|y| (consistent for precision@k)."""
    rng = np.random.default_rng(0)
    marginals = np.array([0.9, 0.6, 0.3, 0.15, 0.05])
    Y = torch.tensor((rng.random((4000, 5)) < marginals).astype(np.float32))
    Y = Y[Y.sum(1) > 0]
    logits = torch.zeros(5, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(500):
        loss = -DistinctDraws(logits.expand(len(Y), 5)).log_prob(Y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fitted = logits.detach().softmax(-1).numpy()
    target = Y.mean(0).numpy() / Y.sum(1).mean().item()
    assert np.allclose(fitted, target, atol=5e-3), (fitted, target)


# -- the model's set bound --------------------------------------------------------------------


def set_bound_model(num_labels: int, seed: int):
    """A seeded set-bound model (6 features, at most 3 labels) and its empty guide."""
    pyro.set_rng_seed(seed)
    model = ConditionalSDLGMModel(ModelSpec(6, num_labels, 3, binary=True), per_slot=False, hidden=[8],
                                  fit_objective="set_bound")
    return model, ObservedSupportGuide(model)


def closed_form_bound(model, x, y, candidates=None) -> float:
    """``-sum_i [log p(L = |y_i|) + log |y_i|! + sum_{k in y_i} log p_k]``, with the slot logits and
    labels gathered on ``candidates`` when given."""
    params = model.prior_params(x)
    counts = y.sum(-1).long()
    logits = params.slot_logits[:, 0]
    if candidates is not None:
        logits, y = logits.gather(-1, candidates), y.gather(-1, candidates)
    count_term = params.sparsity_logits.log_softmax(-1)[torch.arange(len(x)), counts - 1]
    return float(-(count_term + torch.lgamma(counts + 1.0) + (y * logits.log_softmax(-1)).sum(-1)).sum().detach())


def test_set_bound_loss_is_the_closed_form_and_the_guide_places_no_site():
    model, guide = set_bound_model(5, seed=0)
    x = torch.randn(4, 6)
    y = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 1]], dtype=torch.float32)
    assert not [n for n, s in poutine.trace(guide).get_trace(x, y).nodes.items() if s["type"] == "sample"]
    loss = Trace_ELBO().loss(model, guide, x, y)
    assert loss == pytest.approx(closed_form_bound(model, x, y), rel=1e-5)
    assert model.schedule_free
    with pytest.raises(DataError, match="a row has 4 labels, outside the counts 1..3"):
        model(x, torch.tensor([[1, 1, 1, 1, 0]] * 4, dtype=torch.float32))


def test_set_bound_on_a_shortlist_scores_the_truncated_slot_distribution():
    model, guide = set_bound_model(10, seed=1)
    x = torch.randn(5, 6)
    y = torch.zeros(5, 10)
    y[torch.arange(5), torch.arange(5)] = 1.0
    y[:2, 9] = 1.0
    candidates = model.candidates(x, y, 4)
    assert (y.gather(-1, candidates).sum(-1) == y.sum(-1)).all()  # every true label is a candidate
    loss = Trace_ELBO().loss(model, guide, x, y, candidates=candidates)
    assert loss == pytest.approx(closed_form_bound(model, x, y, candidates), rel=1e-5)


def test_auto_candidates():
    from pyro_sdlgm.estimators.label_counts import auto_candidates

    assert auto_candidates("set_bound", 159, 28) == 56
    assert auto_candidates("set_bound", 159, 10) == 40
    assert auto_candidates("set_bound", 14, 11) is None  # as many as the labels: all of them
    assert auto_candidates("elbo", 159, 10) is None
    X, Y, _ = count_data(120, np.random.default_rng(5), K=60)
    clf = SDLGMClassifier(60, hidden=[16])
    clf.fit(X, Y, **FAST)
    assert clf.params["num_candidates"] == 40 and clf.shortlist
    # the shortlist is for training steps; validation (eval mode) scores the full bound
    batch = (torch.tensor(X[:8]), torch.tensor(Y[:8], dtype=torch.float32))
    clf.model_.train()
    assert clf._batch_kwargs(batch)["candidates"].shape == (8, 40)
    clf.model_.eval()
    assert clf._batch_kwargs(batch) == {}


def test_set_bound_refuses_per_slot_logits():
    X, Y, _ = count_data(40, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="per_slot=False"):
        SDLGMClassifier(8, 4, per_slot=True).fit(X, Y, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="num_candidates must be int or one of 'auto', 'all' or none, got 'many'"):
        SDLGMClassifier(8, 4, num_candidates="many").fit(X, Y, epochs=1, progress=False)
    for key, value in (("decision", "top"), ("ranking", "best"), ("fit_objective", "mle"), ("dropout", 1.0),
                       ("include_zero", "yes"), ("calibrate_count", 1)):
        with pytest.raises(ConfigError, match=key):
            SDLGMClassifier(8, 4, **{key: value}).fit(X, Y, epochs=1, progress=False)


def test_early_stopping_starts_at_once_for_the_set_bound():
    X, Y, _ = count_data(200, np.random.default_rng(4))
    history = SDLGMClassifier(8, 4, hidden=[16]).fit(X, Y, **FAST).history_
    assert history[0]["best_epoch"]  # the ELBO's schedules would hold this back until their end
    elbo = SDLGMClassifier(8, 4, hidden=[16], fit_objective="elbo").fit(X, Y, **FAST).history_
    assert not elbo[0]["best_epoch"]


# -- counts left to the data, calibration -----------------------------------------------------


def test_max_labels_and_include_zero_are_taken_from_the_data():
    X, Y, _ = count_data(120, np.random.default_rng(5))
    clf = SDLGMClassifier(8, hidden=[16])
    clf.fit(X, Y, **FAST)
    assert clf.params["max_labels"] == int(Y.sum(1).max()) and clf.params["include_zero"] is False
    assert clf.count_posterior(X).shape == (120, int(Y.sum(1).max()))
    Y[:10] = 0  # rows without a label
    clf.fit(X, Y, **FAST)
    assert clf.params["include_zero"] is True and clf.count_levels[0] == 0
    with pytest.raises(DataError, match="no label.*include_zero"):
        SDLGMClassifier(8, 4, include_zero=False, hidden=[16]).fit(X, Y, **FAST)


def test_count_temperature_lowers_the_validation_nll_and_is_saved(tmp_path):
    rng = np.random.default_rng(6)
    X, Y, _ = count_data(400, rng)
    X_val, Y_val, counts_val = count_data(200, rng)
    options = dict(hidden=[64], dropout=0.0)
    fit = dict(FAST, epochs=30, learning_rate=1e-2)
    raw = SDLGMClassifier(8, 4, calibrate_count=False, **options)
    raw.fit(X, Y, validation_data=(X_val, Y_val), **fit)
    calibrated = SDLGMClassifier(8, 4, **options)
    calibrated.fit(X, Y, validation_data=(X_val, Y_val), **fit)
    assert raw.count_temperature_ == 1.0 and calibrated.count_temperature_ != 1.0

    def nll(clf):
        return float(-np.log(clf.count_posterior(X_val)[np.arange(200), counts_val - 1]).mean())

    assert nll(calibrated) < nll(raw)
    # the temperature changes no mode
    assert np.array_equal(calibrated.predict_count(X_val), raw.predict_count(X_val))
    calibrated.save(tmp_path / "clf.pt")
    loaded = SDLGMClassifier.load(tmp_path / "clf.pt")
    assert loaded.count_temperature_ == calibrated.count_temperature_
    assert np.allclose(loaded.count_posterior(X_val), calibrated.count_posterior(X_val))


def test_a_checkpoint_of_format_version_1_is_refused_naming_it(tmp_path):
    """pyro_sdlgm 0.1 wrote classifier checkpoints without the set bound's options (format version 1)."""
    X, Y, _ = count_data(100, np.random.default_rng(7))
    clf = SDLGMClassifier(8, 4, hidden=[16], per_slot=True, **ELBO_AS_MEASURED)
    clf.fit(X, Y, **FAST)
    clf.save(tmp_path / "new.pt")
    data = torch.load(tmp_path / "new.pt", weights_only=True)
    for key in ELBO_AS_MEASURED:
        del data["params"][key]
    del data["count_temperature"]
    data["format_version"] = 1
    torch.save(data, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"'.*old.pt' has format version 1; this version of pyro_sdlgm reads "
                                              r"version 2; .*pip install pyro-sdlgm==0\.1\.0"):
        SDLGMClassifier.load(tmp_path / "old.pt")
    assert np.array_equal(SDLGMClassifier.load(tmp_path / "new.pt").predict(X), clf.predict(X))


# -- the F1-optimal decision ------------------------------------------------------------------


def test_f1_optimal_sets_match_brute_force_over_all_subsets():
    """For any distribution over label vectors, the decision equals the subset of largest expected F1."""
    rng = np.random.default_rng(8)
    K = 4
    vectors = np.array(list(itertools.product([0, 1], repeat=K)))
    nonempty = vectors[vectors.sum(1) > 0]
    for trial in range(20):
        weights = rng.dirichlet(np.full(len(nonempty), 0.3))
        sizes = nonempty.sum(1)
        count_probs = np.array([weights[sizes == s].sum() for s in range(1, K + 1)])
        # P(i in S | L = s)
        conditional = np.stack([(weights[sizes == s, None] * nonempty[sizes == s]).sum(0) / max(count_probs[s - 1], 1e-12)
                                for s in range(1, K + 1)])

        def f1(pred, truth):
            return 2 * (pred & truth).sum() / (pred.sum() + truth.sum())

        best = max(nonempty, key=lambda pred: sum(w * f1(pred, t) for w, t in zip(weights, nonempty)))
        chosen = f1_optimal_sets(torch.tensor(count_probs)[None], torch.arange(1, K + 1),
                                 torch.tensor(conditional)[None], torch.arange(K)[None], K)[0].numpy()
        value = sum(w * f1(chosen.astype(int), t) for w, t in zip(weights, nonempty))
        best_value = sum(w * f1(best, t) for w, t in zip(weights, nonempty))
        assert value == pytest.approx(best_value, abs=1e-9), (trial, chosen, best)


def test_f1_optimal_sets_with_an_empty_count():
    # P(L = 0) = 0.9: predicting nothing has expected F1 0.9, more than any label can give
    chosen = f1_optimal_sets(torch.tensor([[0.9, 0.1]]), torch.tensor([0, 1]), torch.tensor([[[1.0, 0.0]]]),
                             torch.tensor([[0, 1]]), 2)
    assert chosen.sum() == 0
    chosen = f1_optimal_sets(torch.tensor([[0.1, 0.9]]), torch.tensor([0, 1]), torch.tensor([[[1.0, 0.0]]]),
                             torch.tensor([[0, 1]]), 2)
    assert chosen.tolist() == [[1, 0]]


def test_predict_decisions():
    rng = np.random.default_rng(9)
    X, Y, _ = count_data(300, rng)
    clf = SDLGMClassifier(8, 4, hidden=[32])
    clf.fit(scipy.sparse.csr_matrix(X), Y, **dict(FAST, epochs=10))
    scores = clf.predict_scores(X)
    f1_sets = clf.predict(X)
    clf.set_params(decision="count")
    clf.fit(scipy.sparse.csr_matrix(X), Y, **dict(FAST, epochs=10))  # the same seed: the same networks
    count_sets = clf.predict(X)
    assert np.array_equal(count_sets.sum(1), clf.predict_count(X))
    # with shared slots both decisions take a prefix of the inclusion ranking
    top = np.argsort(-scores, axis=1, kind="stable")
    for sets in (f1_sets, count_sets):
        for row in range(30):
            chosen = set(np.flatnonzero(sets[row]))
            assert chosen == set(top[row, :len(chosen)])
    assert (f1_sets != count_sets).any()  # the decisions differ somewhere


def test_distinct_draw_inclusion_adds_up_to_the_count_and_matches_plackett_luce():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 6) * 1.5, -1)
    inclusion = distinct_draw_inclusion(probs, 4)
    assert inclusion.shape == (3, 4, 6)
    assert torch.allclose(inclusion.sum(-1), torch.arange(1.0, 5.0).expand(3, -1), atol=1e-4)
    assert torch.allclose(inclusion[:, 0], probs, atol=1e-5)  # one draw: exact
    # against the exact inclusion probabilities of l = 2 Plackett-Luce draws (enumerated)
    for row in range(3):
        p = probs[row].double()
        exact = torch.zeros(6, dtype=torch.float64)
        for i, j in itertools.permutations(range(6), 2):
            weight = p[i] * p[j] / (1 - p[i])
            exact[i] += weight
            exact[j] += weight
        error = (inclusion[row, 1].double() - exact).abs()
        with_replacement = (1 - (1 - p) ** 2 - exact).abs()
        # an approximation: within 0.06 here (the largest errors at a dominant label), and
        # closer than drawing with replacement
        assert error.max() < 0.06 and error.sum() < with_replacement.sum(), (inclusion[row, 1], exact)


def test_f1_decision_with_confident_distinct_draws():
    """P(L = 0) = 0.47, P(L = 2) = 0.53 with p_a = p_b = 0.5: the two labels (expected F1 0.53)
    beat the empty set (0.47); draws taken with replacement (inclusion 0.75) would pick the empty set."""
    inclusion = distinct_draw_inclusion(torch.tensor([[0.5, 0.5, 0.0]]), 2)
    assert torch.allclose(inclusion[0, 1], torch.tensor([1.0, 1.0, 0.0]), atol=1e-3)
    chosen = f1_optimal_sets(torch.tensor([[0.47, 0.0, 0.53]]), torch.tensor([0, 1, 2]), inclusion,
                             torch.tensor([[0, 1, 2]]), 3)
    assert chosen.tolist() == [[1, 1, 0]]


def test_calibration_skips_rows_without_a_count_level():
    X, Y, _ = count_data(120, np.random.default_rng(10))
    X_val, Y_val, _ = count_data(40, np.random.default_rng(11))
    Y_val[:5] = 0  # no label: not a level of the ELBO model without include_zero
    clf = SDLGMClassifier(8, 4, hidden=[16], fit_objective="elbo", include_zero=False)
    clf.fit(X, Y, validation_data=(X_val, Y_val), **FAST)
    assert np.isfinite(clf.count_temperature_) and clf.count_temperature_ > 0


def test_a_refused_fit_leaves_the_fitted_classifier_as_it_was():
    X, Y, _ = count_data(100, np.random.default_rng(12))
    clf = SDLGMClassifier(8, hidden=[16])
    clf.fit(X, Y, **FAST)
    params, scores = dict(clf.params), clf.predict_scores(X)
    wider = np.concatenate([Y, Y], axis=1)
    with pytest.raises(DataError):
        clf.fit(X, wider, **FAST)
    bad = Y.copy()
    bad[:, :] = 1  # 8 labels a row: max_labels would become 8, then the memory guard refuses
    with pytest.raises(Exception):
        clf.fit(X, bad, memory_limit_gb=1e-9, **FAST)
    assert clf.params == params and np.array_equal(clf.predict_scores(X), scores)


def test_num_candidates_all_is_the_full_bound():
    assert SDLGMClassifier(60, 4, num_candidates="all").params["num_candidates"] is None
    from pyro_sdlgm import ClassifierConfig

    assert ClassifierConfig(num_candidates="all").num_candidates is None
    with pytest.raises(ConfigError, match="'auto', 'all' or none, got 'none'"):
        ClassifierConfig(num_candidates="none")


