"""Shortlist mode of SDLGMClassifier (wide label spaces): candidates, sites, the ELBO identity,
memory linear in K, options, prediction, learning, persistence, and one step at K = 100,000."""

import json
import math
import shutil

import numpy as np
import pyro
import pytest
import scipy.sparse
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence
from torch.overrides import TorchFunctionMode

from conftest import write_xmc
from conftest import ELBO_AS_MEASURED, count_data

from pyro_sdlgm import ConfigError, SDLGMClassifier
from pyro_sdlgm.inference.checkpoint import list_checkpoints
from pyro_sdlgm.estimators.decisions import shared_inclusion
from pyro_sdlgm.app.cli import main
from pyro_sdlgm.model.conditional import build_conditional, shortlist_candidates
from pyro_sdlgm import ClassifierConfig
from pyro_sdlgm.exceptions import DataError, ResourceError
from pyro_sdlgm.analysis.metrics import precision_at_k
from pyro_sdlgm.analysis.posterior import group
from pyro_sdlgm.inference.resources import (
    EVAL_LABEL_TENSORS,
    GIB,
    LABEL_TENSORS,
    TRAIN_SLOT_TENSORS,
    estimate_training_memory,
)
from pyro_sdlgm.model.spec import OBS_SITE, ModelSpec
from pyro_sdlgm.model.support import MASKED_LOGIT, soft_support

FAST = dict(epochs=3, batch_size=32, progress=False, seed=0)


def label_data(n, rng, K=40, D=20, L0=4):
    """:func:`test_classifier.count_data` with 40 labels and ``Y`` as CSR: ``(X, Y)``."""
    X, Y, _ = count_data(n, rng, K=K, D=D, L0=L0)
    return X, scipy.sparse.csr_matrix(Y)


# ----------------------------------------------------------------------------- candidates


def test_candidates_hold_every_true_label_then_hard_then_random_negatives():
    torch.manual_seed(0)
    n, k, c = 50, 30, 9
    y = (torch.rand(n, k) < 0.1).float()
    y[y.sum(-1) > c] = 0
    y[:2] = 0  # row 0: no label
    y[1, :9] = 1  # row 1: exactly C labels
    scores = torch.randn(n, k)
    candidates = shortlist_candidates(scores, y, c)
    assert candidates.shape == (n, c) and candidates.dtype == torch.long
    assert int(candidates.min()) >= 0 and int(candidates.max()) < k
    for i in range(n):
        row = candidates[i].tolist()
        positives = torch.nonzero(y[i]).flatten().tolist()
        p = len(positives)
        hard = (c - p) // 2
        assert len(set(row)) == c  # distinct
        assert set(row[:p]) == set(positives)  # the true labels first
        # then the highest-scored labels among the others
        others = scores[i].masked_fill(y[i] > 0, -math.inf)
        assert set(row[p:p + hard]) == set(others.topk(hard).indices.tolist())
        assert not set(row[p + hard:]) & set(positives)
    # random negatives come from torch's global RNG: reproducible under a seed, different otherwise
    torch.manual_seed(1)
    first = shortlist_candidates(scores, y, c)
    torch.manual_seed(1)
    assert torch.equal(first, shortlist_candidates(scores, y, c))
    assert not torch.equal(first, shortlist_candidates(scores, y, c))
    # C = K: a permutation of all labels
    everything = shortlist_candidates(scores, y, k)
    assert torch.equal(everything.sort(-1).values, torch.arange(k).expand(n, k))
    y[2] = 0
    y[2, :10] = 1
    with pytest.raises(DataError, match="a row has 10 labels, more than num_candidates=9"):
        shortlist_candidates(scores, y, c)


# ----------------------------------------------------------------------------- the model


def networks(guide="label_aware", K=30, L0=4, D=5, label_noise=1e-3):
    spec = ModelSpec(D, K, L0, binary=True)
    return build_conditional(spec, guide, False, [16], "relu", label_noise)


def traces(model, guide, x, y, **kwargs):
    guide_trace = poutine.trace(guide).get_trace(x, y, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, **kwargs)
    return guide_trace, model_trace


@pytest.mark.parametrize("guide", ["label_aware", "prior_as_guide"])
def test_sites_draw_over_the_candidates(guide):
    model, guide = networks(guide)
    x, y = torch.randn(6, 5), (torch.rand(6, 30) < 0.1).float()
    candidates = shortlist_candidates(torch.randn(6, 30), y, 12)
    guide_trace, model_trace = traces(model, guide, x, y, candidates=candidates)
    for trace in (guide_trace, model_trace):
        for name in model.spec.slot_sites:
            site = trace.nodes[name]
            assert site["fn"].batch_shape == (6,) and site["fn"].event_shape == (12,)
            assert site["value"].shape == (6, 12)
    obs = model_trace.nodes[OBS_SITE]
    assert obs["fn"].event_shape == (12,) and torch.equal(obs["value"], y.gather(-1, candidates))
    assert model_trace.nodes["_RETURN"]["value"].shape == (6, 12)


