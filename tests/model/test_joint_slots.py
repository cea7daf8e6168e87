"""The joint slot layout (one site for the L0 slots) is the per-slot layout's distribution, batched."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

from pyro_sdlgm import SDLGM, SDLGMClassifier
from pyro_sdlgm.model.distributions import DiscreteKLJointSlots, JointSlots, log_simplex
from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.spec import SLOTS_SITE, ModelSpec
from pyro_sdlgm.inference.trainer import make_elbo

KWARGS = dict(num_data=300, tau_sparsity=0.6, tau_support=0.3, kl_weight=0.9)
SMALL = dict(latent_dim=9, max_sparsity=4, decoder_hidden=(16,))


def loss_and_grads(model, guide, *args, seed=7, **extra):
    with pyro.settings.context(module_local_params=True):
        module = make_elbo(model.spec)(model, guide)
        params = list(module.parameters())
        pyro.set_rng_seed(seed)
        loss = module(*args, **KWARGS, **extra)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, grads


def assert_close(a, b):
    """Equal up to float32 rounding: the layouts order their sums and normalizations differently."""
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    for ga, gb in zip(a[1], b[1], strict=True):
        assert (ga is None) == (gb is None)
        if ga is not None:  # entries far below the tensor's largest gradient carry its rounding
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4 * float(ga.abs().max()))


@pytest.mark.parametrize("options", [
    dict(),
    dict(objective="relaxed"),  # Monte Carlo with Concrete densities: JointSlots.log_prob
    dict(slot_selection="independent"),
    dict(binary=True, guide={"name": "mlp_shared_slots", "hidden": [16]}),
    dict(include_zero=True, sparsity_prior="learned", support_prior="learned"),
])
def test_joint_layout_gives_the_per_slot_loss_and_gradients(binary_data, options):
    per_slot = SDLGM(input_dim=12, **SMALL, **options)
    joint = SDLGM(input_dim=12, **SMALL, slot_layout="joint", **options)
    joint.model_.load_state_dict(per_slot.model_.state_dict())
    joint.guide_.load_state_dict(per_slot.guide_.state_dict())
    x = torch.as_tensor(binary_data[:50])
    # same random numbers, same draws: the losses agree up to float rounding
    assert_close(loss_and_grads(per_slot.model_, per_slot.guide_, x), loss_and_grads(joint.model_, joint.guide_, x))


@pytest.mark.parametrize("shortlist", [False, True])
def test_joint_layout_gives_the_per_slot_loss_for_the_classifier(shortlist):
    torch.manual_seed(0)
    x, y = torch.randn(30, 6), torch.zeros(30, 12)
    y[torch.arange(30), torch.randint(0, 12, (30,))] = 1
    options = dict(input_dim=6, hidden=(16,), per_slot=not shortlist, num_candidates=8 if shortlist else None,
                   fit_objective="elbo")
    reference, joint = SDLGMClassifier(12, 4, **options), SDLGMClassifier(12, 4, slot_layout="joint", **options)
    for clf in (reference, joint):
        torch.manual_seed(1)
        clf.model_, clf.guide_ = clf._networks(clf.config)
    extra = {}
    if shortlist:
        torch.manual_seed(2)
        extra["candidates"] = reference.model_.candidates(x, y, 8)
    assert_close(loss_and_grads(reference.model_, reference.guide_, x, y, **extra),
                 loss_and_grads(joint.model_, joint.guide_, x, y, **extra))


def test_the_draws_are_the_per_slot_draws(binary_data):
    per_slot = SDLGM(input_dim=12, **SMALL)
    joint = SDLGM(input_dim=12, **SMALL, slot_layout="joint")
    joint.guide_.load_state_dict(per_slot.guide_.state_dict())
    x = torch.as_tensor(binary_data[:20])
    traces = []
    for m in (per_slot, joint):
        pyro.set_rng_seed(4)
        with pyro.settings.context(module_local_params=True):
            traces.append(poutine.trace(m.guide_).get_trace(x, **KWARGS))
    slots = torch.stack([traces[0].nodes[name]["value"] for name in per_slot.spec.slot_sites], -2)
    torch.testing.assert_close(traces[1].nodes[SLOTS_SITE]["value"], slots, rtol=1e-5, atol=1e-5)


def test_without_replacement_draws_take_distinct_dimensions_and_score_finitely():
    torch.manual_seed(0)
    logits = torch.randn(200, 1, 6) * 3
    gates = torch.rand(200, 5).sort(-1, descending=True).values
    d = JointSlots(0.1, logits, gates)
    value = d.rsample()
    assert value.shape == (200, 5, 6) == d.batch_shape + d.event_shape
    assert bool(d.support.check(value).all()) and bool(log_simplex.check(value).all())
    picks = value.argmax(-1)
    assert all(len(set(row.tolist())) == 5 for row in picks)  # five slots, five dimensions
    assert torch.isfinite(d.log_prob(value)).all() and d.log_prob(value).shape == (200,)
    # the argmax of each slot follows the categorical of its masked logits (Gumbel-max)
    first = torch.bincount(JointSlots(1.0, logits[:1].expand(4000, 1, 6), gates[:1].expand(4000, 5))
                           .rsample().argmax(-1)[:, 0], minlength=6) / 4000
    torch.testing.assert_close(first, logits[0, 0].softmax(-1), atol=0.03, rtol=0)


def test_log_prob_is_the_gated_sum_of_the_slots_exp_concrete_densities():
    from pyro_sdlgm.model.distributions import ExpRelaxedCategorical
    from pyro_sdlgm.model.support import MASKED_LOGIT

    torch.manual_seed(1)
    logits, gates = torch.randn(3, 4, 7), torch.tensor([[1.0, 0.6, 0.2, 0.0]]).expand(3, 4)
    d = JointSlots(0.5, logits, gates)
    value = d.rsample()
    picks = value.argmax(-1)
    expected = torch.zeros(3)
    for index in range(4):
        masked = logits[:, index].clone()
        for earlier in range(index):
            masked[torch.arange(3), picks[:, earlier]] = MASKED_LOGIT
        expected += gates[:, index].clamp(min=1e-6) * ExpRelaxedCategorical(0.5, logits=masked).log_prob(value[:, index])
    torch.testing.assert_close(d.log_prob(value), expected, rtol=1e-5, atol=1e-4)


def test_analytic_kl_needs_the_guide_draw():
    logits, gates = torch.randn(2, 1, 5), torch.ones(2, 3)
    q, p = DiscreteKLJointSlots(0.5, logits, gates), DiscreteKLJointSlots(0.5, torch.zeros(2, 1, 5), gates)
    with pytest.raises(RuntimeError, match="guide's draw"):  # not NotImplementedError: no silent fallback
        torch.distributions.kl_divergence(q, p)
    q.rsample((3,))
    with pytest.raises(RuntimeError, match="sample_shape"):
        torch.distributions.kl_divergence(q, p)
    q.rsample()
    kl = torch.distributions.kl_divergence(q, p)
    assert kl.shape == (2,) and bool((kl >= 0).all())


def test_a_replayed_guide_is_refused_rather_than_scored_with_another_objective(binary_data):
    from pyro_sdlgm.inference.elbo import AnalyticKLELBO

    model = SDLGM(input_dim=12, **SMALL, slot_layout="joint")
    x = torch.as_tensor(binary_data[:10])
    with pyro.settings.context(module_local_params=True):
        trace = poutine.trace(model.guide_).get_trace(x, **KWARGS)
        with pytest.raises(RuntimeError, match="replayed or conditioned"):
            AnalyticKLELBO().differentiable_loss(model.model_, poutine.replay(model.guide_, trace=trace), x, **KWARGS)


def test_expand_and_shape_errors():
    d = JointSlots(0.5, torch.randn(1, 2, 4), torch.ones(1, 2))
    assert d.expand((3,)).rsample().shape == (3, 2, 4)
    with pytest.raises(ConfigError, match="logits must have shape"):
        JointSlots(0.5, torch.randn(2, 3, 4), torch.ones(2, 2))


def test_joint_layout_needs_relaxed_sparsity():
    with pytest.raises(ConfigError, match="slot_layout='joint' does not take sparsity_inference='enumerate'"):
        ModelSpec(5, 6, 2, sparsity_inference="enumerate", objective="relaxed", slot_layout="joint")
    with pytest.raises(ConfigError, match="unknown slot layout .fused.; known slot layouts: gumbel_topk, joint, per_slot"):
        ModelSpec(5, 6, 2, slot_layout="fused")


def test_a_joint_model_trains_saves_and_reloads(binary_data, tmp_path):
    model = SDLGM(input_dim=12, **SMALL, slot_layout="joint")
    history = model.fit(binary_data, epochs=2, batch_size=32, progress=False, seed=0).history_
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert (model.encode(binary_data) != 0).sum(1).max() <= 4
    model.save(tmp_path / "m.pt")
    assert SDLGM.load(tmp_path / "m.pt").spec.slot_layout == "joint"
    idata = model.posterior(binary_data[:5], num_samples=30)
    assert (idata.posterior["nnz"] == idata.posterior["sparsity"]).all()  # without replacement: L_i distinct


def test_evaluate_reports_the_same_gated_kl_for_both_layouts(binary_data):
    """The slot KL that evaluate() reports is the training objective's: each slot scaled by its gate."""
    from pyro_sdlgm.analysis.evaluation import elbo_terms
    from pyro_sdlgm.inference.schedules import final_schedule

    per_slot = SDLGM(input_dim=12, **SMALL)
    joint = SDLGM(input_dim=12, **SMALL, slot_layout="joint")
    joint.model_.load_state_dict(per_slot.model_.state_dict())
    joint.guide_.load_state_dict(per_slot.guide_.state_dict())
    x = torch.as_tensor(binary_data[:30])
    schedule = final_schedule(None)
    results = []
    for m in (per_slot, joint):
        pyro.set_rng_seed(3)
        terms, guide_trace = elbo_terms(m.model_, m.guide_, x, schedule)
        results.append(terms)
    torch.testing.assert_close(results[0]["kl_slots"], results[1]["kl_slots"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0]["elbo"], results[1]["elbo"], rtol=1e-5, atol=1e-4)
    # and it equals the (unscaled, num_data = N) training loss of the same draw
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(3)
        loss = make_elbo(per_slot.spec)(per_slot.model_, per_slot.guide_)(x, **schedule)
    torch.testing.assert_close(-results[0]["elbo"].sum(), loss, rtol=1e-5, atol=1e-3)
