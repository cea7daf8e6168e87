"""How L_i reaches the likelihood: the prefix mixture and the exact ``marginal`` mode, and the diagnostics."""

import numpy as np
import pyro
import pytest
import torch
from pyro_sdlgm import SDLGM, ConfigError, ModelConfig, build_model_and_guide
from pyro_sdlgm.model.distributions import ExpectedLogLikelihood, LevelMarginal
from pyro_sdlgm.inference.elbo import AnalyticKLELBO
from pyro_sdlgm.model.generative import prefix_supports
from pyro_sdlgm.model.spec import OBS_SITE, SPARSITY_SITE, VALUES_SITE, ModelSpec, slot_site
from torch.distributions import Categorical, kl_divergence

from conftest import FAST_FIT

MARGINAL = dict(sparsity_inference="marginal", count_coupling="prefix_mixture")


def make(**overrides):
    config = ModelConfig(**{"input_dim": 10, "latent_dim": 8, "max_sparsity": 3, "decoder_hidden": (16,),
                            "guide": {"name": "mlp_per_slot", "hidden": [16]}, "likelihood": "normal",
                            **overrides})
    return build_model_and_guide(config)


def test_level_marginal_is_a_point_mass_on_q_with_the_categorical_kl():
    logits = torch.randn(4, 5)
    q, p = LevelMarginal(logits), LevelMarginal(torch.randn(5)).expand([4])
    assert q.batch_shape == (4,) and q.event_shape == (5,)
    torch.testing.assert_close(q.rsample().exp(), logits.softmax(-1))
    assert q.rsample((3,)).shape == (3, 4, 5)
    expected = kl_divergence(Categorical(logits=logits), Categorical(logits=p.logits))
    torch.testing.assert_close(kl_divergence(q, p), expected)
    with pytest.raises(NotImplementedError, match="discrete_kl"):
        q.log_prob(q.rsample())


def test_expected_log_likelihood_averages_per_level_log_densities_and_samples_a_level():
    loc = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])  # 1 row, 2 levels, D = 2
    base = pyro.distributions.Normal(loc, 1.0).to_event(1)
    weights = torch.tensor([[0.25, 0.75]])
    mixture = ExpectedLogLikelihood(base, weights)
    x = torch.tensor([[1.0, 2.0]])
    expected = 0.25 * base.log_prob(x.unsqueeze(1))[0, 0] + 0.75 * base.log_prob(x.unsqueeze(1))[0, 1]
    torch.testing.assert_close(mixture.log_prob(x), expected.reshape(1))
    torch.manual_seed(0)
    draws = mixture.sample((4000,))
    assert draws.shape == (4000, 1, 2)
    assert (draws[:, 0, 0] > 5).float().mean().item() == pytest.approx(0.75, abs=0.03)
    torch.testing.assert_close(mixture.mean, torch.tensor([[7.5, 7.5]]))


def test_prefix_supports_are_the_unions_of_the_first_slots():
    slots = torch.eye(4)[[2, 0, 3]].unsqueeze(0)  # slots pick 2, 0, 3
    supports = prefix_supports(ModelSpec(5, 4, 3), slots)
    assert supports[0].tolist() == [[0, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    with_zero = prefix_supports(ModelSpec(5, 4, 3, include_zero=True), slots)
    assert with_zero.shape == (1, 4, 4) and with_zero[0, 0].sum() == 0


def test_marginal_elbo_is_the_exact_expectation_over_levels():
    """loss = -[sum_l q(l) log p(x | z_l) - KL(q(L) || p(L)) - sum_j P(L >= j) KL_j - KL_values]."""
    model, guide = make(**MARGINAL)
    x = torch.randn(2, 10)
    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(3)
        loss = AnalyticKLELBO().differentiable_loss(model, guide, x).item()
        torch.manual_seed(3)
        guide_trace = pyro.poutine.trace(guide).get_trace(x)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x)
    q = guide.amortize(x).sparsity_logits.softmax(-1)  # (2, 3)
    gates = q.flip(-1).cumsum(-1).flip(-1)  # P(L >= j)
    slots = torch.stack([guide_trace.nodes[slot_site(j)]["value"].exp() for j in range(3)], -2)
    values = guide_trace.nodes[VALUES_SITE]["value"]
    recon = 0.0
    for level in range(3):
        code = (1 - torch.prod(1 - slots[:, : level + 1], dim=-2)) * values
        recon = recon + q[:, level] * model.obs_dist(code).log_prob(x)
    kl_slots = sum(gates[:, j] * kl_divergence(guide_trace.nodes[slot_site(j)]["fn"], model_trace.nodes[slot_site(j)]["fn"])
                   for j in range(3))
    kl_level = kl_divergence(Categorical(probs=q), Categorical(logits=model.sparsity_prior.logits()))
    kl_values = kl_divergence(guide_trace.nodes[VALUES_SITE]["fn"], model_trace.nodes[VALUES_SITE]["fn"])
    elbo = (recon - kl_level - kl_slots - kl_values).sum()
    assert loss == pytest.approx(-elbo.item(), rel=1e-5)
    obs = model_trace.nodes[OBS_SITE]["fn"]
    assert isinstance(getattr(obs, "base_dist", obs), ExpectedLogLikelihood)  # the plate may wrap it
    assert isinstance(guide_trace.nodes[SPARSITY_SITE]["fn"], LevelMarginal)


def test_prefix_mixture_with_a_hard_count_is_the_likelihood_of_that_count():
    model, guide = make(count_coupling="prefix_mixture")
    x = torch.randn(3, 10)
    torch.manual_seed(0)
    guide_trace = pyro.poutine.trace(guide).get_trace(x, tau_sparsity=1e-3)  # nearly one-hot L_i
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x, tau_sparsity=1e-3)
    level = guide_trace.nodes[SPARSITY_SITE]["value"].argmax(-1)
    slots = torch.stack([guide_trace.nodes[slot_site(j)]["value"].exp() for j in range(3)], -2)
    code = prefix_supports(model.spec, slots)[torch.arange(3), level] * guide_trace.nodes[VALUES_SITE]["value"]
    torch.testing.assert_close(model_trace.nodes[OBS_SITE]["fn"].log_prob(x), model.obs_dist(code).log_prob(x),
                               rtol=1e-3, atol=1e-3)


