"""Why a row got its sparsity: per-prefix hard reconstructions, the count they support, dimension effects.

For each row and each whole count ``l``, the *prefix code* is the hard code with the first
``l`` greedy slot picks (the zero-temperature selection :meth:`AmortizedGuide.hard_code`
uses) and the guide's mean values. Its reconstruction cost ``R_l = -log p(x | decoder(z_l))``
and the discrete KL of its ``l`` slots along the same picks, ``KL_{1..l}``, give the count
the data support for that row, ``argmin_l R_l + KL_{1..l}``: the count that would minimise
the hard code's share of the negative ELBO. Comparing it with ``L_hat`` (the mode of
``q(L|x)``) tells whether the count network follows the reconstructions.

Dimension effects: the size of what one dimension adds to the empty code's output,
``||E[x | z = v_k e_k] - E[x | z = 0]||`` with ``v_k`` its mean value in the hard codes that
use it, next to how often the hard codes use it; a dimension that matters but is unused, or
is used but changes nothing, is a sign of a poor optimum.

:func:`refined_count_logits` turns the same terms into a count posterior: given the hard
supports and values, ``q*(L = l | x) ∝ p(L = l) exp(-R_l - KL_{1..l})`` is the ``q(L | x)``
that maximises the ELBO (the coordinate-ascent update of mean-field VI), which the model
option ``count_estimate="refined"`` uses in place of the count network's ``q(L | x)``. The
KL terms are the discrete ones of slots drawn without replacement, so it is that update for
``objective="discrete_kl"`` with ``slot_selection="without_replacement"`` (the defaults); with
other options it is the same formula, not the trained objective's update. It is only as good
as the decoder's reconstructions: on the recovery benchmark with an overfitting MLP decoder it
tracked the true counts worse than the count network (``experiments/NOTES.md``).

Plain torch on the fitted networks; nothing here places Pyro sites.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from pyro_sdlgm.model.distributions import slot_sequence_kl
from pyro_sdlgm.model.support import MASKED_LOGIT, greedy_picks
from pyro_sdlgm.model.support_steps import SparseCode


def _slot_kls(slot_logits: torch.Tensor, prior_logits: torch.Tensor, picks: torch.Tensor,
              wide: bool = False) -> torch.Tensor:
    """Discrete KL of each slot along the greedy picks (earlier picks masked in both), ``(N, L0)``.

    ``wide`` (shared logits only): in one ``O(K)`` pass (:func:`slot_sequence_kl`), equal up to rounding."""
    n, num_heads, k = slot_logits.shape
    if wide and num_heads == 1:
        return slot_sequence_kl(slot_logits[:, 0], prior_logits.expand(n, k), picks)
    taken = torch.zeros(n, k, dtype=torch.bool, device=slot_logits.device)
    rows = torch.arange(n, device=slot_logits.device)
    kls = []
    for index in range(picks.shape[1]):
        q = slot_logits[:, min(index, num_heads - 1)].masked_fill(taken, MASKED_LOGIT).log_softmax(-1)
        p = prior_logits.expand(n, k).masked_fill(taken, MASKED_LOGIT).log_softmax(-1)
        kls.append((q.exp() * (q - p)).sum(-1))
        taken[rows, picks[:, index]] = True
    return torch.stack(kls, -1)


@torch.no_grad()
def prefix_costs(model, params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, KL)``, both ``(N, num_levels)``: the hard reconstruction cost ``R_l`` of each row's
    prefix code with ``l`` slots, and the discrete KL ``KL_{1..l}`` of those slots (cumulative)."""
    spec = model.spec
    wide = spec.support_step.sparse_code  # sparse prefix codes and O(K) slot KLs (slot_layout="gumbel_topk")
    picks = greedy_picks(params.slot_logits, spec.max_sparsity, sorted_shared=wide)  # (N, L0)
    levels = spec.levels(device=x.device)
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    if wide:
        values = (torch.ones(n, spec.max_sparsity, device=x.device) if params.value_loc is None
                  else params.value_loc.gather(-1, picks))
        used = torch.arange(spec.max_sparsity, device=x.device)
        costs = [-model.likelihood.dist(model.decoder(SparseCode(picks, values * (used < level), spec.latent_dim)))
                 .log_prob(x) for level in levels.tolist()]
    else:
        values = torch.ones(n, spec.latent_dim, device=x.device) if params.value_loc is None else params.value_loc
        code = torch.zeros(n, spec.latent_dim, device=x.device)
        costs = []
        for level in levels.tolist():  # one level at a time: (N, K) codes, never (N, levels, K)
            if level > 0:
                pick = picks[:, level - 1]
                code[rows, pick] = values[rows, pick]
            costs.append(-model.likelihood.dist(model.decoder(code)).log_prob(x))
    recon = torch.stack(costs, -1)
    kls = _slot_kls(params.slot_logits, model.support_prior.logits(), picks, wide)  # (N, L0)
    cumulative = torch.cat([torch.zeros(n, 1, device=x.device), kls.cumsum(-1)], -1)  # KL of 0..L0 slots
    return recon, cumulative[:, levels]


