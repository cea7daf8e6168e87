"""Gradient estimators of the discrete SDLGM objective, against its exact gradient.

    .venv/bin/python -m benchmarks.gradient_estimators [--quick] [--out benchmarks/results]

What: on a small model (``D = 6``, ``K = 5``, ``L0 = 3``, Normal likelihood, linear decoder,
MLP guide ``mlp_per_slot`` with one hidden layer of 16; parameters drawn at random from a
seed; 16 rows drawn from the discrete model's own prior) the library's training loss is
differentiated once per draw with respect to the guide's parameters, for nine
configurations (:data:`ESTIMATORS`) at the temperatures 1.0, 0.5 and 0.1, and the
single-sample gradients are compared with the exact gradient of the *discrete* negative ELBO

    F = E_q[-log p(x | z(L, c, v))] + KL(q(L) || p(L))
        + sum_l P_q(L >= l) KL(q(c_l | c_<l) || p(c_l | c_<l)) + KL(q(v) || p(v))

(mean over the rows), where ``q(c)`` draws the slots in order without replacement from the
guide's slot logits. The relaxed estimators differentiate a relaxed objective, so they are
biased for ``F`` by construction; the table shows by how much.

How: the reference ``F`` is computed in plain torch (float64 copies of the model and the
guide, nothing through Pyro) by enumerating every count ``L`` and every ordered pick of the
``L0`` slots (``K! / (K - L0)!`` sequences, 60 here) with their exact probabilities; only
the values ``v`` are Monte Carlo (``--value-samples`` reparameterized draws, common random
numbers, in ``--value-chunks`` chunks whose spread gives the reference's own standard
error). For the linear decoder and the Normal likelihood the expectation over ``v`` also has
a closed form; the distance of the Monte-Carlo reference from it is reported as a check.
Each estimate is the gradient of ``make_elbo(spec)(model, guide)(x, tau_sparsity=tau,
tau_support=tau) / N`` (one sample) under ``pyro.settings.context(module_local_params=True)``,
with Pyro's validation off as in the trainer's steady state; every configuration is built
with ``build_model_and_guide`` and loaded with the reference's ``state_dict`` (the parameter
names are checked to be the same). Per estimator, temperature and parameter group (all guide
parameters, the count head ``encoder.sparsity_head``, the slot head ``encoder.slot_head``, the
value head ``encoder.value_head``): the relative bias ``||mean - ref|| / ||ref||``, its noise
floor ``sqrt(rel_variance / replicates)`` (what an unbiased estimator would show), the cosine
of the mean estimate with the reference, the relative variance ``mean ||g - mean||^2 /
||ref||^2``, the relative bias of the loss value itself against ``F``, and seconds per estimate.

Replicates: 1,000 single-sample estimates per estimator and temperature (27,000 in all) by
default; a full run takes about 3.3 minutes with one torch thread on a 2-core machine under
load. ``--quick`` (a smoke run, seconds): a tiny model and 10 replicates. Results:
``gradient_estimators.csv`` (one row per estimator, temperature and group) and
``gradient_estimators.md`` in ``--out``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import math
import platform
import sys
import time
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.distributions import kl_divergence

from pyro_sdlgm import ModelConfig
from pyro_sdlgm.model.likelihoods import NormalLikelihood
from pyro_sdlgm.estimators.sdlgm import build_model_and_guide
from pyro_sdlgm.inference.faults import without_pyro_validation
from pyro_sdlgm.inference.trainer import make_elbo

HERE = Path(__file__).resolve().parent

#: the library configurations compared: ModelConfig fields on top of the common setting
ESTIMATORS = {
    "relaxed": dict(sparsity_inference="relaxed", count_coupling="gated_code", slot_estimator="relaxed"),
    "relaxed_prefix": dict(sparsity_inference="relaxed", count_coupling="prefix_mixture", slot_estimator="relaxed"),
    "straight_through": dict(sparsity_inference="relaxed", count_coupling="gated_code",
                             slot_estimator="straight_through"),
    "marginal": dict(sparsity_inference="marginal", count_coupling="prefix_mixture", slot_estimator="relaxed"),
    "marginal_straight_through": dict(sparsity_inference="marginal", count_coupling="prefix_mixture",
                                      slot_estimator="straight_through"),
    "imle": dict(sparsity_inference="relaxed", count_coupling="gated_code", slot_estimator="imle"),
    "marginal_imle": dict(sparsity_inference="marginal", count_coupling="prefix_mixture", slot_estimator="imle"),
    "marginal_imle_step0.3": dict(sparsity_inference="marginal", count_coupling="prefix_mixture",
                                  slot_estimator={"name": "imle", "step": 0.3}),
    "marginal_imle_step3": dict(sparsity_inference="marginal", count_coupling="prefix_mixture",
                                slot_estimator={"name": "imle", "step": 3.0}),
    # one Gumbel perturbation of shared slot logits (needs --guide mlp_shared_slots)
    "gumbel_topk": dict(sparsity_inference="relaxed", count_coupling="gated_code", slot_estimator="relaxed",
                        slot_layout="gumbel_topk"),
    "gumbel_topk_candidates_L0+1": dict(sparsity_inference="relaxed", count_coupling="gated_code",
                                        slot_estimator="relaxed",
                                        slot_layout={"name": "gumbel_topk", "num_candidates": "L0+1"}),
    "gumbel_topk_straight_through": dict(sparsity_inference="relaxed", count_coupling="gated_code",
                                         slot_estimator="straight_through", slot_layout="gumbel_topk"),
}
#: the configurations that need shared slot logits (one logit vector for all slots)
SHARED_ONLY = ("gumbel_topk", "gumbel_topk_candidates_L0+1", "gumbel_topk_straight_through")
TEMPERATURES = (1.0, 0.5, 0.1)
#: parameter groups: a name prefix of the guide's parameters (None: all of them)
GROUPS = {"all": None, "count_head": "encoder.sparsity_head.", "slot_head": "encoder.slot_head.",
          "value_head": "encoder.value_head."}
CSV_COLUMNS = ("estimator", "sparsity_inference", "count_coupling", "slot_estimator", "tau", "replicates", "group",
               "num_params", "bias", "bias_floor", "cosine", "rel_variance", "ref_norm", "ref_rel_se", "loss_mean",
               "reference_F", "loss_rel_bias", "loss_rel_se", "seconds_per_estimate")


def settings(quick: bool) -> dict:
    """Sizes of a full or a ``--quick`` run."""
    if quick:
        return dict(input_dim=4, latent_dim=3, max_sparsity=2, num_rows=4, guide_hidden=(8,), replicates=10,
                    value_samples=400, value_chunks=4, temperatures=TEMPERATURES, guide="mlp_per_slot")
    return dict(input_dim=6, latent_dim=5, max_sparsity=3, num_rows=16, guide_hidden=(16,), replicates=1000,
                value_samples=40_000, value_chunks=40, temperatures=TEMPERATURES, guide="mlp_per_slot")


# ----------------------------------------------------------------------------- the setting


def model_config(s: dict, **modes) -> ModelConfig:
    """The common setting (linear decoder, Normal likelihood, the MLP guide ``s["guide"]``) with ``modes``."""
    layout = modes.get("slot_layout")
    if isinstance(layout, dict) and layout.get("num_candidates") == "L0+1":
        modes = {**modes, "slot_layout": {**layout, "num_candidates": s["max_sparsity"] + 1}}
    return ModelConfig(input_dim=s["input_dim"], latent_dim=s["latent_dim"], max_sparsity=s["max_sparsity"],
                       likelihood="normal", guide={"name": s["guide"], "hidden": list(s["guide_hidden"])},
                       decoder_hidden=(), **modes)


def configurations(s: dict) -> list[str]:
    """The configurations this setting's guide can run (gumbel_topk needs shared slot logits)."""
    return [name for name in ESTIMATORS if s["guide"] != "mlp_per_slot" or name not in SHARED_ONLY]


