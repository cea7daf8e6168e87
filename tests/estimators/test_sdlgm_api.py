"""The user-facing SDLGM class: outputs, persistence, and specific errors on bad input."""

import os
import pickle

import numpy as np
import pytest
import scipy.sparse
import torch
from pyro_sdlgm import SDLGM, CheckpointError, ConfigError, DataError, NotFittedError

from conftest import FAST_FIT

# codes with values (binary="auto" would make them binary for this Bernoulli data)
SMALL = dict(latent_dim=8, max_sparsity=3, decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]},
             binary=False)


@pytest.fixture
def fitted(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    model.fit(binary_data, **FAST_FIT)
    return model


def test_outputs_have_documented_shapes(fitted, binary_data):
    Z = fitted.encode(binary_data)
    assert Z.shape == (120, 8) and Z.dtype == np.float32
    P = fitted.sparsity_posterior(binary_data)
    assert P.shape == (120, 3) and np.allclose(P.sum(1), 1.0, atol=1e-5)
    assert list(fitted.sparsity_levels) == [1, 2, 3]
    L_hat = fitted.predict_sparsity(binary_data)
    assert np.array_equal(L_hat, fitted.sparsity_levels[P.argmax(1)])
    # hard codes: exactly L_hat supports (values of a trained guide are never exactly 0 here)
    assert np.array_equal((Z != 0).sum(1), L_hat)
    csr = fitted.encode(binary_data, sparse=True)
    assert scipy.sparse.issparse(csr) and np.array_equal(csr.toarray(), Z)
    assert fitted.reconstruct(binary_data[:4]).shape == (4, 12)


def test_include_zero_and_binary_modes(binary_data):
    model = SDLGM(input_dim=12, include_zero=True, **{**SMALL, "binary": True})
    model.fit(binary_data, **FAST_FIT)
    assert model.sparsity_posterior(binary_data).shape == (120, 4)
    assert list(model.sparsity_levels) == [0, 1, 2, 3]
    Z = model.encode(binary_data)
    assert set(np.unique(Z)) <= {0.0, 1.0}
    assert np.array_equal(Z.sum(1), model.predict_sparsity(binary_data))


def test_evaluate_reports_the_documented_metrics(fitted, binary_data):
    metrics = fitted.evaluate(binary_data, num_samples=2)
    for key in ["elbo", "recon", "recon_relaxed", "kl_sparsity", "kl_slots", "kl_values", "mse", "mean_nnz",
                "max_nnz", "nnz_histogram", "codes_over_cap", "unused_dim_fraction", "slot_duplicate_rate"]:
        assert key in metrics
    assert metrics["codes_over_cap"] == 0 and metrics["max_nnz"] <= 3
    assert sum(metrics["nnz_histogram"]) == 120
    assert metrics["elbo"] == pytest.approx(-(metrics["recon_relaxed"] + metrics["kl_sparsity"]
                                              + metrics["kl_slots"] + metrics["kl_values"]), rel=1e-4)
    assert 0.0 <= metrics["slot_duplicate_rate"] <= 1.0
    assert fitted.evaluate(binary_data, seed=3) == fitted.evaluate(binary_data, seed=3)


def test_save_load_round_trip(fitted, binary_data, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = SDLGM.load(path)
    assert np.array_equal(loaded.encode(binary_data), fitted.encode(binary_data))
    assert np.array_equal(loaded.sparsity_posterior(binary_data), fitted.sparsity_posterior(binary_data))
    assert loaded.config == fitted.config
    assert loaded.history_ == fitted.history_
    assert loaded.evaluate(binary_data) == fitted.evaluate(binary_data)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# torch warns about pickle protocols other than 2 before refusing; the warning is expected here
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_refuses_a_checkpoint_that_would_run_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"format": "pyro_sdlgm.SDLGM", "payload": _RunsCode(marker)}, handle, protocol=protocol)
    with pytest.raises(CheckpointError, match="weights-only"):
        SDLGM.load(path)
    assert not marker.exists()


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        SDLGM.load(tmp_path / "missing.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pyro_sdlgm.SDLGM checkpoint"):
        SDLGM.load(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_sparsity=0), "max_sparsity"),
        (dict(max_sparsity=9), "max_sparsity.*latent_dim=8"),
        (dict(likelihood="poisson"), "unknown likelihood 'poisson'.*bernoulli"),
        (dict(sparsity_inference="exact"), "sparsity_inference"),
        (dict(decoder_hidden=(0,)), "hidden layer sizes"),
    ],
)
def test_bad_options_are_refused_by_fit_naming_them(kwargs, match, binary_data):
    model = SDLGM(input_dim=12, **{**SMALL, **kwargs})  # stored unchecked, as scikit-learn asks
    assert all(model.get_params()[key] == value for key, value in kwargs.items())
    with pytest.raises(ConfigError, match=match):
        model.fit(binary_data, epochs=1, progress=False)


