"""slot_layout="gumbel_topk": one Gumbel perturbation of shared slot logits and its top L0.

The picks are exact draws without replacement, the KL equals the other layouts' gated slot KL
(computed in O(K)), it stays finite at large K and extreme logits, the sparse decoder equals the
dense one, and the model trains with SVI under Pyro's validation."""

import itertools

import numpy as np
import pyro
import pytest
import torch
from pyro_sdlgm import SDLGM, ConfigError
from pyro_sdlgm.model.distributions import DiscreteKLJointSlots, GumbelTopKSlots, slot_sequence_kl
from pyro_sdlgm.model.networks import Decoder
from pyro_sdlgm.model.spec import ModelSpec
from pyro_sdlgm.model.support_steps import SparseCode
from torch.distributions import kl_divergence


def masked_kl(log_q, log_p, picks):
    """Slot l's categorical KL with the dimensions of picks[:l] removed, by brute force."""
    out = []
    for l in range(picks.shape[-1]):
        keep = torch.ones_like(log_q, dtype=torch.bool).scatter(-1, picks[..., :l], False)
        q = log_q.masked_fill(~keep, float("-inf")).log_softmax(-1)
        p = log_p.masked_fill(~keep, float("-inf")).log_softmax(-1)
        out.append(torch.where(keep, q.exp() * (q - p), 0.0).sum(-1))
    return torch.stack(out, -1)


def test_slot_kl_equals_the_brute_force_and_the_joint_layouts_kl():
    torch.manual_seed(0)
    log_q, log_p = 3 * torch.randn(5, 9, dtype=torch.float64), torch.randn(5, 9, dtype=torch.float64)
    picks = torch.stack([torch.randperm(9)[:4] for _ in range(5)])
    expected = masked_kl(log_q, log_p, picks)
    torch.testing.assert_close(slot_sequence_kl(log_q, log_p, picks), expected)
    # the joint layout computes the same gated sum from the same picks (its masks come from its draw)
    gates = torch.rand(5, 4, dtype=torch.float64)
    q = DiscreteKLJointSlots(0.5, log_q.unsqueeze(-2), gates)
    p = DiscreteKLJointSlots(0.5, log_p.unsqueeze(-2).expand(5, 1, 9), gates)
    q._taken = q.taken_masks(picks)
    topk_q, topk_p = GumbelTopKSlots(log_q, gates), GumbelTopKSlots(log_p, gates)
    topk_q._picks = picks
    torch.testing.assert_close(kl_divergence(topk_q, topk_p), kl_divergence(q, p), rtol=1e-6, atol=1e-9)


def test_slot_kl_is_finite_with_gradients_at_large_k_and_extreme_logits():
    torch.manual_seed(0)
    k, slots = 100_000, 32
    log_q = torch.randn(2, k) * 5
    log_q[0, :31] = 400.0  # 31 dimensions hold all the mass: the last slot's rest is e^-400 of it
    log_q.requires_grad_(True)
    log_p = torch.zeros(k)
    site = GumbelTopKSlots(log_q, torch.ones(2, slots))
    site.rsample()
    kl = kl_divergence(site, GumbelTopKSlots(log_p.expand(2, k), torch.ones(2, slots)))
    assert torch.isfinite(kl).all() and (kl >= -1e-3).all()
    kl.sum().backward()
    assert torch.isfinite(log_q.grad).all()
    # slot l is uniform on the 31 - l heavy dimensions left: KL = log((K - l) / (31 - l)) against uniform
    per_slot = slot_sequence_kl(log_q.detach()[:1], log_p, site._picks[:1])[0, :31]
    expected = torch.tensor([np.log((k - l) / (31 - l)) for l in range(31)], dtype=per_slot.dtype)
    torch.testing.assert_close(per_slot, expected, rtol=1e-3, atol=1e-2)  # float32 sums over 100,000 terms