@torch.no_grad()
def randomize_parameters(model, guide, seed: int, noise_scale: float = 0.5) -> None:
    """Seeded parameters away from the initialization's near-uniform posteriors.

    Guide layers: weights ``N(0, gain^2 / fan_in)`` (gain 1 in the trunk and the value head, 1.5
    in the count and slot heads), biases ``N(0, 0.3^2)``; decoder weights ``N(0, 1)``,
    biases ``N(0, 0.1^2)``; the likelihood's scale ``noise_scale`` for every feature.
    """
    generator = torch.Generator().manual_seed(seed)

    def fill(linear: nn.Linear, gain: float, bias_std: float):
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * gain / math.sqrt(linear.in_features))
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=generator) * bias_std)

    encoder = guide.encoder
    for layer in encoder.trunk:
        if isinstance(layer, nn.Linear):
            fill(layer, 1.0, 0.3)
    fill(encoder.sparsity_head, 1.5, 0.3)
    fill(encoder.slot_head, 1.5, 0.3)
    fill(encoder.value_head, 1.0, 0.3)
    for layer in model.decoder.net:
        if isinstance(layer, nn.Linear):
            fill(layer, math.sqrt(layer.in_features), 0.1)
    likelihood = model.likelihood
    likelihood.raw_scale.fill_(math.log(math.expm1(noise_scale - likelihood.min_scale)))


