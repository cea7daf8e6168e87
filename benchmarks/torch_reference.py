"""A hand-written PyTorch loss of the SDLGM, equal to the library's Pyro loss.

The library trains with ``AnalyticKLELBO()(model, guide)`` (``objective="discrete_kl"``,
relaxed sparsity; the estimate of ``TraceMeanField_ELBO``, bit for bit). This module computes the same number with plain tensor operations and
the same networks (the model's and the guide's own modules), so that timing both measures
Pyro's own overhead (traces, messengers, distribution objects, validation) and nothing else:

- the same reparameterized draws, in the same order as the Pyro guide (``sparsity``,
  ``slot_1..slot_L0``, ``values``), drawn the way ``torch.distributions`` draws them
  (ExpConcrete: clamped uniforms, Gumbel noise, log-normalized scores; Normal:
  ``loc + scale * eps``), so that for the same seed the two losses are equal;
- slots drawn without replacement (the dimensions earlier slots peaked on get
  :data:`~pyro_sdlgm.model.support.MASKED_LOGIT`, in the guide and in the prior);
- analytic KL terms where ``TraceMeanField_ELBO`` uses them: the categorical KL of the
  sparsity and of each slot (the KL registered for ``DiscreteKLExpRelaxedCategorical``), each
  slot's KL scaled by its gate ``max(P(L >= l), 1e-6)`` as ``model.sample_slots`` does with
  ``poutine.scale``, and the Normal KL of the values;
- the likelihood: Bernoulli on the decoder's logits (unsupervised) or
  ``Bernoulli(eps + (1 - 2 eps) s)`` on the labels (multi-label);
- the same scaling: likelihood and KL terms times ``num_data / batch``, KL terms times
  ``kl_weight``.

``tests/benchmarks/test_benchmarks.py`` checks that the losses and their gradients agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyro_sdlgm.model.distributions import GATE_FLOOR
from pyro_sdlgm.model.support import MASKED_LOGIT, exclude_taken, mark_taken, slot_gates, soft_support, taken_before


def _normalize(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities from logits, as ``torch.distributions.Categorical`` normalizes them."""
    return logits - logits.logsumexp(-1, keepdim=True)


