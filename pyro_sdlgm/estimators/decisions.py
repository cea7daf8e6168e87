"""What the classifier predicts from its distributions: label scores (inclusion probabilities),
label sets (the plug-in F1-optimal sets or the top-``L_hat`` labels), and the temperature that
calibrates the count network.

Functions of one batch of prior-network parameters (:class:`~pyro_sdlgm.model.guides.GuideParams`:
``sparsity_logits (N, num_levels)``, ``slot_logits (N, 1 or L0, K)``), in ``N x K`` memory
(``N x L0 x C`` for the F1 sets over ``C`` candidates).
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import torch

from pyro_sdlgm.model.guides import GuideParams
from pyro_sdlgm.model.spec import ModelSpec
from pyro_sdlgm.model.support import greedy_picks, slot_gates, soft_support

logger = logging.getLogger(__name__)

#: how labels are ranked (see :func:`label_scores`) and how label sets are decided (see :func:`label_sets`)
Ranking = Literal["inclusion", "greedy"]
Decision = Literal["f1", "count"]
RANKINGS = get_args(Ranking)
DECISIONS = get_args(Decision)
#: the candidates of the F1-optimal decision: the best max(F1_CANDIDATES, 5 L0) labels by inclusion
F1_CANDIDATES = 50


def shared_inclusion(gates: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``1 - prod_l (1 - g_l p_k)`` for slots sharing one distribution ``probs``, without an ``(N, L0, K)`` tensor.

    Args:
        gates: ``(N, L0)`` slot gates ``P(L >= l)``.
        probs: ``(N, K)`` the slots' shared label probabilities.

    Returns:
        ``(N, K)``, equal to :func:`pyro_sdlgm.model.support.soft_support` of ``probs`` repeated for
        every slot (up to rounding), computed one slot at a time in ``N x K`` memory.
    """
    remaining = torch.ones_like(probs)
    for index in range(gates.shape[-1]):
        remaining.mul_(1.0 - gates[:, index:index + 1] * probs)
    return 1.0 - remaining


def distinct_draw_inclusion(probs: torch.Tensor, max_count: int, rest: torch.Tensor | None = None,
                            steps: int = 30) -> torch.Tensor:
    """``P(k in S | L = l)`` for ``l = 1..max_count`` distinct draws (successive sampling, the
    Plackett-Luce slots) from one distribution, approximated as ``1 - (1 - p_k)^t_l`` with
    ``t_l`` chosen so that the inclusion probabilities add up to ``l`` (the approximation of
    Hajek and Rosen for successive sampling; exact for ``l = 1`` and in the small-``p`` limit).
    Drawing with replacement (``t_l = l``) would add up to less than ``l``, the more so the
    more confident the model.

    Args:
        probs: ``(N, C)`` the probabilities of the ``C`` labels considered.
        max_count: ``L0``.
        rest: ``(N,)`` the probability mass outside them (default 0), whose inclusion is
            counted as linear in ``t``.
        steps: Newton steps for ``t`` (``f(t) = sum_k (1 - (1 - p_k)^t) + t rest - l`` is
            concave and increasing and ``f(l) <= 0``, so the steps from ``t = l`` rise
            monotonically to the root).

    Returns:
        ``(N, L0, C)``.
    """
    keep = (1.0 - probs).clamp(min=1e-6, max=1.0).double()  # (N, C): 1 - p, away from 0 for the log
    log_keep = keep.log()
    rest = torch.zeros(probs.shape[0], dtype=keep.dtype, device=probs.device) if rest is None else rest.double()
    target = torch.arange(1, max_count + 1, dtype=keep.dtype, device=probs.device).expand(probs.shape[0], -1)
    t = target.clone()  # (N, L0)
    for _ in range(steps):
        power = keep.unsqueeze(1) ** t.unsqueeze(-1)  # (N, L0, C)
        value = (1.0 - power).sum(-1) + t * rest.unsqueeze(-1) - target
        slope = -(power * log_keep.unsqueeze(1)).sum(-1) + rest.unsqueeze(-1)
        t = (t - value / slope.clamp(min=1e-12)).clamp(max=1e6)
    return (1.0 - keep.unsqueeze(1) ** t.unsqueeze(-1)).to(probs.dtype)