@torch.no_grad()
def sample_prior_rows(model, num_rows: int, seed: int) -> torch.Tensor:
    """``num_rows`` rows ``x (N, D)`` from the discrete model's prior: ``L ~ p(L)``, slots in order
    without replacement from ``p(c)``, ``v ~ p(v)``, ``x ~ p(x | decoder(s * v))``."""
    spec = model.spec
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        levels = spec.levels()
        counts = levels[torch.distributions.Categorical(logits=model.sparsity_prior.logits()).sample((num_rows,))]
        taken = torch.zeros(num_rows, spec.latent_dim, dtype=torch.bool)
        support = torch.zeros(num_rows, spec.latent_dim)
        rows = torch.arange(num_rows)
        for index in range(spec.max_sparsity):
            logits = model.support_prior.logits().expand(num_rows, -1).masked_fill(taken, float("-inf"))
            pick = torch.distributions.Categorical(logits=logits).sample()
            support[rows, pick] = torch.maximum(support[rows, pick], (counts > index).float())
            taken[rows, pick] = True
        values = model.value_prior.dist(num_rows).sample()
        return model.likelihood.dist(model.decoder(support * values)).sample()


def build_setting(s: dict, seed: int):
    """``(model, guide, x)``: the default configuration with seeded parameters and a batch from its prior."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, guide = build_model_and_guide(model_config(s, **ESTIMATORS["relaxed"]))
    randomize_parameters(model, guide, seed)
    x = sample_prior_rows(model, s["num_rows"], seed + 1)
    return model, guide, x


def parameter_names(guide) -> list[str]:
    return [name for name, _ in guide.named_parameters()]


def group_slices(guide) -> dict[str, torch.Tensor]:
    """Indices of each :data:`GROUPS` entry in the flattened guide parameters."""
    names, sizes = zip(*[(name, p.numel()) for name, p in guide.named_parameters()])
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))
    out = {}
    for group, prefix in GROUPS.items():
        chosen = [i for i, name in enumerate(names) if prefix is None or name.startswith(prefix)]
        out[group] = torch.nonzero(torch.isin(owner, torch.tensor(chosen))).squeeze(-1)
    return out


# ----------------------------------------------------------------------------- the exact objective


def ordered_selections(latent_dim: int, num_slots: int) -> torch.Tensor:
    """Every ordered pick of ``num_slots`` distinct dimensions: ``(K! / (K - L0)!, L0)``."""
    return torch.tensor(list(itertools.permutations(range(latent_dim), num_slots)), dtype=torch.long)


def _masked_log_softmax(logits: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the dimensions not taken (``-inf`` on taken ones)."""
    return logits.masked_fill(taken, float("-inf")).log_softmax(-1)