def test_shortlist_of_all_labels_in_order_is_the_full_mode():
    """C = K with candidates 0..K-1: the same slot logits, draws and ELBO, bit for bit."""
    model, guide = networks()
    x, y = torch.randn(8, 5), (torch.rand(8, 30) < 0.1).float()
    everything = torch.arange(30).expand(8, 30)
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(3)
        full = TraceMeanField_ELBO().loss(model, guide, x, y, num_data=100)
        pyro.set_rng_seed(3)
        shortlist = TraceMeanField_ELBO().loss(model, guide, x, y, candidates=everything, num_data=100)
    assert shortlist == full


def elbo(guide_trace, model_trace, sites):
    """log p(y | s) - sum of the scaled analytic KL terms (the discrete-KL objective)."""
    obs = model_trace.nodes[OBS_SITE]
    value = obs["fn"].log_prob(obs["value"]).sum()
    for name in sites:
        q, p = guide_trace.nodes[name], model_trace.nodes[name]
        value = value - (q["scale"] * kl_divergence(q["fn"], p["fn"])).sum()
    return value


def test_shortlist_elbo_is_the_truncated_full_elbo_plus_the_constant():
    """The shortlist ELBO equals the full-mode ELBO of model and guide whose slot distributions are
    truncated to the shortlist (logits outside it masked), given the same draws, up to the constant
    ``(K - C) log(1 - eps)`` per row of the labels outside the shortlist."""
    n, k, c = 7, 30, 11
    model, guide = networks(K=k, label_noise=0.1)  # a constant of 133 log(0.9) = -14 nats
    x, y = torch.randn(n, 5), (torch.rand(n, k) < 0.1).float()
    candidates = shortlist_candidates(torch.randn(n, k), y, c)
    sites = ["sparsity", *model.spec.slot_sites]
    with torch.no_grad():
        short_guide, short_model = traces(model, guide, x, y, candidates=candidates)
        # the same draws over K labels: -inf (probability 0) outside the shortlist
        values = {"sparsity": short_guide.nodes["sparsity"]["value"]}
        for name in model.spec.slot_sites:
            values[name] = torch.full((n, k), -math.inf).scatter(-1, candidates, short_guide.nodes[name]["value"])
        outside = torch.ones(n, k, dtype=torch.bool).scatter(-1, candidates, False)

        def truncate(module, inputs, output):
            sparsity_logits, slot_logits, *rest = output
            return (sparsity_logits, slot_logits.masked_fill(outside.unsqueeze(1), MASKED_LOGIT), *rest)

        hooks = [model.prior_net.register_forward_hook(truncate), guide.encoder.register_forward_hook(truncate)]
        try:
            full_guide = poutine.trace(poutine.condition(guide, data=values)).get_trace(x, y)
            for name in values:  # drawn, as far as the model's replay is concerned
                full_guide.nodes[name]["is_observed"] = False
            full_model = poutine.trace(poutine.replay(model, trace=full_guide)).get_trace(x, y)
        finally:
            for hook in hooks:
                hook.remove()
        assert full_model.nodes[OBS_SITE]["fn"].event_shape == (k,)
        constant = n * (k - c) * math.log(1 - model.label_noise)
        short, full = elbo(short_guide, short_model, sites), elbo(full_guide, full_model, sites)
        assert torch.isfinite(short) and constant < -10
        assert float(full) == pytest.approx(float(short) + constant, rel=1e-5, abs=1e-3)


# ----------------------------------------------------------------------------- memory and options


def test_memory_estimate_is_linear_in_K_not_in_L0_times_K():
    base = dict(num_parameters=10**6, max_sparsity=32, batch_size=256, eval_batch_size=0, num_candidates=128)
    one = estimate_training_memory(latent_dim=100_000, **base)
    two = estimate_training_memory(latent_dim=200_000, **base)
    # doubling K adds exactly the K-linear part once more
    assert two.training_step - one.training_step == 4 * LABEL_TENSORS * 256 * 100_000
    assert one.training_step == 4 * (TRAIN_SLOT_TENSORS * 256 * 32 * 128 + LABEL_TENSORS * 256 * 100_000)
    # more slots only cost their L0 x C terms, whatever K is
    for k in (100_000, 200_000):
        wider = estimate_training_memory(latent_dim=k, **{**base, "max_sparsity": 64})
        narrow = estimate_training_memory(latent_dim=k, **base)
        assert wider.training_step - narrow.training_step == 4 * TRAIN_SLOT_TENSORS * 256 * 32 * 128
    validation = estimate_training_memory(latent_dim=100_000, **{**base, "eval_batch_size": 1024})
    assert validation.validation_pass == 4 * (10 * 1024 * 32 * 128 + EVAL_LABEL_TENSORS * 1024 * 100_000)
    # the full mode at K = 100,000, L0 = 32, batch 256 needs 78 GiB of activations; the shortlist 0.7
    full = estimate_training_memory(10**6, 100_000, 32, 256)
    assert full.training_step / GIB > 75 and one.training_step / GIB < 2