def f1_optimal_sets(count_probs: torch.Tensor, levels: torch.Tensor, conditional: torch.Tensor,
                    labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """The plug-in F1-optimal label sets of Dembczynski et al. (2011) under SDLGM's joint
    distribution of the count and the labels.

    With ``Delta_ik = sum_s 2 P(L = s) P(i in S | L = s) / (s + k)``, the best set of size
    ``k`` is the ``k`` labels of largest ``Delta_ik`` and its expected example-F1 is their sum
    (``P(L = 0)`` for the empty set); each row takes the size of largest expected F1.
    Vectorized over the sizes ``k = 1..L0``: memory ``N x L0 x C``.

    Args:
        count_probs: ``(N, num_levels)`` ``P(L = s | x)`` over ``levels`` ``(num_levels,)``.
        conditional: ``(N, L0, C)`` ``P(label labels[n, c] in S | L = l + 1)``.
        labels: ``(N, C)`` the label indices ``conditional`` is about (the best candidates:
            a label outside them is taken to have ``P(i in S) ~ 0``).
        num_labels: ``K``.

    Returns:
        ``(N, K)`` int8 0/1.
    """
    n, max_count, _ = conditional.shape
    with_zero = int(levels[0]) == 0
    joint = count_probs[:, int(with_zero):, None] * conditional  # (N, L0, C): P(L = s, i in S)
    sizes = torch.arange(1, max_count + 1, dtype=joint.dtype, device=joint.device)
    weights = 2.0 / (levels[int(with_zero):].to(joint.dtype)[:, None] + sizes[None, :])  # (s, k)
    delta = torch.einsum("nsc,sk->nkc", joint, weights)  # (N, L0 sizes, C)
    ranked, order = delta.sort(dim=-1, descending=True, stable=True)
    value = ranked.cumsum(-1).diagonal(dim1=1, dim2=2)  # (N, L0): the top-k sum for size k
    if with_zero:
        value = torch.cat([count_probs[:, :1], value], dim=-1)
    size = value.argmax(-1) + (0 if with_zero else 1)  # (N,)
    best = order[torch.arange(n, device=order.device), (size - 1).clamp(min=0)]  # (N, C) of the chosen size
    keep = torch.arange(best.shape[-1], device=best.device) < size.unsqueeze(-1)
    chosen = labels.gather(-1, best)
    return torch.zeros(n, num_labels, dtype=torch.int8, device=labels.device).scatter_(-1, chosen,
                                                                                       keep.to(torch.int8))


def label_scores(params: GuideParams, spec: ModelSpec, ranking: str = "inclusion") -> torch.Tensor:
    """Label scores ``(N, K)`` of one batch of prior-network parameters, in ``[0, 1]`` (``ranking="inclusion"``): ``1 - prod_l (1 - g_l p_lk)``,
    the probability that a slot in use selects label ``k`` with the slots taken as independent;
    or (``"greedy"``) the labels the zero-temperature slot selection picks (slots 1..L0, in
    order) first, the rest by inclusion.

    With shared slot logits the inclusion probability is accumulated one slot at a time,
    so no ``(N, L0, K)`` tensor is built: memory ``N x K``.
    """
    n, k = params.slot_logits.shape[0], spec.latent_dim
    gates = slot_gates(params.sparsity_logits.softmax(-1), spec.min_level)  # P(L >= l)
    if params.slot_logits.shape[1] == 1:
        inclusion = shared_inclusion(gates, params.slot_logits[:, 0].softmax(-1))
    else:
        probs = params.slot_logits.softmax(-1).expand(n, spec.max_sparsity, k)
        inclusion = soft_support(gates, probs)  # P(a slot in use selects the label), in [0, 1]
    if ranking == "inclusion":
        return inclusion
    picks = greedy_picks(params.slot_logits, spec.max_sparsity)  # (N, L0), in slot order
    rank_scores = torch.arange(spec.max_sparsity, 0, -1, device=inclusion.device, dtype=inclusion.dtype)
    return inclusion.scatter(-1, picks, 1.0 + rank_scores.expand(n, -1))


def label_sets(params: GuideParams, spec: ModelSpec, ranking: str, decision: str, guide) -> torch.Tensor:
    """The label sets ``(N, K)`` int8 of one batch: with ``decision="f1"`` the F1-optimal sets
    (:func:`f1_optimal_sets` over the best ``max(F1_CANDIDATES, 5 L0)`` labels by
    :func:`label_scores`), with ``"count"`` the top-``L_hat`` labels (with ``ranking="greedy"``
    the ``guide``'s zero-temperature slot picks)."""
    levels = spec.levels().to(params.sparsity_logits.device)
    if decision == "f1":
        scores = label_scores(params, spec, ranking)
        labels = scores.topk(min(spec.latent_dim, max(F1_CANDIDATES, 5 * spec.max_sparsity)), dim=-1).indices
        heads = params.slot_logits.shape[1]  # 1 (shared) or L0
        probs = params.slot_logits.softmax(-1)
        picked = probs.gather(-1, labels.unsqueeze(1).expand(-1, heads, -1))  # (N, heads, C), never (N, L0, K)
        if heads == 1:  # l distinct draws from one distribution
            conditional = distinct_draw_inclusion(picked[:, 0], spec.max_sparsity,
                                                  (1.0 - picked[:, 0].sum(-1)).clamp(min=0.0))
        else:  # slot l draws from its own distribution (taken as independent of the others)
            conditional = 1.0 - torch.cumprod(1.0 - picked, dim=1)  # P(k in S | L = l + 1)
        return f1_optimal_sets(params.sparsity_logits.softmax(-1), levels, conditional, labels, spec.latent_dim)
    if ranking == "greedy":
        return guide.hard_code(params)[0].to(torch.int8)
    counts = levels[params.sparsity_logits.argmax(-1)]
    scores = label_scores(params, spec, ranking)
    order = scores.topk(spec.max_sparsity, dim=-1).indices  # (N, L0), best first
    keep = torch.arange(order.shape[-1], device=order.device) < counts.unsqueeze(-1)
    return torch.zeros_like(scores, dtype=torch.int8).scatter_(-1, order, keep.to(torch.int8))


def fit_temperature(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The temperature ``T`` that minimizes ``mean -log softmax(logits / T)[target]`` (Guo et al., 2017):
    a bounded 1-D search over ``log T`` in ``[-4, 4]`` (scipy's ``minimize_scalar``).

    Args:
        logits: ``(M, num_levels)`` count logits, float64.
        target: ``(M,)`` the level index of each row's count.
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / np.exp(log_t), target))

    temperature = float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))
    logger.info("count temperature %.3g (validation NLL %.4g at 1, %.4g after)", temperature, nll(0.0),
                nll(np.log(temperature)))
    return temperature