def _categorical_kl(log_q: torch.Tensor, log_p: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """``KL(q || p)`` over the dimensions not taken; finite gradients (no ``0 * inf``)."""
    log_q0, log_p0 = log_q.masked_fill(taken, 0.0), log_p.masked_fill(taken, 0.0)
    return (log_q.exp() * (log_q0 - log_p0)).sum(-1)


def enumerated_terms(model, params) -> dict[str, torch.Tensor]:
    """The exact discrete parts of ``F``, per row, from the guide's amortized parameters.

    Returns ``level_probs (N, levels)``, ``sequence_probs (N, S)`` (``q`` of each ordered pick
    of the ``L0`` slots, sequential without replacement), ``supports (S, levels, K)`` (the
    union of the first ``L`` picks of each sequence), ``kl_count (N,)``,
    ``kl_slots (N,)`` (``sum_l P(L >= l) E_q KL_l``) and ``kl_values (N,)``.
    """
    spec = model.spec
    num_rows, k = params.sparsity_logits.shape[0], spec.latent_dim
    sequences = ordered_selections(k, spec.max_sparsity)
    log_q_level = params.sparsity_logits.log_softmax(-1)
    log_p_level = model.sparsity_prior.logits().log_softmax(-1).expand_as(log_q_level)
    level_probs = log_q_level.exp()
    kl_count = (level_probs * (log_q_level - log_p_level)).sum(-1)
    # P(L >= l) for l = 1..L0: the tail sums of q(L) over the levels >= l
    levels = spec.levels().to(level_probs.dtype)
    slots = torch.arange(1, spec.max_sparsity + 1, dtype=level_probs.dtype)
    gates = level_probs @ (levels.unsqueeze(-1) >= slots).to(level_probs.dtype)  # (N, L0)
    one_hot = nn.functional.one_hot(sequences, k).to(torch.bool)  # (S, L0, K)
    taken = torch.zeros(len(sequences), k, dtype=torch.bool)
    log_seq = torch.zeros(num_rows, len(sequences), dtype=level_probs.dtype)
    kl_per_sequence = torch.zeros_like(log_seq)
    prior_logits = model.support_prior.logits().to(level_probs.dtype)
    heads = params.slot_logits.shape[1]
    for index in range(spec.max_sparsity):
        logits = params.slot_logits[:, min(index, heads - 1)]  # (N, K)
        log_q = _masked_log_softmax(logits.unsqueeze(1), taken)  # (N, S, K)
        log_p = _masked_log_softmax(prior_logits.expand(1, 1, k), taken)  # (1, S, K)
        log_seq = log_seq + log_q.gather(-1, sequences[:, index].expand(num_rows, -1).unsqueeze(-1)).squeeze(-1)
        kl_per_sequence = kl_per_sequence + gates[:, index:index + 1] * _categorical_kl(log_q, log_p, taken)
        taken = taken | one_hot[:, index]
    sequence_probs = log_seq.exp()
    supports = torch.stack([one_hot[:, :int(level)].any(1) for level in spec.levels()], 1).to(level_probs.dtype)
    q_values = torch.distributions.Independent(torch.distributions.Normal(params.value_loc, params.value_scale), 1)
    kl_values = kl_divergence(q_values, model.value_prior.dist(num_rows))
    return dict(level_probs=level_probs, sequence_probs=sequence_probs, supports=supports, kl_count=kl_count,
                kl_slots=(sequence_probs * kl_per_sequence).sum(-1), kl_values=kl_values)


def _closed_form_available(model) -> bool:
    layers = list(model.decoder.net)
    return len(layers) == 1 and isinstance(layers[0], nn.Linear) and isinstance(model.likelihood, NormalLikelihood)


def expected_nll(model, x, params, supports: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """``E_q(v) [-log p(x | decoder(s * v))]`` per row and support: ``(N, U)`` for ``supports (U, K)``.

    ``noise (M, N, K)``: standard normal draws, ``v = loc + scale * noise`` (the Monte-Carlo mean);
    None: the closed form of a linear decoder with a Normal likelihood.
    """
    loc, scale = params.value_loc.unsqueeze(-2), params.value_scale.unsqueeze(-2)  # (N, 1, K)
    if noise is None:
        if not _closed_form_available(model):
            raise ValueError("the closed form needs a linear decoder and the normal likelihood")
        linear = model.decoder.net[0]
        mean = linear(supports * loc)  # (N, U, D)
        variance = (supports * scale.pow(2)) @ linear.weight.pow(2).T  # (N, U, D)
        sigma = model.likelihood.scale()
        return (sigma.log() + 0.5 * math.log(2 * math.pi)
                + ((x.unsqueeze(-2) - mean).pow(2) + variance) / (2 * sigma.pow(2))).sum(-1)
    values = loc + scale * noise.unsqueeze(-2)  # (M, N, 1, K)
    nll = -model.likelihood.dist(model.decoder(supports * values)).log_prob(x.unsqueeze(-2))  # (M, N, U)
    return nll.mean(0)


def discrete_objective(model, guide, x, noise: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """``F`` (mean over rows) and its per-row terms, by enumeration over ``L`` and the slots.

    ``noise``: see :func:`expected_nll`. Differentiable with respect to the guide's parameters.
    """
    params = guide.amortize(x)
    terms = enumerated_terms(model, params)
    supports = terms["supports"]  # (S, levels, K)
    unique, inverse = torch.unique(supports.reshape(-1, supports.shape[-1]), dim=0, return_inverse=True)
    nll = expected_nll(model, x, params, unique, noise)[:, inverse].reshape(x.shape[0], *supports.shape[:2])
    recon = torch.einsum("ns,nl,nsl->n", terms["sequence_probs"], terms["level_probs"], nll)
    per_row = recon + terms["kl_count"] + terms["kl_slots"] + terms["kl_values"]
    return per_row.mean(), dict(terms, recon=recon, per_row=per_row)


def _float64_copies(model, guide):
    return copy.deepcopy(model).double(), copy.deepcopy(guide).double()


def reference_gradient(model, guide, x, value_samples: int, value_chunks: int, seed: int) -> dict:
    """The gradient of ``F`` with respect to the guide's parameters (flattened, float64).

    The expectation over ``v`` is a Monte-Carlo mean over ``value_samples`` draws in
    ``value_chunks`` equal chunks; each chunk gives a full estimate of ``F`` and of its
    gradient, whose spread over the chunks gives the standard errors ``F_se`` and ``grad_se``
    (per coordinate). With a linear decoder and a Normal likelihood, ``closed_F`` and
    ``closed_grad`` are the same quantities with the exact expectation over ``v``.
    """
    if value_samples % value_chunks:
        raise ValueError("value_samples must be a multiple of value_chunks")
    model64, guide64 = _float64_copies(model, guide)
    x64 = x.double()
    params = [p for _, p in guide64.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    per_chunk = value_samples // value_chunks
    values, grads = [], []
    for _ in range(value_chunks):
        noise = torch.randn(per_chunk, x.shape[0], model.spec.latent_dim, generator=generator, dtype=torch.float64)
        objective, _ = discrete_objective(model64, guide64, x64, noise)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, params)]))
        values.append(objective.detach())
    grads, values = torch.stack(grads), torch.stack(values)
    out = dict(grad=grads.mean(0), grad_se=grads.std(0) / math.sqrt(value_chunks), F=float(values.mean()),
               F_se=float(values.std() / math.sqrt(value_chunks)), closed_F=None, closed_grad=None)
    if _closed_form_available(model64):
        objective, _ = discrete_objective(model64, guide64, x64, None)
        out["closed_grad"] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective, params)])
        out["closed_F"] = float(objective.detach())
    return out