def test_invalid_combinations_are_refused():
    with pytest.raises(ConfigError, match="count_coupling='prefix_mixture'"):
        ModelSpec(5, 6, 2, sparsity_inference="marginal")
    with pytest.raises(ConfigError, match="objective='discrete_kl'"):
        ModelSpec(5, 6, 2, sparsity_inference="marginal", count_coupling="prefix_mixture", objective="relaxed")
    with pytest.raises(ConfigError, match="enumerate"):
        ModelSpec(5, 6, 2, sparsity_inference="enumerate", objective="relaxed", count_coupling="prefix_mixture")
    with pytest.raises(ConfigError, match="count_coupling must be one of"):
        ModelSpec(5, 6, 2, count_coupling="soft")


@pytest.mark.parametrize("options", [MARGINAL, dict(count_coupling="prefix_mixture"),
                                     dict(MARGINAL, slot_layout="joint"), dict(MARGINAL, binary=True)])
def test_every_coupling_trains_and_keeps_the_cap(binary_data, options):
    model = SDLGM(12, 6, 3, decoder_hidden=[8], guide={"name": "mlp_per_slot", "hidden": [8]}, **options)
    history = model.fit(binary_data, **{**FAST_FIT, "epochs": 3}).history_
    assert all(np.isfinite(r["train_loss"]) for r in history)
    metrics = model.evaluate(binary_data)
    assert np.isfinite(metrics["elbo"]) and metrics["max_nnz"] <= 3
    assert model.posterior(binary_data[:4], num_samples=5, posterior_predictive=True) is not None


def test_diagnose_reports_per_prefix_costs_consistent_with_the_hard_codes(binary_data):
    model = SDLGM(12, 6, 3, decoder_hidden=[8], guide={"name": "mlp_per_slot", "hidden": [8]},
                  count_estimate="amortized")  # hard codes then use the count network's L_hat
    model.fit(binary_data, **{**FAST_FIT, "epochs": 3})
    d = model.diagnose(binary_data)
    n = len(binary_data)
    assert d["prefix_recon"].shape == d["prefix_slot_kl"].shape == (n, 3)
    np.testing.assert_array_equal(d["l_hat"], model.predict_sparsity(binary_data))
    with torch.no_grad():  # R at L_hat is the hard code's reconstruction
        hard = -model.model_.likelihood.dist(model.model_.decoder(torch.as_tensor(model.encode(binary_data)))).log_prob(
            torch.as_tensor(binary_data)).numpy()
    np.testing.assert_allclose(d["prefix_recon"][np.arange(n), d["l_hat"] - 1], hard, rtol=1e-5, atol=1e-4)
    total = d["prefix_recon"] + d["prefix_slot_kl"]
    np.testing.assert_array_equal(d["best_count"], total.argmin(1) + 1)
    assert np.all(np.diff(d["prefix_slot_kl"], axis=1) >= -1e-6)  # cumulative KL of non-negative terms
    assert d["summary"]["l_hat_equals_best"] == pytest.approx(float((d["l_hat"] == d["best_count"]).mean()))
    assert d["dimension_effect"].shape == d["dimension_usage"].shape == (6,)
    np.testing.assert_allclose(d["dimension_usage"], (model.encode(binary_data) != 0).mean(0))


def test_refined_count_is_the_coordinate_ascent_posterior_of_the_prefix_costs(binary_data, tmp_path):
    model = SDLGM(12, 6, 3, decoder_hidden=[8], guide={"name": "mlp_per_slot", "hidden": [8]},
                  count_estimate="refined", sparsity_prior={"name": "truncated_geometric", "p": 0.3})
    model.fit(binary_data, **{**FAST_FIT, "epochs": 3})
    d = model.diagnose(binary_data)
    log_prior = model.model_.sparsity_prior.logits().log_softmax(-1).detach().numpy()
    expected = log_prior - d["prefix_recon"] - d["prefix_slot_kl"]
    expected = np.exp(expected - expected.max(1, keepdims=True))
    np.testing.assert_allclose(model.sparsity_posterior(binary_data), expected / expected.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    counts = model.predict_sparsity(binary_data)
    np.testing.assert_array_equal(counts, expected.argmax(1) + 1)
    assert not np.array_equal(counts, d["l_hat"])  # diagnose's L_hat is the count network's, not the refined one
    np.testing.assert_array_equal((model.encode(binary_data) != 0).sum(1), counts)
    assert model.evaluate(binary_data)["mean_nnz"] == pytest.approx(counts.mean())
    model.save(tmp_path / "m.pt")
    np.testing.assert_array_equal(SDLGM.load(tmp_path / "m.pt").predict_sparsity(binary_data), counts)
    amortized = SDLGM(12, 6, 3, decoder_hidden=[8], guide={"name": "mlp_per_slot", "hidden": [8]},
                      count_estimate="amortized")
    amortized.fit(binary_data, **{**FAST_FIT, "epochs": 3})
    assert not np.allclose(amortized.sparsity_posterior(binary_data), model.sparsity_posterior(binary_data))
    with pytest.raises(ConfigError, match="count_estimate"):
        SDLGM(12, 6, 3, count_estimate="mode").config
