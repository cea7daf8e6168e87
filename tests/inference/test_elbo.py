"""AnalyticKLELBO computes exactly what TraceMeanField_ELBO computes, with fewer log-densities."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_sdlgm import SDLGM, SDLGMClassifier
from pyro_sdlgm.inference.elbo import AnalyticKLELBO

KWARGS = dict(num_data=500, tau_sparsity=0.7, tau_support=0.4, kl_weight=0.8)


def loss_and_grads(elbo, model, guide, *args, seed=3):
    with pyro.settings.context(module_local_params=True):
        module = elbo(model, guide)
        params = [p for p in module.parameters()]
        pyro.set_rng_seed(seed)
        loss = module(*args, **KWARGS)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, grads


def assert_same(a, b):
    assert torch.equal(a[0], b[0])
    for ga, gb in zip(a[1], b[1], strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)


@pytest.mark.parametrize("options", [
    dict(),  # defaults: per-slot guide, slots without replacement, Normal values
    dict(binary=True, slot_selection="independent", guide={"name": "mlp_shared_slots", "hidden": [16]}),
    dict(value_prior="laplace", include_zero=True),  # Normal guide vs Laplace prior: no analytic KL, Monte Carlo
])
def test_unsupervised_loss_and_gradients_equal_trace_mean_field(binary_data, options):
    options = {"decoder_hidden": (16,), "guide": {"name": "mlp_per_slot", "hidden": [16]}, **options}
    model = SDLGM(input_dim=12, latent_dim=9, max_sparsity=3, **options)
    x = torch.as_tensor(binary_data[:40])
    assert_same(loss_and_grads(TraceMeanField_ELBO(), model.model_, model.guide_, x),
                loss_and_grads(AnalyticKLELBO(), model.model_, model.guide_, x))
    # and the non-differentiable estimate (validation losses)
    pyro.set_rng_seed(5)
    expected = TraceMeanField_ELBO().loss(model.model_, model.guide_, x, **KWARGS)
    pyro.set_rng_seed(5)
    assert AnalyticKLELBO().loss(model.model_, model.guide_, x, **KWARGS) == expected


def test_multilabel_loss_and_gradients_equal_trace_mean_field():
    torch.manual_seed(0)
    x, y = torch.randn(30, 6), (torch.rand(30, 8) < 0.3).float()
    clf = SDLGMClassifier(8, 4, input_dim=6, hidden=(16,), fit_objective="elbo", per_slot=True)
    model, guide = clf._networks(clf.config)
    assert_same(loss_and_grads(TraceMeanField_ELBO(), model, guide, x, y),
                loss_and_grads(AnalyticKLELBO(), model, guide, x, y))


def test_only_observed_sites_are_scored():
    model = SDLGM(input_dim=12, latent_dim=9, max_sparsity=3, decoder_hidden=(16,))
    x = torch.rand(10, 12).round()
    with pyro.settings.context(module_local_params=True):
        model_trace, guide_trace = AnalyticKLELBO()._get_trace(model.model_, model.guide_, (x,), KWARGS)
    scored = [name for name, site in model_trace.nodes.items() if site["type"] == "sample" and "log_prob" in site]
    assert scored == ["obs"]
    assert not any("score_parts" in site for site in guide_trace.nodes.values())


def test_a_guide_without_reparameterization_is_refused():
    def model_fn():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide_fn():
        pyro.sample("z", dist.Bernoulli(0.3))

    with pytest.raises(NotImplementedError, match="'z' is not reparameterized"):
        AnalyticKLELBO().differentiable_loss(model_fn, guide_fn)


def test_auxiliary_guide_sites_count_their_entropy_as_in_pyro():
    def model_fn():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide_fn():
        a = pyro.sample("a", dist.Normal(0.0, 2.0), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Normal(a * 0.1, 1.5))

    for seed in range(3):
        pyro.set_rng_seed(seed)
        expected = TraceMeanField_ELBO().differentiable_loss(model_fn, guide_fn)
        pyro.set_rng_seed(seed)
        assert torch.equal(AnalyticKLELBO().differentiable_loss(model_fn, guide_fn), expected)