# ----------------------------------------------------------------------------- the library's estimates


def estimator_model_and_guide(s: dict, name: str, model, guide):
    """The configuration ``name`` built by the library and loaded with the parameters of ``model, guide``."""
    est_model, est_guide = build_model_and_guide(model_config(s, **ESTIMATORS[name]))
    if parameter_names(est_guide) != parameter_names(guide) or list(est_model.state_dict()) != list(model.state_dict()):
        raise RuntimeError(f"configuration {name!r} does not have the reference's parameter names")
    est_model.load_state_dict(model.state_dict())
    est_guide.load_state_dict(guide.state_dict())
    return est_model, est_guide


def library_estimates(model, guide, x, tau: float, replicates: int, seed: int) -> dict:
    """``replicates`` single-sample gradients of the library's loss per row, ``(R, P)`` float64.

    Also the loss values ``(R,)`` and the seconds per estimate (loss and gradient).
    """
    params = [p for _, p in guide.named_parameters()]
    grads = torch.empty(replicates, sum(p.numel() for p in params), dtype=torch.float64)
    losses = torch.empty(replicates, dtype=torch.float64)
    num_rows = x.shape[0]
    with torch.random.fork_rng(), without_pyro_validation(), pyro.settings.context(module_local_params=True):
        torch.manual_seed(seed)
        loss_fn = make_elbo(model.spec)(model, guide)
        start = time.perf_counter()
        for r in range(replicates):
            loss = loss_fn(x, tau_sparsity=tau, tau_support=tau) / num_rows
            grads[r] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
            losses[r] = loss.detach()
        seconds = (time.perf_counter() - start) / replicates
    return dict(grads=grads, losses=losses, seconds=seconds)