def test_slot_kl_with_every_dimension_picked():
    log_q = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    kl = slot_sequence_kl(log_q, torch.zeros(1, 3), torch.tensor([[1, 0, 2]]))
    torch.testing.assert_close(kl.detach(), masked_kl(log_q.detach(), torch.zeros(1, 3), torch.tensor([[1, 0, 2]])))
    kl.sum().backward()
    assert torch.isfinite(log_q.grad).all() and kl[0, -1].abs() < 1e-6  # the last slot has one choice left


def test_picks_are_draws_without_replacement_from_the_logits():
    """Gumbel-top-k: the ordered pair of picks has the Plackett-Luce probabilities."""
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -0.5, 0.5])
    site = GumbelTopKSlots(logits.expand(200_000, 4), torch.ones(200_000, 2))
    site.rsample()
    picks = site._picks.numpy()
    p = logits.softmax(-1).numpy()
    for a, b in itertools.permutations(range(4), 2):
        expected = p[a] * p[b] / (1 - p[a])
        observed = np.mean((picks[:, 0] == a) & (picks[:, 1] == b))
        assert abs(observed - expected) < 4 * np.sqrt(expected / 200_000) + 1e-4, (a, b)


@pytest.mark.parametrize("skip", [False, True])
def test_the_sparse_decoder_equals_the_dense_decoder(skip):
    torch.manual_seed(0)
    decoder = Decoder(50, 7, (16, 8), skip=skip)
    index = torch.stack([torch.randperm(50)[:6] for _ in range(4)])
    value = torch.rand(4, 6, requires_grad=True)
    code = SparseCode(index, value, 50)
    dense = code.to_dense()
    sparse_out, dense_out = decoder(code), decoder(dense)
    torch.testing.assert_close(sparse_out, dense_out)
    (g_sparse,) = torch.autograd.grad(sparse_out.square().sum(), value)
    (g_dense,) = torch.autograd.grad(dense_out.square().sum(), value)
    torch.testing.assert_close(g_sparse, g_dense)
    for weight in decoder.code_weights():
        w_sparse = torch.autograd.grad(decoder(code).sum(), weight)[0]
        w_dense = torch.autograd.grad(decoder(dense).sum(), weight)[0]
        torch.testing.assert_close(w_sparse, w_dense)


@pytest.mark.parametrize("binary", [True, False])
def test_the_model_trains_with_svi_and_its_hard_codes_keep_the_cap(binary, binary_data):
    options = dict(input_dim=12, latent_dim=20, max_sparsity=3, binary=binary, slot_layout="gumbel_topk",
                   decoder_hidden=[16], guide={"name": "mlp_magnitude_slots", "hidden": [16]})
    short = SDLGM(**options)
    short.fit(binary_data, epochs=1, batch_size=32, seed=0, progress=False)
    untrained = short.evaluate(binary_data)["elbo"]
    model = SDLGM(**options)
    with pyro.validation_enabled(True):
        history = model.fit(binary_data, epochs=4, batch_size=32, seed=0, progress=False, pyro_validation="always").history_
    assert all(np.isfinite(r["train_loss"]) for r in history)
    codes = model.encode(binary_data)
    assert (codes != 0).sum(1).max() <= 3
    metrics = model.evaluate(binary_data)
    assert np.isfinite(metrics["elbo"]) and metrics["kl_slots"] > 0 and metrics["elbo"] > untrained
    assert model.model_.spec.slot_sites == ["support"]


def test_the_relaxed_code_has_at_most_the_candidates_as_non_zeros(binary_data):
    model = SDLGM(input_dim=12, latent_dim=20, max_sparsity=3, slot_layout={"name": "gumbel_topk", "num_candidates": 4},
                  decoder_hidden=[16], guide={"name": "mlp_magnitude_slots", "hidden": [16]})
    z = model.model_(torch.as_tensor(binary_data[:5]), tau_support=0.5, tau_sparsity=0.5)
    assert isinstance(z, SparseCode) and z.index.shape == (5, 4) and z.size == 20