def test_the_memory_guard_uses_the_shortlist_estimate():
    X, Y = label_data(80, np.random.default_rng(0))
    clf = SDLGMClassifier(40, 4, fit_objective="elbo", per_slot=False, num_candidates=12, hidden=[8])
    with pytest.raises(ResourceError, match="num_candidates=12"):
        clf.fit(X, Y, memory_limit_gb=1e-6, **FAST)


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"num_candidates=12.*per_slot=False.*4 x 40 x hidden"):
        SDLGMClassifier(40, 4, num_candidates=12, fit_objective="elbo", per_slot=True).config
    with pytest.raises(ConfigError, match="num_candidates=3 must lie between max_labels=4 and num_labels=40"):
        SDLGMClassifier(40, 4, fit_objective="elbo", per_slot=False, num_candidates=3).config
    with pytest.raises(ConfigError, match="num_candidates=41 must lie between max_labels=4 and num_labels=40"):
        SDLGMClassifier(40, 4, fit_objective="elbo", per_slot=False, num_candidates=41).config
    for bad in (True, 12.0, "12"):
        with pytest.raises(ConfigError, match="num_candidates must be int or one of 'auto', 'all' or none"):
            SDLGMClassifier(40, 4, fit_objective="elbo", per_slot=False, num_candidates=bad).config
    assert ClassifierConfig().num_candidates == "auto"
    with pytest.raises(ConfigError, match="classifier.num_candidates"):
        ClassifierConfig(num_candidates="many")


# ----------------------------------------------------------------------------- training and prediction


@pytest.fixture(scope="module")
def fitted():
    """A shortlist classifier (K = 40, L0 = 4, C = 12) trained on 1,000 rows; 300 test rows."""
    pyro.set_rng_seed(0)
    rng = np.random.default_rng(0)
    X, Y = label_data(1000, rng)
    X_test, Y_test = label_data(300, rng)
    clf = SDLGMClassifier(40, 4, per_slot=False, num_candidates=12, hidden=[64],
                          **ELBO_AS_MEASURED)  # the ELBO's shortlist mode as it was measured
    clf.fit(X, Y, epochs=30, batch_size=64, learning_rate=3e-3, progress=False, seed=0)
    return clf, X_test, Y_test


def test_a_small_fit_learns_the_labels_and_counts(fitted):
    clf, X_test, Y_test = fitted
    scores = clf.predict_scores(X_test)
    p1 = precision_at_k(Y_test, scores, 1)
    chance = float(Y_test.sum() / Y_test.shape[0] / Y_test.shape[1])
    counts = np.diff(Y_test.indptr)
    count_accuracy = float((clf.predict_count(X_test) == counts).mean())
    print(f"P@1 {p1:.3f} (chance {chance:.3f}); count accuracy {count_accuracy:.3f}")
    # measured: P@1 0.877 (chance 0.061), count accuracy 0.677 (seed 0)
    assert p1 > 0.5 and count_accuracy > 0.5
    assert all(r["val_loss"] > 0 for r in clf.history_)


def test_prediction_ranks_all_labels_and_keeps_at_most_the_predicted_count(fitted):
    clf, X_test, _ = fitted
    predicted = clf.predict(X_test)
    counts = clf.predict_count(X_test)
    assert predicted.shape == (300, 40) and np.array_equal(np.diff(predicted.indptr), counts)
    assert counts.max() <= 4
    scores = clf.predict_scores(X_test)
    assert scores.shape == (300, 40)
    top = np.argsort(-scores, axis=1)
    for row in range(20):
        assert set(predicted[row].indices) == set(top[row, :counts[row]])
    # the slot-by-slot inclusion probability equals the soft support of L0 copies of the shared probabilities
    gates = torch.rand(9, 4).sort(-1, descending=True).values
    probs = torch.randn(9, 40).softmax(-1)
    assert torch.allclose(shared_inclusion(gates, probs), soft_support(gates, probs.unsqueeze(1).expand(9, 4, 40)))