def _clamp_probs(u: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(u.dtype).eps
    return u.clamp(min=eps, max=1 - eps)


def exp_concrete_rsample(log_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """A log-space Concrete sample given normalized logits, drawn as ``ExpRelaxedCategorical.rsample``."""
    uniforms = _clamp_probs(torch.rand(log_probs.shape, dtype=log_probs.dtype, device=log_probs.device))
    gumbels = -((-(uniforms.log())).log())
    scores = (log_probs + gumbels) / tau
    return scores - scores.logsumexp(dim=-1, keepdim=True)


def categorical_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``KL(Cat(q) || Cat(p))`` over the last dim from normalized logits."""
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def sparse_support_and_kl(spec, q_sparsity_logits, p_sparsity_logits, q_slot_logits, p_slot_logits,
                          tau_sparsity: float, tau_support: float):
    """Draw ``L`` and the slots, return the soft support ``(N, K)`` and the per-row KL ``(N,)``.

    Args:
        spec: the model's :class:`~pyro_sdlgm.model.spec.ModelSpec`.
        q_sparsity_logits: ``(N, levels)`` guide logits of ``L``.
        p_sparsity_logits: prior logits of ``L``, ``(levels,)`` or ``(N, levels)``.
        q_slot_logits: ``(N, S, K)`` guide slot logits (``S`` 1 or ``L0``).
        p_slot_logits: prior slot logits, ``(K,)`` or ``(N, S, K)``.

    The KL is that of the sparsity plus the gate-scaled KL of each slot (before ``kl_weight``
    and the data scale).
    """
    n = q_sparsity_logits.shape[0]
    log_q_level = _normalize(q_sparsity_logits)
    log_p_level = _normalize(p_sparsity_logits.expand_as(q_sparsity_logits))
    sparsity = exp_concrete_rsample(log_q_level, tau_sparsity)
    kl = categorical_kl(log_q_level, log_p_level)
    gates = slot_gates(sparsity.exp(), spec.min_level)
    without_replacement = spec.slot_selection == "without_replacement"
    k = spec.latent_dim
    if spec.slot_layout == "joint":
        selections, slot_kl = joint_slots(q_slot_logits, p_slot_logits, n, spec.max_sparsity, k, tau_support,
                                          without_replacement)
        return soft_support(gates, selections), kl + (gates.clamp(min=GATE_FLOOR) * slot_kl).sum(-1)
    taken, selections = None, []
    for index in range(spec.max_sparsity):
        q_logits = q_slot_logits[:, min(index, q_slot_logits.shape[1] - 1)]
        if p_slot_logits.dim() == 1:
            p_logits = p_slot_logits.expand(n, k)
        else:
            p_logits = p_slot_logits[:, min(index, p_slot_logits.shape[1] - 1)]
        if without_replacement:
            q_logits = exclude_taken(q_logits, taken)
            p_logits = exclude_taken(p_logits, taken)
        log_q, log_p = _normalize(q_logits), _normalize(p_logits)
        selection = exp_concrete_rsample(log_q, tau_support).exp()
        kl = kl + gates[..., index].clamp(min=GATE_FLOOR) * categorical_kl(log_q, log_p)
        selections.append(selection)
        if without_replacement:
            taken = mark_taken(taken, selection)
    support = soft_support(gates, torch.stack(selections, dim=-2))
    return support, kl


def joint_slots(q_slot_logits, p_slot_logits, n: int, num_slots: int, k: int, tau: float,
                without_replacement: bool):
    """All slots at once, as ``slot_layout="joint"`` draws them: ``(selections (N, L0, K), KL (N, L0))``."""
    shape = (n, num_slots, k)
    q_logits = q_slot_logits.expand(shape)
    p_logits = (p_slot_logits.expand(n, 1, k) if p_slot_logits.dim() == 1 else p_slot_logits).expand(shape)
    # uniforms slot by slot, as the per-slot layout draws them
    uniforms = _clamp_probs(torch.rand((num_slots, n, k), dtype=q_logits.dtype, device=q_logits.device))
    gumbels = -((-(uniforms.movedim(0, -2).log())).log())
    if without_replacement:
        taken = taken_before(q_logits + gumbels)
        q_logits, p_logits = q_logits.masked_fill(taken, MASKED_LOGIT), p_logits.masked_fill(taken, MASKED_LOGIT)
    log_q, log_p = _normalize(q_logits), _normalize(p_logits)
    scores = (log_q + gumbels) / tau
    return (scores - scores.logsumexp(-1, keepdim=True)).exp(), categorical_kl(log_q, log_p)


def normal_kl(q_loc, q_scale, p_loc, p_scale) -> torch.Tensor:
    """``KL(N(q) || N(p))`` summed over the last dim, as ``torch.distributions`` computes it."""
    var_ratio = (q_scale / p_scale).pow(2)
    t1 = ((q_loc - p_loc) / p_scale).pow(2)
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)


def _check_supported(spec) -> None:
    if spec.sparsity_inference != "relaxed" or spec.objective != "discrete_kl":
        raise NotImplementedError("the PyTorch reference covers sparsity_inference='relaxed' with "
                                  "objective='discrete_kl' (TraceMeanField_ELBO) only")


def unsupervised_loss(model, guide, x: torch.Tensor, *, num_data: int | None = None, tau_sparsity: float = 1.0,
                      tau_support: float = 1.0, kl_weight: float = 1.0) -> torch.Tensor:
    """Negative ELBO of the unsupervised SDLGM (``SDLGMModel`` with an ``MLPGuide``), as ``TraceMeanField_ELBO``.

    Same value and gradients as ``TraceMeanField_ELBO()(model, guide)(x, num_data=..., ...)``
    for the same RNG state. Supports the Bernoulli likelihood (hand-written) and Normal values
    (or binary codes); other likelihoods are scored by their own distribution object.
    """
    spec = model.spec
    _check_supported(spec)
    n = x.shape[0]
    scale = (num_data if num_data is not None else n) / n
    params = guide.amortize(x)
    support, kl = sparse_support_and_kl(spec, params.sparsity_logits, model.sparsity_prior.logits(),
                                        params.slot_logits, model.support_prior.logits(), tau_sparsity, tau_support)
    if spec.binary:
        z = support
    else:
        prior = model.value_prior
        if type(prior).__name__ != "NormalValues":
            raise NotImplementedError("the PyTorch reference needs the normal value prior (analytic KL)")
        eps = torch.empty(params.value_loc.shape, dtype=params.value_loc.dtype,
                          device=params.value_loc.device).normal_()
        values = params.value_loc + eps * params.value_scale
        kl = kl + normal_kl(params.value_loc, params.value_scale, prior.loc, prior.scale)
        z = support * values
    out = model.decoder(z)
    if type(model.likelihood).__name__ == "BernoulliLikelihood":
        log_lik = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
    else:
        log_lik = model.likelihood.dist(out).log_prob(x)
    return scale * (kl_weight * kl.sum() - log_lik.sum())


def multilabel_loss(model, guide, x: torch.Tensor, y: torch.Tensor, *, num_data: int | None = None,
                    tau_sparsity: float = 1.0, tau_support: float = 1.0, kl_weight: float = 1.0) -> torch.Tensor:
    """Negative ELBO of the multi-label SDLGM (``ConditionalSDLGMModel`` with a label-aware guide).

    Same value and gradients as ``TraceMeanField_ELBO()(model, guide)(x, y, num_data=..., ...)``
    for the same RNG state.
    """
    spec = model.spec
    _check_supported(spec)
    n = x.shape[0]
    scale = (num_data if num_data is not None else n) / n
    q = guide.amortize(x, y)
    p = model.prior_params(x)
    support, kl = sparse_support_and_kl(spec, q.sparsity_logits, p.sparsity_logits, q.slot_logits, p.slot_logits,
                                        tau_sparsity, tau_support)
    eps = model.label_noise
    probs = _clamp_probs(eps + (1.0 - 2.0 * eps) * support)
    logits = torch.log(probs) - torch.log1p(-probs)
    log_lik = -F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1)
    return scale * (kl_weight * kl.sum() - log_lik.sum())