@torch.no_grad()
def refined_count_logits(model, params, x: torch.Tensor) -> torch.Tensor:
    """``log p(L = l) - R_l - KL_{1..l}`` ``(N, num_levels)``: the optimal ``q(L | x)`` given the rows'
    hard supports and mean values (one exact coordinate-ascent step of mean-field VI for ``L``)."""
    recon, slot_kl = prefix_costs(model, params, x)
    return model.sparsity_prior.logits().log_softmax(-1) - recon - slot_kl


@torch.no_grad()
def prefix_terms(model, params, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-prefix terms of one batch ``x (N, D)`` with the guide's parameters ``params``.

    Returns ``recon (N, num_levels)`` (``R_l``), ``slot_kl (N, num_levels)`` (``KL_{1..l}``,
    cumulative), ``l_hat (N,)`` (the mode of ``params.sparsity_logits``) and ``best (N,)`` (the
    level value minimising ``R_l + KL_{1..l}``).
    """
    levels = model.spec.levels(device=x.device)
    recon, slot_kl = prefix_costs(model, params, x)
    return {"recon": recon, "slot_kl": slot_kl, "l_hat": levels[params.sparsity_logits.argmax(-1)],
            "best": levels[(recon + slot_kl).argmin(-1)]}


def summarize_prefixes(terms: dict[str, np.ndarray], levels: np.ndarray) -> dict:
    """Headline numbers of :func:`prefix_terms` over rows: how ``L_hat`` relates to the supported count."""
    l_hat, best = terms["l_hat"], terms["best"]
    return {
        "levels": levels.tolist(),
        "mean_recon_by_level": terms["recon"].mean(0).tolist(),
        "mean_slot_kl_by_level": terms["slot_kl"].mean(0).tolist(),
        "mean_l_hat": float(l_hat.mean()),
        "mean_best_count": float(best.mean()),
        "l_hat_equals_best": float((l_hat == best).mean()),
        "l_hat_minus_best": float((l_hat - best).mean()),
        "l_hat_abs_error": float(np.abs(l_hat - best).mean()),
    }


@torch.no_grad()
def dimension_effects(model, codes, chunk: int = 1024) -> dict[str, np.ndarray]:
    """What each dimension does, from hard codes ``(N, K)``: ``effect (K,)`` and ``usage (K,)``.

    ``effect[k] = ||E[x | z = v_k e_k] - E[x | z = 0]||_2`` with ``v_k`` the mean non-zero value
    of dimension ``k`` in ``codes`` (1 where it is never used, or in binary mode);
    ``usage[k]`` the fraction of rows whose code uses ``k``. ``codes`` is a dense array or a
    scipy sparse matrix; with a sparse one, the one-dimension codes reach the decoder as
    :class:`SparseCode` (one gathered column each), so nothing of size ``(chunk, K)`` is built.
    """
    k = model.spec.latent_dim
    sparse = scipy.sparse.issparse(codes)
    if sparse:
        codes = scipy.sparse.csr_matrix(codes)
        codes.eliminate_zeros()
        hits = np.bincount(codes.indices, minlength=k)
        sums = np.bincount(codes.indices, weights=codes.data, minlength=k)
        usage = hits / codes.shape[0]
        values = np.where(hits > 0, sums / np.maximum(hits, 1), 1.0)
    else:
        active = codes != 0
        usage = active.mean(0)
        values = np.where(active.any(0), codes.sum(0) / np.maximum(active.sum(0), 1), 1.0)
    device = next(model.decoder.parameters()).device
    empty = model.likelihood.mean(model.decoder(torch.zeros(1, k, device=device)))
    effect = np.empty(k)
    for start in range(0, k, chunk):  # (chunk, K) codes at a time, not (K, K)
        dims = torch.arange(start, min(start + chunk, k), device=device)
        value = torch.as_tensor(values[start:start + len(dims)], dtype=torch.float32, device=device)
        if sparse:
            z = SparseCode(dims.unsqueeze(-1), value.unsqueeze(-1), k)
        else:
            z = torch.zeros(len(dims), k, device=device)
            z[torch.arange(len(dims)), dims] = value
        effect[start:start + len(dims)] = (model.likelihood.mean(model.decoder(z)) - empty).norm(dim=-1).cpu().numpy()
    return {"effect": effect, "usage": usage, "value": values}
