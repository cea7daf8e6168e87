"""The gradient-estimator benchmark (``benchmarks/gradient_estimators.py``): its enumerated reference
is the discrete objective, its Monte-Carlo error is what it reports, the library's configurations
share their parameters, and a ``--quick`` run writes well-formed results.

The benchmark itself is not part of the test run; these tests take seconds.
"""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from benchmarks import gradient_estimators as ge

REPO = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="module")
def setting():
    s = ge.settings(quick=False)
    model, guide, x = ge.build_setting(s, seed=0)
    return s, model, guide, x


def monte_carlo_objective(model, guide, x, num_samples: int, seed: int):
    """The discrete negative ELBO by plain sampling from ``q``: ``L``, the slots one after the
    other from categoricals over the dimensions not yet taken, and the values.

    Returns ``{term: (per-row means (N,), their standard errors)}`` for the terms ``recon``
    (``-log p(x | z)``), ``kl_slots`` (the KL of the slots in use) and their sum with the KL terms
    of ``L`` and ``v``, ``per_row``. Written independently of the benchmark's enumeration (torch's
    own ``Categorical``, sampling and KL).
    """
    spec = model.spec
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        params = guide.amortize(x)
        m, n, k = num_samples, x.shape[0], spec.latent_dim
        q_level = Categorical(logits=params.sparsity_logits)
        counts = spec.levels()[q_level.sample((m,))]  # (M, N)
        taken = torch.zeros(m, n, k, dtype=torch.bool)
        support = torch.zeros(m, n, k)
        kl_slots = torch.zeros(m, n)
        for index in range(spec.max_sparsity):
            head = min(index, params.slot_logits.shape[1] - 1)
            q = Categorical(logits=params.slot_logits[:, head].expand(m, n, k).masked_fill(taken, float("-inf")),
                            validate_args=False)
            p = Categorical(logits=model.support_prior.logits().expand(m, n, k).masked_fill(taken, float("-inf")),
                            validate_args=False)
            used = counts > index  # slot index + 1 is used when L >= index + 1
            kl_slots += used * kl_divergence(q, p)
            pick = q.sample().unsqueeze(-1)
            support = support.scatter(-1, pick, used.unsqueeze(-1).float())
            taken = taken.scatter(-1, pick, True)
        values = Normal(params.value_loc, params.value_scale).sample((m,))
        nll = -model.likelihood.dist(model.decoder(support * values)).log_prob(x)
        q_values = Independent(Normal(params.value_loc, params.value_scale), 1)
        kl_fixed = kl_divergence(q_level, Categorical(logits=model.sparsity_prior.logits())) + kl_divergence(
            q_values, model.value_prior.dist(n))
        terms = dict(recon=nll, kl_slots=kl_slots, per_row=nll + kl_slots + kl_fixed)
        return {key: (value.double().mean(0), value.double().std(0) / math.sqrt(m)) for key, value in terms.items()}


def test_enumerated_objective_is_the_discrete_objective(setting):
    s, model, guide, x = setting
    model64, guide64 = ge._float64_copies(model, guide)
    with torch.no_grad():
        exact, terms = ge.discrete_objective(model64, guide64, x.double(), None)
    # q over the ordered slot picks is a distribution, and P(L >= 1) = 1
    torch.testing.assert_close(terms["sequence_probs"].sum(-1), torch.ones(x.shape[0], dtype=torch.float64))
    assert terms["sequence_probs"].shape[-1] == math.perm(s["latent_dim"], s["max_sparsity"])
    sampled = monte_carlo_objective(model, guide, x, 20_000, seed=5)
    # term by term, row by row: the slot KL has a far smaller spread than the reconstruction
    for key in ("recon", "kl_slots", "per_row"):
        means, se = sampled[key]
        z = (means - terms[key]) / se
        assert z.abs().max() < 4.5, (key, z)
    row_means, row_se = sampled["per_row"]
    mean_se = row_se.pow(2).sum().sqrt() / x.shape[0]
    assert abs(float(row_means.mean() - exact)) < 4 * float(mean_se)


def test_reference_error_is_what_it_reports(setting):
    s, model, guide, x = setting
    ref = ge.reference_gradient(model, guide, x, value_samples=8000, value_chunks=20, seed=1)
    assert ref["closed_grad"] is not None  # linear decoder, Normal likelihood
    assert abs(ref["F"] - ref["closed_F"]) < 4 * ref["F_se"]
    # the distance from the exact gradient is about the norm of the reported standard errors
    distance = float((ref["grad"] - ref["closed_grad"]).norm())
    assert distance < 4 * float(ref["grad_se"].norm())
    assert float(ref["grad_se"].norm() / ref["grad"].norm()) < 0.05


