"""Model and guide as Pyro programs: matching traces, minibatch scaling, both training routes."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample
from pyro_sdlgm import ModelConfig, build_model_and_guide
from pyro_sdlgm.model.spec import OBS_SITE, SPARSITY_SITE, VALUES_SITE


def make(**overrides):
    config = ModelConfig(**{"input_dim": 10, "latent_dim": 8, "max_sparsity": 3, "decoder_hidden": (16,),
                            "guide": {"name": "mlp_per_slot", "hidden": [16]}, "binary": False, **overrides})
    return build_model_and_guide(config)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("guide", ["mlp_per_slot", "mlp_shared_slots"])
@pytest.mark.parametrize("include_zero", [False, True])
def test_model_and_guide_traces_match(binary, guide, include_zero):
    model, guide_module = make(binary=binary, guide={"name": guide, "hidden": [16]}, include_zero=include_zero)
    x = torch.rand(5, 10).round()
    kwargs = dict(tau_sparsity=0.5, tau_support=0.3)
    with pyro.settings.context(module_local_params=True):
        guide_trace = pyro.poutine.trace(guide_module).get_trace(x, **kwargs)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x, **kwargs)
    slots = ["slot_1", "slot_2", "slot_3"]
    latent = [SPARSITY_SITE, *slots] + ([] if binary else [VALUES_SITE])
    guide_sites = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]
    model_sites = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]
    assert guide_sites == latent
    assert model_sites == latent + [OBS_SITE]
    num_levels = 4 if include_zero else 3
    shapes = {SPARSITY_SITE: (5, num_levels), VALUES_SITE: (5, 8), **{name: (5, 8) for name in slots}}
    for name in latent:
        assert guide_trace.nodes[name]["value"].shape == shapes[name]
        assert model_trace.nodes[name]["value"] is guide_trace.nodes[name]["value"]
        assert guide_trace.nodes[name]["fn"].batch_shape == model_trace.nodes[name]["fn"].batch_shape == (5,)
        assert guide_trace.nodes[name]["fn"].event_shape == model_trace.nodes[name]["fn"].event_shape
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    for trace in (model_trace, guide_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                assert site["log_prob"].shape == (5,)
                assert torch.isfinite(site["log_prob"]).all(), name


def test_prior_sampling_generates_data():
    model, _ = make()
    with pyro.settings.context(module_local_params=True):
        trace = pyro.poutine.trace(model).get_trace(batch_size=7)
    assert trace.nodes[OBS_SITE]["value"].shape == (7, 10)
    assert set(trace.nodes[OBS_SITE]["value"].unique().tolist()) <= {0.0, 1.0}


def test_minibatch_elbo_is_scaled_to_the_dataset():
    """With num_data=N, the minibatch loss estimates the N-row ELBO: it scales linearly in N."""
    model, guide = make()
    x = torch.rand(4, 10).round()
    with pyro.settings.context(module_local_params=True):
        elbo = Trace_ELBO()(model, guide)
        torch.manual_seed(3)
        small = elbo(x, num_data=4)
        torch.manual_seed(3)
        large = elbo(x, num_data=400)
    assert large.item() == pytest.approx(100 * small.item(), rel=1e-5)


def test_enumerated_elbo_equals_the_exact_expectation_over_levels():
    """TraceEnum_ELBO sums over L exactly:
    loss = -sum_l q(l|x) [log p(x, l, c, v) - log q(l|x) - log q(c, v|x)], slot terms gated by 1[l >= slot]."""
    model, guide = make(sparsity_inference="enumerate", objective="relaxed")
    x = torch.rand(1, 10).round()

    def scaled_log_prob(trace, names):
        return sum(trace.nodes[n]["scale"] * trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]) for n in names)

    with pyro.settings.context(module_local_params=True):
        torch.manual_seed(5)
        enumerated = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x).item()
        # the same slot and value draws: the enumerated site consumes no randomness
        torch.manual_seed(5)
        first = pyro.poutine.trace(pyro.poutine.condition(guide, data={SPARSITY_SITE: torch.tensor([0])})).get_trace(x)
        draws = {name: first.nodes[name]["value"] for name in (*model.spec.slot_sites, VALUES_SITE)}
        log_q_levels = guide.amortize(x).sparsity_logits.log_softmax(-1)[0]
        elbo = 0.0
        for level in range(3):
            data = {SPARSITY_SITE: torch.tensor([level]), **draws}
            guide_trace = pyro.poutine.trace(pyro.poutine.condition(guide, data=data)).get_trace(x)
            model_trace = pyro.poutine.trace(pyro.poutine.condition(model, data=data)).get_trace(x)
            assert model_trace.nodes["slot_3"]["scale"] == (1.0 if level == 2 else 1e-6)  # gate 1[L >= 3]
            log_joint = scaled_log_prob(model_trace, [SPARSITY_SITE, *draws, OBS_SITE])
            elbo += log_q_levels[level].exp() * (log_joint - log_q_levels[level] - scaled_log_prob(guide_trace, draws))
    assert enumerated == pytest.approx(-elbo.item(), rel=1e-5)


def test_objectives_pick_their_elbo_and_kl():
    """discrete_kl: TraceMeanField_ELBO with the categorical KL; relaxed: Trace_ELBO's Monte-Carlo KL."""
    from pyro.infer import TraceMeanField_ELBO
    from pyro_sdlgm.inference.trainer import make_elbo
    from torch.distributions import kl_divergence

    model, guide = make()
    assert isinstance(make_elbo(model.spec), TraceMeanField_ELBO)
    x = torch.rand(6, 10).round()
    with pyro.settings.context(module_local_params=True):
        guide_trace = pyro.poutine.trace(guide).get_trace(x)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x)
    q, p = guide_trace.nodes["slot_1"]["fn"], model_trace.nodes["slot_1"]["fn"]
    probs = guide.amortize(x).slot_logits[:, 0].softmax(-1)
    expected = (probs * (probs.log() + torch.log(torch.tensor(8.0)))).sum(-1)  # KL to the uniform prior
    assert torch.allclose(kl_divergence(q, p), expected, atol=1e-5)
    relaxed_model, _ = make(objective="relaxed")
    assert type(make_elbo(relaxed_model.spec)) is Trace_ELBO
    with pytest.raises(Exception, match="enumerate.*objective='relaxed'"):
        make(sparsity_inference="enumerate", objective="discrete_kl")