def summarize(grads: torch.Tensor, reference: torch.Tensor, reference_se: torch.Tensor) -> dict:
    """Bias, its noise floor, cosine and relative variance of the estimates ``grads (R, P)``."""
    mean = grads.mean(0)
    ref_norm = reference.norm()
    rel_variance = float((grads - mean).pow(2).sum(-1).mean() / ref_norm.pow(2))
    cosine = float(mean @ reference / (mean.norm() * ref_norm).clamp(min=1e-300))
    return dict(num_params=int(reference.numel()), bias=float((mean - reference).norm() / ref_norm),
                bias_floor=math.sqrt(rel_variance / grads.shape[0]), cosine=cosine, rel_variance=rel_variance,
                ref_norm=float(ref_norm), ref_rel_se=float(reference_se.norm() / ref_norm))


# ----------------------------------------------------------------------------- the run


def posterior_summary(guide, x) -> dict:
    """How peaked the guide's posteriors are in this setting (for the report)."""
    with torch.no_grad():
        params = guide.amortize(x)
        level = torch.distributions.Categorical(logits=params.sparsity_logits)
        slot_probs = params.slot_logits.softmax(-1)
        return dict(count_entropy=float(level.entropy().mean()), count_max_prob=float(level.probs.amax(-1).mean()),
                    slot_max_prob=float(slot_probs.amax(-1).mean()))


def run(s: dict, seed: int, log=print) -> dict:
    model, guide, x = build_setting(s, seed)
    slices = group_slices(guide)
    start = time.perf_counter()
    ref = reference_gradient(model, guide, x, s["value_samples"], s["value_chunks"], seed + 2)
    ref_seconds = time.perf_counter() - start
    closed = None
    if ref["closed_grad"] is not None:
        closed = float((ref["grad"] - ref["closed_grad"]).norm() / ref["closed_grad"].norm())
    log(f"reference: F = {ref['F']:.5f} (se {ref['F_se']:.2g}), relative se of the gradient "
        f"{float(ref['grad_se'].norm() / ref['grad'].norm()):.2g}, closed form in v: F = {ref['closed_F']}, "
        f"gradient distance {closed} ({ref_seconds:.1f} s)")
    rows = []
    for name in configurations(s):
        modes = ESTIMATORS[name]
        est_model, est_guide = estimator_model_and_guide(s, name, model, guide)
        for t_index, tau in enumerate(s["temperatures"]):
            out = library_estimates(est_model, est_guide, x, tau, s["replicates"],
                                    seed + 1000 * (t_index + 1) + 17 * list(ESTIMATORS).index(name))
            loss_mean = float(out["losses"].mean())
            loss_se = float(out["losses"].std() / math.sqrt(s["replicates"]))
            for group, index in slices.items():
                rows.append(dict(estimator=name, **{k: v for k, v in modes.items() if k != "slot_layout"}, tau=tau, replicates=s["replicates"], group=group,
                                 **summarize(out["grads"][:, index], ref["grad"][index], ref["grad_se"][index]),
                                 loss_mean=loss_mean, reference_F=ref["F"],
                                 loss_rel_bias=(loss_mean - ref["F"]) / abs(ref["F"]),
                                 loss_rel_se=loss_se / abs(ref["F"]), seconds_per_estimate=out["seconds"]))
            first = rows[-len(slices)]
            log(f"{name:>26} tau={tau:<4g} bias {first['bias']:.3f} (floor {first['bias_floor']:.3f}) "
                f"cos {first['cosine']:.3f} var {first['rel_variance']:.3g} {1e3 * out['seconds']:.1f} ms")
    return dict(rows=rows, reference=ref, reference_seconds=ref_seconds, closed_distance=closed,
                posterior=posterior_summary(guide, x), num_params=int(ref["grad"].numel()))


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})


def _cell(row: dict) -> str:
    return f"{row['bias']:.3f} [{row['bias_floor']:.3f}]"