def test_an_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'.*training options: epochs"):
        SDLGM(epoch=3)


def test_bad_training_options(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    with pytest.raises(ConfigError, match="tau_sparsity_end"):
        model.fit(binary_data, tau_sparsity_end=-0.1)
    with pytest.raises(ConfigError, match="tau_support_start"):
        model.fit(binary_data, tau_support_start=0)
    with pytest.raises(ConfigError, match="unknown config key 'training.epoch'"):
        model.fit(binary_data, epoch=3)


def test_bad_data(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    bad = binary_data.copy()
    bad[7, 3] = np.nan
    with pytest.raises(DataError, match="row 7, column 3"):
        model.fit(bad)
    bad[7, 3] = np.inf
    with pytest.raises(DataError, match="NaN or infinity"):
        model.fit(bad)
    with pytest.raises(DataError, match="empty"):
        model.fit(np.zeros((0, 12)))
    with pytest.raises(DataError, match="13 features.*input_dim=12"):
        model.fit(np.zeros((5, 13)))
    with pytest.raises(DataError, match="2-D"):
        model.fit(np.zeros(12))
    out_of_range = binary_data.copy()
    out_of_range[2, 5] = 3.0
    with pytest.raises(DataError, match=r"\[0, 1\].*3.0.*row 2, column 5"):
        model.fit(out_of_range)
    with pytest.raises(DataError, match="sparse"):
        model.fit(scipy.sparse.csr_matrix(binary_data))
    with pytest.raises(DataError, match="numeric"):
        model.fit(np.array([["a"] * 12]))


def test_normal_likelihood_takes_any_real_data():
    x = np.random.default_rng(0).normal(size=(60, 12)).astype(np.float32) * 5
    model = SDLGM(input_dim=12, likelihood="normal", **SMALL)
    model.fit(x, **FAST_FIT)
    assert model.encode(x).shape == (60, 8)


def test_methods_before_fit_raise(binary_data, tmp_path):
    model = SDLGM(input_dim=12, **SMALL)
    for call in (lambda: model.encode(binary_data), lambda: model.evaluate(binary_data),
                 lambda: model.sparsity_posterior(binary_data), lambda: model.save(tmp_path / "m.pt")):
        with pytest.raises(NotFittedError, match="fit"):
            call()


def test_encode_checks_features(fitted):
    with pytest.raises(DataError, match="11 features"):
        fitted.encode(np.zeros((3, 11)))
    with pytest.raises(DataError, match="num_samples"):
        fitted.evaluate(np.zeros((3, 12)), num_samples=0)


def test_bad_values_are_named_as_plain_numbers_not_numpy_reprs():
    from pyro_sdlgm import SDLGMClassifier

    X = np.zeros((4, 3), np.float32)
    X[2, 1] = 51.0
    with pytest.raises(DataError) as bernoulli:
        SDLGM(input_dim=3, latent_dim=4, max_sparsity=2).fit(X, epochs=1, progress=False)
    Y = np.eye(4, 3, dtype=np.float32)
    Y[1, 0] = 2.0
    with pytest.raises(DataError) as labels:
        SDLGMClassifier(num_labels=3, max_labels=2).fit(X, Y, epochs=1, progress=False)
    for err in (bernoulli, labels):
        assert "np." not in str(err.value), str(err.value)
    assert "51.0 at row 2, column 1" in str(bernoulli.value) and "2.0" in str(labels.value)


def test_sample_draws_counts_from_the_prior_and_codes_with_that_many_non_zeros(fitted):
    X, Z, L = fitted.sample(3000, seed=1)
    assert X.shape == (3000, 12) and X.dtype == np.float32 and Z.shape == (3000, 8) and L.dtype == np.int64
    assert set(np.unique(X)) <= {0.0, 1.0}  # Bernoulli draws
    np.testing.assert_array_equal((Z != 0).sum(1), L)  # distinct dimensions, values never exactly 0
    frequencies = np.bincount(L, minlength=4)[1:] / 3000
    np.testing.assert_allclose(frequencies, 1 / 3, atol=4 * np.sqrt(2 / 9 / 3000))  # the uniform prior
    # x follows the decoder's mean of its own code: column means within 4 standard errors
    probs = fitted.inverse_transform(Z)
    np.testing.assert_array_less(np.abs(X.mean(0) - probs.mean(0)), 4 * np.sqrt(0.25 / 3000) + 1e-6)
    before = torch.get_rng_state()
    again = fitted.sample(3000, seed=1)
    assert torch.equal(torch.get_rng_state(), before)  # the global random state is left alone
    for a, b in zip((X, Z, L), again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(L, fitted.sample(3000, seed=2)[2])
    with pytest.raises(DataError, match="n_samples must be a positive integer, got 0"):
        fitted.sample(0)


def test_sample_with_independent_slots_counts_a_repeated_dimension_once(binary_data):
    model = SDLGM(input_dim=12, slot_selection="independent", binary=True, latent_dim=3, max_sparsity=3,
                  decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]}).fit(binary_data, **FAST_FIT)
    _, Z, L = model.sample(500, seed=0)
    nnz = (Z != 0).sum(1)
    assert (nnz <= L).all() and (nnz < L).any() and set(np.unique(Z)) == {0.0, 1.0}


def test_sample_of_a_wide_model_gives_sparse_codes(binary_data):
    model = SDLGM(input_dim=12, latent_dim=1100, max_sparsity=3, decoder_hidden=(16,),
                  guide={"name": "mlp_magnitude_slots", "hidden": [16]}).fit(binary_data, **FAST_FIT)
    X, Z, L = model.sample(50, seed=0)
    assert scipy.sparse.issparse(Z) and Z.shape == (50, 1100) and X.shape == (50, 12)
    np.testing.assert_array_equal(np.diff(Z.indptr), L)


def test_decoder_skip_adds_a_linear_part_and_needs_hidden_layers(binary_data):
    model = SDLGM(input_dim=12, decoder_skip=True, **SMALL).fit(binary_data, **FAST_FIT)
    decoder = model.model_.decoder
    z = torch.zeros(2, 8)
    z[0, 3] = 1.5
    with torch.no_grad():
        np.testing.assert_allclose(decoder(z) - decoder.net(z), (decoder.skip.weight @ z.T).T, atol=1e-6)
    with pytest.raises(ConfigError, match="decoder_skip=True needs hidden layers"):
        SDLGM(input_dim=12, decoder_skip=True, **{**SMALL, "decoder_hidden": ()}).fit(binary_data, **FAST_FIT)
    # "auto": a linear part beside hidden layers up to 1,024 dimensions, none for a linear decoder or above
    assert SDLGM(input_dim=12, **SMALL).model_.decoder.skip is not None
    assert SDLGM(input_dim=12, **{**SMALL, "decoder_hidden": ()}).model_.decoder.skip is None
    assert SDLGM(input_dim=12, **{**SMALL, "latent_dim": 1100, "guide": "mlp_magnitude_slots"}).model_.decoder.skip is None


def test_a_checkpoint_from_before_decoder_skip_loads_without_the_linear_part(binary_data, tmp_path):
    fitted = SDLGM(input_dim=12, decoder_skip=False, **SMALL).fit(binary_data, **FAST_FIT)
    path = tmp_path / "old.pt"
    fitted.save(path)
    data = torch.load(path, weights_only=True)
    del data["model_config"]["decoder_skip"]  # as written before the option existed
    torch.save(data, path)
    loaded = SDLGM.load(path)
    assert loaded.decoder_skip is False and loaded.model_.decoder.skip is None
    np.testing.assert_allclose(loaded.reconstruct(np.zeros((1, 12), np.float32)),
                               fitted.reconstruct(np.zeros((1, 12), np.float32)), atol=1e-6)


def test_sample_observations_draws_x_given_codes(fitted):
    Z = np.zeros((4000, 8), np.float32)
    Z[:2000, 1] = 2.0
    X = fitted.sample_observations(Z, seed=0)
    assert X.shape == (4000, 12) and X.dtype == np.float32 and set(np.unique(X)) <= {0.0, 1.0}
    probs = fitted.inverse_transform(Z)  # the decoder's means of the same codes
    for rows in (slice(0, 2000), slice(2000, None)):
        np.testing.assert_array_less(np.abs(X[rows].mean(0) - probs[rows].mean(0)), 4 * np.sqrt(0.25 / 2000) + 1e-6)
    np.testing.assert_array_equal(X, fitted.sample_observations(scipy.sparse.csr_matrix(Z), seed=0))
    assert not np.array_equal(X, fitted.sample_observations(Z, seed=1))
    with pytest.raises(DataError, match="Z has 5 columns but the model has latent_dim=8"):
        fitted.sample_observations(np.zeros((2, 5)))