def test_without_replacement_masks_taken_dimensions():
    """At low temperature the slots of a guide draw pick distinct dimensions; independent slots may repeat."""
    x = torch.rand(200, 10).round()
    distinct = {}
    for selection in ("without_replacement", "independent"):
        model, guide = make(slot_selection=selection, guide={"name": "mlp_shared_slots", "hidden": [16]})
        with torch.no_grad():
            guide.encoder.slot_head.bias.zero_()
            guide.encoder.slot_head.bias[0] = 3.0  # every slot prefers dimension 0
        with pyro.settings.context(module_local_params=True), torch.no_grad():
            trace = pyro.poutine.trace(guide).get_trace(x, tau_support=0.05)
        picks = torch.stack([trace.nodes[name]["value"].argmax(-1) for name in model.spec.slot_sites], -1)
        distinct[selection] = torch.tensor([len(set(row.tolist())) for row in picks]).float().mean()
    assert distinct["without_replacement"] > 2.9
    assert distinct["independent"] < 2.5


def test_classic_svi_in_global_mode_trains():
    """The same model and guide work with pyro.infer.SVI and Pyro's global parameter store."""
    model, guide = make()
    x = (torch.rand(64, 10) > 0.5).float()
    initial = model.decoder.net[0].weight.detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, tau_sparsity=0.5, tau_support=0.5) for _ in range(60)]
    assert len(pyro.get_param_store()) > 0
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    # SVI trained the modules' own parameters
    assert not torch.equal(initial, model.decoder.net[0].weight.detach())