def test_modes_it_does_not_take_are_refused_by_name():
    with pytest.raises(ConfigError, match="gumbel_topk' needs objective='discrete_kl'.*'objective': 'relaxed'"):
        ModelSpec(5, 6, 2, objective="relaxed", slot_layout="gumbel_topk")
    with pytest.raises(ConfigError, match="count_coupling"):
        ModelSpec(5, 6, 2, count_coupling="prefix_mixture", sparsity_inference="marginal", slot_layout="gumbel_topk")
    with pytest.raises(ConfigError, match="num_candidates must be 'auto' or a positive integer, got 0"):
        ModelSpec(5, 6, 2, slot_layout={"name": "gumbel_topk", "num_candidates": 0})
    with pytest.raises(ConfigError, match="imle.*needs objective='discrete_kl'"):
        ModelSpec(5, 6, 2, slot_layout="gumbel_topk", slot_estimator="imle")
    model = SDLGM(input_dim=12, latent_dim=20, max_sparsity=3, slot_layout="gumbel_topk", guide="mlp_per_slot")
    with pytest.raises(ConfigError, match="per-slot logits.*mlp_magnitude_slots"):
        model.fit(np.zeros((20, 12), np.float32), epochs=1, progress=False)


def test_auto_layout_switches_by_width_and_by_the_modes_it_needs():
    assert ModelSpec(5, 1024, 10, slot_layout="auto").slot_layout == "per_slot"
    assert ModelSpec(5, 1025, 10, slot_layout="auto").slot_layout == "gumbel_topk"
    for modes in (dict(objective="relaxed"), dict(slot_estimator="imle"), dict(slot_selection="independent")):
        assert ModelSpec(5, 5000, 10, slot_layout="auto", **modes).slot_layout == "per_slot", modes
    # the estimators' default is "auto": wide models get the wide layout, narrow ones the per-slot one
    assert SDLGM(input_dim=5, latent_dim=2000, max_sparsity=4).model_.spec.support_step.sparse_code
    assert not SDLGM(input_dim=5, latent_dim=200, max_sparsity=4).model_.spec.support_step.sparse_code


def test_sorted_picks_equal_the_greedy_chain_for_shared_logits():
    from pyro_sdlgm.model.support import greedy_picks

    logits = torch.randn(6, 1, 300, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(greedy_picks(logits, 7, sorted_shared=True), greedy_picks(logits, 7))


def test_the_memory_estimate_is_linear_in_k_not_in_k_times_l0():
    from pyro_sdlgm.config import TrainConfig
    from pyro_sdlgm.inference.trainer import Trainer

    def estimate(k, l0, layout="gumbel_topk"):
        model = SDLGM(input_dim=784, latent_dim=k, max_sparsity=l0, slot_layout=layout)
        config = TrainConfig(batch_size=256, eval_batch_size=256, memory_limit_gb=1e6)
        return Trainer(*model._meta_networks(model.config), config).check_memory(4096, 512)

    wide = estimate(100_000, 32)
    assert wide.total < 4 * 2**30  # the 4 GB target's estimate
    # doubling L0 adds the small (row, slot, candidate) term only; the per-slot estimate doubles its step
    assert estimate(100_000, 64).training_step < 1.2 * wide.training_step
    assert estimate(4096, 64, "per_slot").training_step > 1.9 * estimate(4096, 32, "per_slot").training_step


def test_sparse_code_to_csr_inverts_from_csr_and_sums_a_repeated_dimension():
    import scipy.sparse

    code = SparseCode(torch.tensor([[3, 1, 3], [0, 0, 2]]), torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 4.0]]), 5)
    matrix = code.to_csr()
    np.testing.assert_array_equal(matrix.toarray(), code.to_dense().numpy())  # 1.5 at dimension 3 of row 0
    assert matrix.nnz == 3  # the padded zeros are dropped
    np.testing.assert_array_equal(SparseCode.from_csr(matrix).to_csr().toarray(), matrix.toarray())
    assert isinstance(matrix, scipy.sparse.csr_matrix)
