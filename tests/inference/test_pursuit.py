"""The matching pursuit through the fitted decoder (``pyro_sdlgm.inference.pursuit``, ``encoding="pursuit"``)."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp

from pyro_sdlgm import SDLGM, ConfigError
from pyro_sdlgm.inference.pursuit import count_logits, decoder_atoms, prefix_code, pursue

K, D, L0 = 12, 30, 4


def known_dictionary(seed=0):
    """An SDLGM whose linear decoder is a random unit-norm dictionary ``W (K, D)``, normal scale 0.05."""
    torch.manual_seed(seed)
    m = SDLGM(input_dim=D, latent_dim=K, max_sparsity=L0, likelihood="normal", decoder_hidden=(), seed=seed)
    W = torch.randn(K, D)
    W = W / W.norm(dim=-1, keepdim=True)
    layer = m.model_.decoder.net[0]
    with torch.no_grad():
        layer.weight.copy_(W.T)
        layer.bias.zero_()
        m.model_.likelihood.raw_scale.fill_(math.log(math.expm1(0.05 - m.model_.likelihood.min_scale)))
    m.model_.eval()
    return m, W


def sparse_rows(n, counts, seed=0):
    """Codes ``(n, K)`` with ``counts`` non-zeros each, values of magnitude 1-2 with random signs."""
    rng = np.random.default_rng(seed)
    Z = np.zeros((n, K), np.float32)
    for i, c in enumerate(counts):
        dims = rng.choice(K, c, replace=False)
        Z[i, dims] = rng.uniform(1, 2, c) * rng.choice([-1, 1], c)
    return Z


def test_the_pursuit_recovers_noiseless_supports_as_omp_does():
    m, W = known_dictionary()
    counts = np.tile(np.arange(1, L0 + 1), 10)
    Z = sparse_rows(len(counts), counts)
    x = torch.from_numpy(Z) @ W
    found = pursue(m.model_, x)
    dictionary, signals = W.T.numpy().astype(np.float64), x.numpy().astype(np.float64)
    true = 0
    for picks, row, signal, c in zip(found.picks.numpy(), Z, signals, counts):
        reference = orthogonal_mp(dictionary, signal, n_nonzero_coefs=int(c))
        assert set(picks[:c]) == set(np.nonzero(reference)[0])  # OMP's support at every count
        true += set(picks[:c]) == set(np.nonzero(row)[0])
    assert true >= 0.9 * len(counts)  # the true support, but where the dictionary's coherence misleads OMP too
    code = prefix_code(m.model_, found, torch.from_numpy(counts)).numpy()
    right = [set(p[:c]) == set(np.nonzero(r)[0]) for p, r, c in zip(found.picks.numpy(), Z, counts)]
    np.testing.assert_allclose(code[right], Z[right], atol=0.02)  # with the values refitted
    # the cost falls with every true pick, and not after
    costs = found.costs.numpy()[right]
    rows, c = np.arange(len(costs)), counts[right]
    assert (costs[rows, c] < costs[rows, c - 1] - 10).all()
    assert (np.abs(costs[rows, -1] - costs[rows, c]) < 1).all()


def test_the_count_posterior_finds_each_rows_true_count():
    m, W = known_dictionary(1)
    counts = np.tile(np.arange(1, L0 + 1), 10)
    x = torch.from_numpy(sparse_rows(len(counts), counts, seed=1)) @ W
    x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # below the model's scale
    logits = count_logits(m.model_, pursue(m.model_, x))
    assert logits.shape == (len(counts), L0)
    np.testing.assert_array_equal(m.sparsity_levels[logits.argmax(-1).numpy()], counts)


def test_binary_pursuit_recovers_binary_supports():
    torch.manual_seed(0)
    m = SDLGM(input_dim=D, latent_dim=K, max_sparsity=L0, likelihood="bernoulli", decoder_hidden=(), seed=0)
    assert m.spec.binary
    W = 6 * torch.randn(K, D)
    layer = m.model_.decoder.net[0]
    with torch.no_grad():
        layer.weight.copy_(W.T)
        layer.bias.fill_(-3.0)
    m.model_.eval()
    counts = np.tile(np.arange(1, L0 + 1), 5)
    S = sparse_rows(len(counts), counts, seed=2) != 0
    x = (torch.sigmoid(torch.from_numpy(S.astype(np.float32)) @ W - 3.0) > 0.5).float()
    found = pursue(m.model_, x)
    assert found.values is None
    code = prefix_code(m.model_, found, torch.from_numpy(counts)).numpy()
    assert ((code != 0) == S).mean() > 0.95
    assert set(np.unique(code)) <= {0.0, 1.0}


def test_atoms_are_what_each_dimension_adds():
    m, W = known_dictionary()
    np.testing.assert_allclose(decoder_atoms(m.model_).numpy(), W.numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((120, 3)) @ rng.standard_normal((3, 10))).astype(np.float32)
    return SDLGM(latent_dim=8, max_sparsity=3, likelihood="normal", epochs=3, seed=0, progress=False).fit(X), X


def test_encoding_pursuit_changes_the_codes_not_the_training(fitted):
    m, X = fitted
    amortized = m.encode(X)
    m.set_params(encoding="pursuit")
    try:
        Z, L = m.encode(X), m.predict_sparsity(X)
        R, P = m.reconstruct(X), m.sparsity_posterior(X)
    finally:
        m.set_params(encoding="amortized")
    np.testing.assert_array_equal((Z != 0).sum(1), L)  # the hard code has the count's mode of non-zeros
    np.testing.assert_allclose(P.sum(1), 1, atol=1e-5)
    assert R.shape == X.shape
    assert not np.array_equal(Z, amortized)
    np.testing.assert_array_equal(m.encode(X), amortized)  # the option is read at each call


def test_pursuit_posterior_draws_take_the_pursuits_prefixes(fitted):
    m, X = fitted
    m.set_params(encoding="pursuit")
    try:
        idata = m.posterior(X[:20], num_samples=30, seed=0)
        Z = m.encode(X[:20])
    finally:
        m.set_params(encoding="amortized")
    inclusion = np.asarray(idata.marginals["inclusion_probs"])
    # dimensions outside the pursuit's L0 picks are never drawn; the mode's support is the most included
    assert (inclusion[Z != 0] >= inclusion[Z == 0].max(initial=0) - 1e-9).mean() > 0.9


def test_encoding_is_checked_and_kept_in_checkpoints(fitted, tmp_path):
    m, X = fitted
    with pytest.raises(ConfigError, match="encoding must be one of"):
        SDLGM(encoding="omp").config
    m.set_params(encoding="pursuit")
    try:
        m.save(tmp_path / "m.pt")
    finally:
        m.set_params(encoding="amortized")
    loaded = SDLGM.load(tmp_path / "m.pt")
    assert loaded.encoding == "pursuit"
    m.set_params(encoding="pursuit")
    try:
        np.testing.assert_array_equal(loaded.encode(X), m.encode(X))
    finally:
        m.set_params(encoding="amortized")


def test_wide_layouts_refuse_the_pursuit():
    m = SDLGM(input_dim=D, latent_dim=K, max_sparsity=L0, likelihood="normal", slot_layout="gumbel_topk",
              encoding="pursuit")
    with pytest.raises(ConfigError, match="encoding='pursuit'.*gumbel_topk"):
        pursue(m.model_, torch.zeros(2, D))
