"""The sparse machinery: gates, soft support, hard supports, and the L0 cap as a property."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro_sdlgm import GUIDES, ModelSpec
from pyro_sdlgm.model.support import MASKED_LOGIT, exclude_taken, greedy_support, mark_taken, slot_gates, soft_support


@pytest.mark.parametrize("min_level", [0, 1])
def test_gates_of_hard_levels_are_indicators(min_level):
    L0 = 4
    levels = torch.arange(min_level, L0 + 1)
    one_hot = F.one_hot(torch.arange(len(levels)), len(levels)).float()
    gates = slot_gates(one_hot, min_level)
    assert gates.shape == (len(levels), L0)
    expected = (levels.unsqueeze(-1) >= torch.arange(1, L0 + 1)).float()
    assert torch.equal(gates, expected)


def test_soft_support_of_hard_slots_is_the_union_indicator():
    K = 6
    slots = F.one_hot(torch.tensor([[2, 2, 5]]), K).float()  # slots pick 2, 2 (duplicate), 5
    gates = torch.tensor([[1.0, 1.0, 0.0]])  # L = 2: only the first two slots are used
    s = soft_support(gates, slots)
    assert torch.equal(s, F.one_hot(torch.tensor([2]), K).float())
    gates = torch.tensor([[1.0, 1.0, 1.0]])
    assert torch.equal(soft_support(gates, slots), torch.tensor([[0, 0, 1, 0, 0, 1.0]]))


def test_greedy_support_takes_exact_counts_without_replacement():
    shared = torch.tensor([[[0.1, 0.9, 0.5, 0.7]], [[4.0, 3.0, 2.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]]])
    mask = greedy_support(shared, torch.tensor([2, 0, 3]))
    assert mask.sum(-1).tolist() == [2, 0, 3]
    assert mask[0].tolist() == [False, True, False, True]  # the two highest logits
    per_slot = torch.full((1, 3, 5), -20.0)
    per_slot[0, 0, 1] = per_slot[0, 1, 1] = 20.0  # slots 1 and 2 both prefer dimension 1
    per_slot[0, 1, 3] = 10.0  # slot 2's second choice
    mask = greedy_support(per_slot, torch.tensor([2]))
    assert mask[0].tolist() == [False, True, False, True, False]


def test_exclusion_mask_marks_argmaxes():
    taken = mark_taken(None, torch.tensor([[0.7, 0.2, 0.1]]))
    taken = mark_taken(taken, torch.tensor([[0.1, 0.1, 0.8]]))
    assert taken.tolist() == [[True, False, True]]
    masked = exclude_taken(torch.zeros(1, 3), taken)
    assert masked.tolist() == [[MASKED_LOGIT, 0.0, MASKED_LOGIT]]


@settings(max_examples=60, deadline=None)
@given(
    latent_dim=st.integers(1, 40),
    cap_fraction=st.floats(0.0, 1.0),
    n=st.integers(1, 20),
    include_zero=st.booleans(),
    binary=st.booleans(),
    guide_name=st.sampled_from(["mlp_shared_slots", "mlp_per_slot"]),
    input_scale=st.floats(0.0, 50.0),
    tau=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**16),
)
def test_codes_never_exceed_the_cap(latent_dim, cap_fraction, n, include_zero, binary, guide_name, input_scale, tau, seed):
    """Every hard code has at most L_hat <= L0 non-zeros; every relaxed support has mass <= sum of gates <= L0."""
    torch.manual_seed(seed)
    L0 = max(1, round(cap_fraction * latent_dim))
    spec = ModelSpec(7, latent_dim, L0, include_zero=include_zero, binary=binary)
    with pyro.settings.context(module_local_params=True):
        guide = GUIDES.build({"name": guide_name, "hidden": [8]}, spec)
    x = torch.randn(n, 7) * input_scale
    with torch.no_grad():
        params = guide.amortize(x)
        z, counts = guide.hard_code(params)
        nnz = (z != 0).sum(-1)
        assert z.shape == (n, latent_dim)
        assert (nnz <= counts).all() and (counts <= L0).all() and (counts >= spec.min_level).all()
        # relaxed draws from the guide at temperature tau
        with pyro.settings.context(module_local_params=True):
            trace = pyro.poutine.trace(guide).get_trace(x, tau_sparsity=tau, tau_support=tau)
        gates = slot_gates(trace.nodes["sparsity"]["value"].exp(), spec.min_level)
        slots = torch.stack([trace.nodes[name]["value"].exp() for name in spec.slot_sites], -2)
        s = soft_support(gates, slots)
        assert (s.sum(-1) <= gates.sum(-1) + 1e-4).all()
        assert (gates.sum(-1) <= L0 + 1e-4).all()