def markdown(result: dict, s: dict, args, wall: float) -> str:
    ref, post = result["reference"], result["posterior"]
    by_key = {(r["estimator"], r["tau"], r["group"]): r for r in result["rows"]}
    ref_rel_se = float(ref["grad_se"].norm() / ref["grad"].norm())
    command = ("python -m benchmarks.gradient_estimators" + (" --quick" if args.quick else "")
               + (f" --guide {args.guide}" if args.guide != "mlp_per_slot" else ""))
    lines = [
        "# Gradient estimators of the discrete objective",
        "",
        f"Command: `{command}`; wall time {wall / 60:.1f} min, torch threads {torch.get_num_threads()} "
        f"({platform.processor() or platform.machine()}; torch {torch.__version__}, pyro-ppl {pyro.__version__}).",
        "",
        f"Setting: D = {s['input_dim']}, K = {s['latent_dim']}, L0 = {s['max_sparsity']}, {s['num_rows']} rows "
        f"from the model's prior, Normal likelihood (scale 0.5), linear decoder, guide `{s['guide']}` hidden "
        f"{list(s['guide_hidden'])} ({result['num_params']} guide parameters), seed {args.seed}. Guide posteriors: "
        f"mean entropy of q(L) {post['count_entropy']:.2f} nats, mean max q(L) {post['count_max_prob']:.2f}, "
        f"mean max slot probability {post['slot_max_prob']:.2f}.",
        "",
        f"Reference: F = {ref['F']:.4f} (standard error {ref['F_se']:.1g}) by enumeration of L and the "
        f"{math.perm(s['latent_dim'], s['max_sparsity'])} ordered slot picks, {s['value_samples']} value draws; "
        f"relative standard error of its gradient {ref_rel_se:.1g}"
        + (f"; relative distance from the closed form in v {result['closed_distance']:.1g} "
           f"(closed-form F = {ref['closed_F']:.4f})" if result["closed_distance"] is not None else "") + ".",
        "",
        f"{s['replicates']} single-sample estimates per table row. Cells `bias [floor]`: "
        "||mean - ref|| / ||ref||, and in brackets the noise floor sqrt(var / replicates), the bias an unbiased "
        "estimator shows from sampling alone. `cos`: cosine of the mean estimate with the reference. `var`: "
        "mean ||g - mean||^2 / ||ref||^2. `loss bias`: (mean loss - F) / |F|. Groups: all guide parameters, "
        "the count head (`encoder.sparsity_head`), the slot head (`encoder.slot_head`); the value head and "
        "more columns are in `gradient_estimators.csv`.",
        "",
        "| estimator | tau | all: bias [floor] | cos | var | count: bias [floor] | cos | var "
        "| slot: bias [floor] | cos | var | loss bias | ms / estimate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in configurations(s):
        for tau in s["temperatures"]:
            a, c, sl = (by_key[(name, tau, g)] for g in ("all", "count_head", "slot_head"))
            lines.append(
                f"| {name} | {tau:g} | {_cell(a)} | {a['cosine']:.3f} | {a['rel_variance']:.3g} "
                f"| {_cell(c)} | {c['cosine']:.3f} | {c['rel_variance']:.3g} "
                f"| {_cell(sl)} | {sl['cosine']:.3f} | {sl['rel_variance']:.3g} "
                f"| {a['loss_rel_bias']:+.4f} | {1e3 * a['seconds_per_estimate']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and 10 replicates (a smoke run)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guide", default="mlp_per_slot", choices=["mlp_per_slot", "mlp_shared_slots"],
                        help="the guide of the setting; mlp_shared_slots adds the gumbel_topk configurations")
    parser.add_argument("--replicates", type=int, default=None, help="estimates per estimator and temperature")
    parser.add_argument("--value-samples", type=int, default=None, help="value draws of the reference")
    parser.add_argument("--value-chunks", type=int, default=None, help="chunks of the reference's value draws")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = dict(settings(args.quick), guide=args.guide)
    for key in ("replicates", "value_samples", "value_chunks"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    start = time.perf_counter()
    result = run(s, args.seed)
    wall = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(result["rows"], args.out / "gradient_estimators.csv")
    text = markdown(result, s, args, wall)
    (args.out / "gradient_estimators.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