def test_reference_is_finite_and_deterministic(setting):
    s, model, guide, x = setting
    first = ge.reference_gradient(model, guide, x, value_samples=400, value_chunks=4, seed=3)
    again = ge.reference_gradient(model, guide, x, value_samples=400, value_chunks=4, seed=3)
    other = ge.reference_gradient(model, guide, x, value_samples=400, value_chunks=4, seed=4)
    num_params = sum(p.numel() for p in guide.parameters())
    assert first["grad"].shape == (num_params,) and torch.isfinite(first["grad"]).all()
    assert torch.isfinite(first["grad_se"]).all() and math.isfinite(first["F"])
    assert torch.equal(first["grad"], again["grad"]) and first["F"] == again["F"]
    assert not torch.equal(first["grad"], other["grad"])
    # the setting itself is seeded: the same parameters and rows again
    model2, guide2, x2 = ge.build_setting(s, seed=0)
    assert torch.equal(x, x2)
    assert all(torch.equal(a, b) for a, b in zip(guide.state_dict().values(), guide2.state_dict().values()))


def test_configurations_share_parameters_and_estimates_have_their_shape(setting):
    s, model, guide, x = setting
    names = ge.parameter_names(guide)
    num_params = sum(p.numel() for p in guide.parameters())
    slices = ge.group_slices(guide)
    assert len(slices["all"]) == num_params
    assert sum(len(slices[g]) for g in ("count_head", "slot_head", "value_head")) < num_params  # the trunk
    for name in ge.configurations(s):
        est_model, est_guide = ge.estimator_model_and_guide(s, name, model, guide)
        spec = est_model.spec
        assert (spec.sparsity_inference, spec.count_coupling, spec.slot_estimator) == tuple(
            ge.ESTIMATORS[name][key] for key in ("sparsity_inference", "count_coupling", "slot_estimator"))
        assert ge.parameter_names(est_guide) == names
        for mine, theirs in ((est_model, model), (est_guide, guide)):
            for (key, a), (key2, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
                assert key == key2 and torch.equal(a, b), (name, key)
        out = ge.library_estimates(est_model, est_guide, x, tau=0.5, replicates=3, seed=0)
        assert out["grads"].shape == (3, num_params) and torch.isfinite(out["grads"]).all()
        assert out["losses"].shape == (3,) and torch.isfinite(out["losses"]).all()
        assert not torch.equal(out["grads"][0], out["grads"][1])  # independent draws
        again = ge.library_estimates(est_model, est_guide, x, tau=0.5, replicates=3, seed=0)
        assert torch.equal(out["grads"], again["grads"])  # seeded


def test_marginal_straight_through_is_unbiased_where_it_must_be(setting):
    """With ``sparsity_inference="marginal"`` the count enters as exact expectations and with
    ``slot_estimator="straight_through"`` the code uses the slots' one-hots, which are exact draws
    of the sequential categoricals (Gumbel-max): so the loss value is an unbiased estimate of ``F``
    at any temperature, and so are the gradients of the count head and of the value head, whose
    parameters do not change the distribution of the slots (only the slot head and the trunk
    carry the straight-through bias)."""
    s, model, guide, x = setting
    model64, guide64 = ge._float64_copies(model, guide)
    exact, _ = ge.discrete_objective(model64, guide64, x.double(), None)
    params = [p for _, p in guide64.named_parameters()]
    reference = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact, params)])
    est_model, est_guide = ge.estimator_model_and_guide(s, "marginal_straight_through", model, guide)
    out = ge.library_estimates(est_model, est_guide, x, tau=0.5, replicates=300, seed=11)
    losses = out["losses"]
    assert abs(float(losses.mean() - exact.detach())) < 4 * float(losses.std() / math.sqrt(len(losses)))
    slices = ge.group_slices(guide)
    for group in ("count_head", "value_head"):
        index = slices[group]
        stats = ge.summarize(out["grads"][:, index], reference[index], torch.zeros(len(index)))
        # the noise is concentrated in few directions: an unbiased estimate's bias is a few floors at most
        assert stats["bias"] < 4 * stats["bias_floor"], (group, stats)
        assert stats["cosine"] > 0.99, (group, stats)


@pytest.mark.parametrize("guide", ["mlp_per_slot", "mlp_shared_slots"])
def test_quick_run_writes_results(tmp_path, guide):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gradient_estimators", "--quick", "--threads", "1",
                           "--guide", guide, "--out", str(out)], capture_output=True, text=True, timeout=300,
                          check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Gradient estimators of the discrete objective" in proc.stdout
    with open(out / "gradient_estimators.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == ge.CSV_COLUMNS
    names = ge.configurations({"guide": guide})
    assert ("gumbel_topk" in names) == (guide == "mlp_shared_slots")
    expected = {(name, float(tau), group) for name in names for tau in ge.TEMPERATURES for group in ge.GROUPS}
    assert {(r["estimator"], float(r["tau"]), r["group"]) for r in rows} == expected and len(rows) == len(expected)
    for row in rows:
        for key in ("bias", "bias_floor", "cosine", "rel_variance", "ref_norm", "loss_rel_bias",
                    "seconds_per_estimate"):
            assert math.isfinite(float(row[key])), (key, row)
        assert float(row["bias"]) >= 0 and float(row["rel_variance"]) > 0 and -1 <= float(row["cosine"]) <= 1
        assert int(row["replicates"]) == 10
    table = (out / "gradient_estimators.md").read_text()
    assert sum(line.startswith(f"| {name} |") for line in table.splitlines() for name in ge.ESTIMATORS) == len(
        names) * len(ge.TEMPERATURES)