def test_posterior_batches_are_lowered_to_bound_the_draws(fitted, monkeypatch, caplog):
    """In shortlist mode a posterior draw over all K labels (8 L0 K bytes per row) is kept within
    CHUNK_BYTES by lowering the batch size (here to 10 rows); the draws still cover all K labels."""
    import pyro_sdlgm.estimators.classifier as classifier

    clf, X_test, _ = fitted
    monkeypatch.setattr(classifier, "CHUNK_BYTES", 8 * 4 * 40 * 10)
    with caplog.at_level("INFO", logger="pyro_sdlgm.estimators.classifier"):
        idata = clf.posterior(X_test[:25], num_samples=4, batch_size=256)
    assert "batch_size 256 lowered to 10 rows" in caplog.text
    inclusion = group(idata, "marginals")["inclusion_probs"].values
    nnz = group(idata, "posterior")["nnz"].values  # (chain, draw, obs)
    assert inclusion.shape == (25, 40) and np.allclose(inclusion.sum(1), nnz.mean((0, 1)))


def test_save_load_round_trip(fitted, tmp_path):
    clf, X_test, _ = fitted
    clf.save(tmp_path / "clf.pt")
    loaded = SDLGMClassifier.load(tmp_path / "clf.pt")
    assert loaded.params["num_candidates"] == 12 and loaded.params["per_slot"] is False
    assert (loaded.predict(X_test) != clf.predict(X_test)).nnz == 0
    assert np.array_equal(loaded.predict_scores(X_test), clf.predict_scores(X_test))


def assert_same_states(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_resume_equals_an_uninterrupted_fit(tmp_path):
    X, Y = label_data(200, np.random.default_rng(1))
    options = dict(epochs=5, batch_size=32, checkpoint_every=1, keep_checkpoints=10, learning_rate=3e-3,
                   progress=False, seed=0)
    build = dict(fit_objective="elbo", per_slot=False, num_candidates=10, hidden=[16])
    full = SDLGMClassifier(40, 4, **build)
    expected = full.fit(X, Y, run_dir=tmp_path / "full", **options).history_
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    for epoch, path in list_checkpoints(crashed / "checkpoints"):
        if epoch > 2:
            path.unlink()
    resumed = SDLGMClassifier(40, 4, **build)
    history = resumed.fit(X, Y, run_dir=crashed, resume=True, **options).history_
    assert without_seconds(history) == without_seconds(expected)
    assert_same_states(resumed.model_, full.model_)
    assert_same_states(resumed.guide_, full.guide_)
    # the shortlist size is part of the run's identity
    with pytest.raises(ConfigError, match="num_candidates: 10 in the checkpoint, 12 now"):
        SDLGMClassifier(40, 4, **{**build, "num_candidates": 12}).fit(X, Y, run_dir=crashed, resume=True, **options)


def test_command_line_config_takes_num_candidates(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X, Y = label_data(160, rng, K=12, D=6, L0=3)
    write_xmc(tmp_path / "train.txt", X[:120], Y[:120].toarray())
    write_xmc(tmp_path / "test.txt", X[120:], Y[120:].toarray())
    config = tmp_path / "ml.toml"
    config.write_text(f"""task = "multilabel"
[classifier]
max_labels = 3
fit_objective = "elbo"
per_slot = false
num_candidates = 6
hidden = [16]
[training]
epochs = 2
progress = false
[data]
format = "xmc"
train = {str(tmp_path / "train.txt")!r}
test = {str(tmp_path / "test.txt")!r}
""")
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 0
    assert "P@1" in capsys.readouterr().out
    assert SDLGMClassifier.load(tmp_path / "run" / "model.pt").params["num_candidates"] == 6
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["num_examples"] == 40
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0  # a finished run resumes to itself


# ----------------------------------------------------------------------------- wide label spaces


class LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function or tensor method returns (views included)."""

    def __init__(self):
        super().__init__()
        self.numel, self.where = 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        stack = [out]
        while stack:
            item = stack.pop()
            if isinstance(item, (tuple, list)):
                stack.extend(item)
            elif isinstance(item, torch.Tensor) and item.numel() > self.numel:
                self.numel, self.where = item.numel(), (getattr(func, "__name__", repr(func)), tuple(item.shape))
        return out


def test_one_training_step_at_100k_labels_never_builds_rows_x_slots_x_labels():
    n, k, l0, d = 16, 100_000, 32, 50
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    rows = np.repeat(np.arange(n), 3)
    Y = scipy.sparse.csr_matrix((np.ones(3 * n, np.float32), (rows, rng.integers(0, k, 3 * n))), shape=(n, k))
    clf = SDLGMClassifier(k, l0, fit_objective="elbo", per_slot=False, num_candidates=64, hidden=[8])
    with LargestTensor() as watch:
        history = clf.fit(X, Y, epochs=1, batch_size=n, validation_fraction=0.0, progress=False, seed=0).history_
        predicted = clf.predict(X, batch_size=n)
        clf.predict_scores(X, batch_size=n)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert np.diff(predicted.indptr).max() <= l0
    # the largest tensor is a batch over the labels (the guide's input), never (N, L0, K)
    print("largest tensor:", watch.where)
    assert watch.numel <= n * (k + d) < n * l0 * k // 16, watch.where
