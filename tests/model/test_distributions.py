"""ExpRelaxedCategorical: shapes in plates, expand, support, finiteness at low temperature, gradients."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro_sdlgm import ConfigError, ExpRelaxedCategorical
from pyro_sdlgm.model.distributions import log_simplex


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 4)])
def test_shapes_and_support(batch_shape):
    logits = torch.randn(*batch_shape, 5)
    d = ExpRelaxedCategorical(0.5, logits=logits)
    assert d.batch_shape == batch_shape and d.event_shape == (5,)
    x = d.rsample((7,))
    assert x.shape == (7, *batch_shape, 5)
    assert log_simplex.check(x).all()
    assert torch.allclose(x.exp().sum(-1), torch.ones(()), atol=1e-5)
    assert d.log_prob(x).shape == (7, *batch_shape)


def test_expand_and_plates():
    d = ExpRelaxedCategorical(0.7, logits=torch.zeros(6))
    expanded = d.expand([4, 3])
    assert isinstance(expanded, ExpRelaxedCategorical)
    assert expanded.batch_shape == (4, 3) and expanded.event_shape == (6,)
    assert float(expanded.temperature) == pytest.approx(0.7)

    def model():
        with pyro.plate("outer", 4, dim=-2), pyro.plate("inner", 3, dim=-1):
            return pyro.sample("c", ExpRelaxedCategorical(0.7, logits=torch.zeros(6)))

    trace = pyro.poutine.trace(model).get_trace()
    site = trace.nodes["c"]
    assert site["value"].shape == (4, 3, 6)
    trace.compute_log_prob()
    assert site["log_prob"].shape == (4, 3)
    # as a slot site with to_event, inside one plate
    slots = ExpRelaxedCategorical(0.7, logits=torch.zeros(6)).expand([5, 2]).to_event(1)
    assert slots.batch_shape == (5,) and slots.event_shape == (2, 6)


def test_support_rejects_non_normalized_values():
    value = torch.log(torch.tensor([0.5, 0.6]))
    assert not log_simplex.check(value)
    d = ExpRelaxedCategorical(0.5, logits=torch.zeros(2), validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(value)


def test_finite_log_density_low_temperature_large_K():
    """The trap measured for us: RelaxedOneHotCategorical underflows at tau=0.1, K large."""
    torch.manual_seed(0)
    K = 2000
    logits = torch.randn(16, K) * 3
    relaxed = dist.RelaxedOneHotCategorical(torch.tensor(0.1), logits=logits)
    sample = relaxed.rsample()
    assert (sample == 0).any(), "the plain relaxation should underflow here (the trap we avoid)"
    d = ExpRelaxedCategorical(0.1, logits=logits)
    y = d.rsample()
    lp = d.log_prob(y)
    assert torch.isfinite(y).all() and torch.isfinite(lp).all()


def test_gradients_flow_through_rsample_and_log_prob():
    logits = torch.randn(8, 30, requires_grad=True)
    d = ExpRelaxedCategorical(0.2, logits=logits)
    y = d.rsample()
    loss = (y.exp() * torch.arange(30.0)).sum() + d.log_prob(y).sum()
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_log_prob_matches_change_of_variables():
    """exp(y) ~ RelaxedOneHotCategorical: the densities differ by the log-Jacobian of exp.

    torch scores the relaxed one-hot as the image of ExpConcrete under the elementwise
    ``exp``, whose log-Jacobian is ``sum_k y_k``.
    """
    torch.manual_seed(1)
    logits = torch.randn(5)
    d = ExpRelaxedCategorical(0.8, logits=logits)
    y = d.sample((4,))
    relaxed = dist.RelaxedOneHotCategorical(torch.tensor(0.8), logits=logits)
    expected = relaxed.log_prob(y.exp()) + y.sum(-1)
    assert torch.allclose(d.log_prob(y), expected, atol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "hot", True])
def test_bad_temperature_rejected(bad):
    with pytest.raises(ConfigError, match="temperature"):
        ExpRelaxedCategorical(bad, logits=torch.zeros(3))


def test_per_example_temperature_rejected():
    with pytest.raises(ConfigError, match="scalar"):
        ExpRelaxedCategorical(torch.ones(4, 1), logits=torch.zeros(4, 3))


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 300),
    n=st.integers(1, 5),
    tau=st.floats(0.05, 5.0),
    scale=st.floats(0.0, 20.0),
    seed=st.integers(0, 2**16),
)
def test_samples_always_in_support_and_scored_finitely(k, n, tau, scale, seed):
    torch.manual_seed(seed)
    d = ExpRelaxedCategorical(tau, logits=torch.randn(n, k) * scale)
    y = d.rsample()
    assert log_simplex.check(y).all()
    assert torch.isfinite(d.log_prob(y)).all()
