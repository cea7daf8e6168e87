"""Slot estimators (``pyro_sdlgm.model.slot_estimators``): the registry, the forward values they give the
code, and the implicit-MLE backward pass against the exact gradient of a linear loss."""

import pyro
import pytest
import torch
import torch.nn.functional as F

from pyro_sdlgm import SDLGM, ConfigError, UnknownComponentError
from pyro_sdlgm import ModelConfig
from pyro_sdlgm.model.distributions import DiscreteKLExpRelaxedCategorical
from pyro_sdlgm.model.slot_estimators import IMLE, SLOT_ESTIMATORS, SlotEstimator, build_slot_estimator, register_slot_estimator
from pyro_sdlgm.estimators.sdlgm import build_model_and_guide
from pyro_sdlgm.model.spec import ModelSpec
from pyro_sdlgm.inference.trainer import make_elbo


def test_builtins_are_registered():
    assert {"relaxed", "straight_through", "imle"} <= set(SLOT_ESTIMATORS.names())


def test_unknown_estimator_names_the_known_ones():
    with pytest.raises(UnknownComponentError, match="'gumbel'.*imle.*relaxed"):
        ModelSpec(input_dim=3, latent_dim=4, max_sparsity=2, slot_estimator="gumbel")


@pytest.mark.parametrize("step", [0.0, -1.0, float("inf"), "big", True])
def test_imle_refuses_a_bad_step(step):
    with pytest.raises(ConfigError, match="imle step"):
        ModelSpec(input_dim=3, latent_dim=4, max_sparsity=2, slot_estimator={"name": "imle", "step": step})


def test_imle_refuses_an_unknown_option():
    with pytest.raises(ConfigError, match="accepted options: \\['step'\\]"):
        ModelSpec(input_dim=3, latent_dim=4, max_sparsity=2, slot_estimator={"name": "imle", "lam": 2.0})


@pytest.mark.parametrize("modes", [dict(objective="relaxed"), dict(slot_layout="joint")])
def test_imle_needs_the_discrete_kl_and_per_slot_sites(modes):
    with pytest.raises(ConfigError, match="needs objective='discrete_kl'.*slot_layout='per_slot'"):
        ModelSpec(input_dim=3, latent_dim=4, max_sparsity=2, slot_estimator="imle", **modes)


def test_builds_are_cached_per_spec():
    assert build_slot_estimator("imle") is build_slot_estimator("imle")
    assert build_slot_estimator({"name": "imle", "step": 2.0}).step == 2.0
    assert build_slot_estimator({"name": "imle", "step": 2.0}) is not build_slot_estimator("imle")


def _site_value(estimator, seed=0, logits=None):
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(1)) if logits is None else logits
    site = build_slot_estimator(estimator).distribution(DiscreteKLExpRelaxedCategorical, 0.5, logits)
    torch.manual_seed(seed)
    return site.rsample()


def test_imle_draws_the_same_values_as_the_relaxed_site():
    torch.testing.assert_close(_site_value("imle"), _site_value("relaxed"))


@pytest.mark.parametrize("name", ["straight_through", "imle"])
def test_hard_estimators_give_the_code_exact_one_hots(name):
    value = _site_value(name)
    selection = build_slot_estimator(name).selection(value)
    torch.testing.assert_close(selection, F.one_hot(value.argmax(-1), 7).float())


def _imle_linear_loss_error(step):
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -0.3, 1.0, 0.0, -1.0], requires_grad=True)
    cost = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    n = 200_000
    estimator = build_slot_estimator({"name": "imle", "step": step})
    z = estimator.selection(estimator.distribution(DiscreteKLExpRelaxedCategorical, 1.0, logits.expand(n, 5)).rsample())
    (z @ cost).mean().backward()
    probs = logits.detach().softmax(-1)
    exact = probs * (cost - probs @ cost)
    return float((logits.grad - exact).norm() / exact.norm()), float(F.cosine_similarity(logits.grad, exact, dim=0))


def test_imle_gradient_matches_the_exact_gradient_of_a_linear_loss():
    """For ``f(z) = c . z`` with ``z ~ Categorical(logits)`` the exact gradient of ``E f`` is
    ``p * (c - p . c)``; I-MLE's mean is a finite difference of the mean map along ``-c``, so it
    agrees up to O(step) and Monte-Carlo error, and its bias grows with the step."""
    small_error, small_cosine = _imle_linear_loss_error(0.1)
    large_error, _ = _imle_linear_loss_error(1.0)
    assert small_error < 0.15 and small_cosine > 0.99
    assert large_error > 2 * small_error


def _slot_head_gradient(slot_estimator, seed=0):
    config = ModelConfig(input_dim=6, latent_dim=5, max_sparsity=3, likelihood="normal", guide="mlp_per_slot",
                         slot_estimator=slot_estimator, binary=False)
    model, guide = build_model_and_guide(config)
    torch.manual_seed(seed)
    x = torch.randn(8, 6)
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=True):
        loss = make_elbo(model.spec)(model, guide)(x, tau_sparsity=0.5, tau_support=0.5)
    loss.backward()
    return guide.encoder.slot_head.weight.grad


def test_imle_gradient_reaches_the_guide_slot_head_through_pyro():
    gradient = _slot_head_gradient("imle")
    assert gradient is not None and gradient.abs().sum() > 0
    assert not torch.allclose(gradient, _slot_head_gradient("straight_through"))


def test_a_user_estimator_is_used_by_name():
    calls = []

    @register_slot_estimator("test_recording")
    class Recording(SlotEstimator):
        def selection(self, value):
            calls.append(value.shape)
            return value.exp()

    try:
        model = SDLGM(input_dim=4, latent_dim=5, max_sparsity=2, slot_estimator="test_recording")
        model.fit(torch.rand(16, 4).round().numpy(), epochs=1, batch_size=8, seed=0, progress=False)
        assert calls and all(shape[-1] == 5 for shape in calls)
    finally:
        SLOT_ESTIMATORS._factories.pop("test_recording")


def test_imle_trains_to_a_finite_loss():
    torch.manual_seed(0)
    x = (torch.rand(64, 6) > 0.5).float().numpy()
    history = SDLGM(input_dim=6, latent_dim=5, max_sparsity=2, slot_estimator=IMLE.__name__.lower()).fit(
        x, epochs=2, batch_size=16, seed=0, progress=False).history_
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)


def test_option_values_that_compare_equal_are_not_confused():
    assert build_slot_estimator({"name": "imle", "step": 1}).step == 1.0
    with pytest.raises(ConfigError, match="imle step"):
        build_slot_estimator({"name": "imle", "step": True})


def test_imle_never_moves_to_a_dimension_an_earlier_slot_took():
    from pyro_sdlgm.model.support import MASKED_LOGIT

    logits = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    logits[:, :2] = MASKED_LOGIT  # taken by earlier slots
    logits.requires_grad_(True)
    estimator = build_slot_estimator({"name": "imle", "step": 1e6})  # a step large enough to reach them
    z = estimator.selection(estimator.distribution(DiscreteKLExpRelaxedCategorical, 0.5, logits).rsample())
    (z * torch.tensor([-1e3, -1e3, 1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert torch.all(logits.grad[:, :2] == 0)
    torch.testing.assert_close(logits.grad.sum(-1), torch.zeros(64))
