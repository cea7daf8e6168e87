"""Encode-time inference: a matching pursuit through the fitted decoder (``encoding="pursuit"``).

The amortized guide gives every row its support in one pass; on data the defaults were not tuned
for its picks and their order limit the count (``experiments/NOTES.md``). The pursuit infers each
row's code from the fitted model itself, as orthogonal matching pursuit does with a dictionary:

1. start from the empty code;
2. add the dimension whose predicted gain is largest: ``g_k^2 / h_k``, with ``g`` the gradient of
   ``-log p(x | decoder(z))`` with respect to the code and ``h_k`` the Gauss-Newton curvature
   along dimension ``k`` (its atom ``decoder(e_k) - decoder(0)`` weighted by the likelihood's
   curvature at the current output); in binary mode the best of the ``BINARY_CANDIDATES`` highest
   is taken by its exact cost;
3. refit the values of the prefix (damped Gauss-Newton steps on ``-log p(x | decoder(z)) - log p(v)``,
   from the earlier values and the new value's Newton step) and record its cost ``R_l``;
4. repeat up to ``L0`` dimensions.

The count is the posterior over the prefixes, ``q*(L = l | x) ∝ p(L = l) exp(-R_l - C_l + P_l)``:
``C_l`` is ``-log`` the support prior's probability of the first ``l`` picks, drawn without
replacement (``sum_{j<l} log(K - j)`` for the uniform prior), and ``P_l`` the value prior's log
density of the prefix's values relative to the empty code. It is the coordinate-ascent update of
``q(L | x)`` given one support and one set of values per prefix, as ``count_estimate="refined"``
is for the guide's.

A batch costs ``L0`` gradient passes and, for the values, up to ``GN_ITERATIONS`` Gauss-Newton
steps a prefix, each ``l + 2`` backward passes (the Jacobian in the prefix's ``l`` values); the
codes are ``(N, K)`` blocks, so it is for dense layouts (``K`` up to
:data:`~pyro_sdlgm.model.spec.WIDE_LATENT_DIM`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.support import MASKED_LOGIT

#: in binary mode, how many of the highest predicted gains are scored by their exact cost
BINARY_CANDIDATES = 8
#: refitted values start at the Newton step, clipped to this many prior scales
START_CLIP = 3.0
#: Gauss-Newton iterations that refit each prefix's values (one is exact for a linear decoder), and
#: their damping (a fraction of the mean curvature)
GN_ITERATIONS = 5
GN_DAMPING = 1e-4
#: the gap between consecutive picks' slot logits, so that greedy selection replays the pursuit order
PICK_LOGIT_GAP = 50.0


class Pursuit(NamedTuple):
    """The pursuit of a batch of ``N`` rows.

    Attributes:
        picks: ``(N, L0)`` dimensions in the order they were added.
        values: ``(N, L0, L0)``: row ``l - 1`` holds the refitted values of the prefix with ``l``
            picks (zeros after position ``l``); None in binary mode.
        costs: ``(N, L0 + 1)``, ``R_0 .. R_L0``, the cost ``-log p(x | decoder(z_l))`` of each prefix.
    """

    picks: torch.Tensor
    values: torch.Tensor | None
    costs: torch.Tensor


def check_pursuit(spec) -> None:
    """Raise :class:`ConfigError` if the model's layout cannot run the pursuit (sparse codes at width)."""
    if spec.support_step.sparse_code:
        raise ConfigError(
            f"encoding='pursuit' builds (N, K) codes; it is for dense slot layouts, not "
            f"{spec.slot_layout!r} at latent_dim={spec.latent_dim}: use encoding='amortized'")


def _nll(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return -model.likelihood.dist(model.decoder(z)).log_prob(x)


def _gradient_and_curvature(model, x, z, atoms):
    """``g (N, K)``, the gradient of the cost at ``z``, and ``h (N, K)``, its Gauss-Newton curvature per dimension."""
    z = z.detach().requires_grad_(True)
    out = model.decoder(z)
    grad_out, curvature = _output_terms(model, x, out)
    g, = torch.autograd.grad(out, z, grad_out)
    return g, (curvature @ atoms.pow(2).T).clamp_min(1e-12)


def _value_cost(model, z: torch.Tensor) -> torch.Tensor:
    """``-log p(z) + log p(0)`` under the value prior, ``(N,)``."""
    prior = model.value_prior.dist(z.shape[0])
    return prior.log_prob(torch.zeros_like(z)) - prior.log_prob(z)


def _output_terms(model, x, out):
    """The cost's gradient ``(N, outputs)`` and diagonal curvature in the decoder's output ``out``."""
    out = out.detach().requires_grad_(True)
    nll = -model.likelihood.dist(out).log_prob(x).sum()
    grad, = torch.autograd.grad(nll, out, create_graph=True)
    # the cost is a sum over features, so its Hessian in the decoder's output is diagonal
    curvature, = torch.autograd.grad(grad.sum(), out)
    return grad.detach(), curvature.clamp_min(0)


def _prefix_cost(model, x, picks, v):
    z = torch.zeros(x.shape[0], model.spec.latent_dim, device=x.device).scatter(-1, picks, v)
    return _nll(model, x, z) + _value_cost(model, z)


def _refit(model, x, picks, start, iterations: int) -> torch.Tensor:
    """Values ``(N, l)`` of the dimensions ``picks (N, l)``: damped Gauss-Newton steps from ``start``
    on ``-log p(x | decoder(z)) - log p(v)``, a step kept for the rows whose cost it lowers."""
    n, k, l = x.shape[0], model.spec.latent_dim, picks.shape[1]
    eye = torch.eye(l, device=x.device)

    def decode(v):
        return model.decoder(torch.zeros(n, k, device=x.device).scatter(-1, picks, v))

    v = start.detach().clone()
    cost = _prefix_cost(model, x, picks, v)
    for _ in range(iterations):
        # the decoder's Jacobian in each row's values, (N, outputs, l), by the double-vjp identity
        # J u = d/dw (J^T w . u): one backward pass a value (forward mode would load torch's
        # TorchScript decompositions)
        vv = v.clone().requires_grad_(True)
        out = decode(vv)
        w = torch.zeros_like(out, requires_grad=True)
        transposed, = torch.autograd.grad(out, vv, w, create_graph=True)
        jac = torch.stack([torch.autograd.grad(transposed, w, eye[j].expand(n, l), retain_graph=True)[0]
                           for j in range(l)], -1)
        out = out.detach()
        grad_out, curvature = _output_terms(model, x, out)
        vv = v.clone().requires_grad_(True)
        z = torch.zeros(n, k, device=x.device).scatter(-1, picks, vv)
        prior_grad, = torch.autograd.grad(_value_cost(model, z).sum(), vv, create_graph=True)
        prior_curvature, = torch.autograd.grad(prior_grad.sum(), vv, allow_unused=True)
        prior_curvature = torch.zeros_like(v) if prior_curvature is None else prior_curvature.clamp_min(0)
        hessian = jac.transpose(1, 2) @ (curvature.unsqueeze(-1) * jac) + torch.diag_embed(prior_curvature)
        hessian = hessian + GN_DAMPING * hessian.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True).unsqueeze(-1) * eye
        gradient = (jac.transpose(1, 2) @ grad_out.unsqueeze(-1)).squeeze(-1) + prior_grad.detach()
        proposal = v - torch.linalg.solve(hessian, gradient)
        proposed = _prefix_cost(model, x, picks, proposal)
        better = proposed < cost
        v = torch.where(better.unsqueeze(-1), proposal, v)
        cost = torch.where(better, proposed, cost)
        if not better.any():
            break
    return v.detach()


def decoder_atoms(model) -> torch.Tensor:
    """``decoder(e_k) - decoder(0)`` for every dimension, ``(K, decoder outputs)``."""
    k = model.spec.latent_dim
    device = next(model.decoder.parameters()).device
    with torch.no_grad():
        return model.decoder(torch.eye(k, device=device)) - model.decoder(torch.zeros(1, k, device=device))


def _binary_pick(model, x, z, gain, taken):
    """The dimension among the highest predicted gains whose addition lowers the cost most, ``(N,)``."""
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    candidates = gain.topk(min(BINARY_CANDIDATES, gain.shape[-1]), dim=-1).indices  # (N, C)
    costs = []
    with torch.no_grad():
        for c in range(candidates.shape[1]):
            trial = z.clone()
            trial[rows, candidates[:, c]] = 1.0
            cost = _nll(model, x, trial)
            costs.append(cost.masked_fill(taken[rows, candidates[:, c]], float("inf")))
    return candidates[rows, torch.stack(costs, -1).argmin(-1)]


def pursue(model, x: torch.Tensor, *, iterations: int = GN_ITERATIONS, atoms: torch.Tensor | None = None) -> Pursuit:
    """Greedy pursuit of the rows ``x (N, D)`` through ``model``'s decoder (see the module docstring).

    ``iterations`` Gauss-Newton steps refit each prefix's values; ``atoms`` (``(K, D)``,
    :func:`decoder_atoms`) may be passed to reuse them across batches.
    """
    spec = model.spec
    check_pursuit(spec)
    n, k, l0 = x.shape[0], spec.latent_dim, spec.max_sparsity
    device = x.device
    rows = torch.arange(n, device=device)
    atoms = decoder_atoms(model) if atoms is None else atoms
    norms = atoms.norm(dim=-1)
    dead = norms <= 1e-3 * norms.max()  # dimensions that change nothing are never picked
    picks = torch.zeros(n, l0, dtype=torch.long, device=device)
    taken = dead.expand(n, k).clone()
    z = torch.zeros(n, k, device=device)
    values = None if spec.binary else torch.zeros(n, l0, l0, device=device)
    with torch.no_grad():
        costs = [_nll(model, x, z)]
    clip = START_CLIP * float(model.value_prior.dist(1).variance.sqrt().max()) if not spec.binary else 0.0
    with torch.enable_grad():
        for j in range(l0):
            g, h = _gradient_and_curvature(model, x, z, atoms)
            if spec.binary:  # a value of 1: the second-order change of the cost, most negative first
                gain = (-(g + 0.5 * h)).masked_fill(taken, -float("inf"))
                pick = _binary_pick(model, x, z, gain, taken)
            else:
                gain = (g.pow(2) / h).masked_fill(taken, -1.0)
                pick = gain.argmax(-1)
            picks[:, j] = pick
            taken[rows, pick] = True
            if spec.binary:
                z = z.clone()
                z[rows, pick] = 1.0
            else:
                start = (-g[rows, pick] / h[rows, pick]).clamp(-clip, clip)
                previous = values[:, j - 1, :j] if j else torch.zeros(n, 0, device=device)
                fitted = _refit(model, x, picks[:, :j + 1], torch.cat([previous, start.unsqueeze(-1)], -1), iterations)
                values[:, j, :j + 1] = fitted
                z = torch.zeros(n, k, device=device).scatter(-1, picks[:, :j + 1], fitted)
            with torch.no_grad():
                costs.append(_nll(model, x, z))
    return Pursuit(picks, values, torch.stack(costs, -1))


def _support_costs(model, picks: torch.Tensor) -> torch.Tensor:
    """``C_0 .. C_L0`` ``(N, L0 + 1)``: ``-log`` the support prior's probability of the first picks, in order."""
    n, l0 = picks.shape
    rows = torch.arange(n, device=picks.device)
    logits = model.support_prior.logits().to(picks.device).expand(n, -1).clone()
    costs = [torch.zeros(n, device=picks.device)]
    for j in range(l0):
        costs.append(-logits.log_softmax(-1)[rows, picks[:, j]])
        logits[rows, picks[:, j]] = MASKED_LOGIT
    return torch.stack(costs, -1).cumsum(-1)


def prefix_code(model, pursuit: Pursuit, counts: torch.Tensor) -> torch.Tensor:
    """The code ``(N, K)`` of each row's prefix with ``counts (N,)`` picks."""
    n, l0 = pursuit.picks.shape
    device = pursuit.picks.device
    used = (torch.arange(l0, device=device) < counts.unsqueeze(-1)).to(pursuit.costs.dtype)
    if pursuit.values is None:
        values = used
    else:
        values = pursuit.values[torch.arange(n, device=device), (counts - 1).clamp_min(0)] * used
    return torch.zeros(n, model.spec.latent_dim, device=device).scatter(-1, pursuit.picks, values)


def count_logits(model, pursuit: Pursuit) -> torch.Tensor:
    """``log p(L = l) - R_l - C_l + P_l`` over the model's levels, ``(N, num_levels)``."""
    spec = model.spec
    levels = spec.levels(device=pursuit.picks.device)
    n = pursuit.picks.shape[0]
    terms = -pursuit.costs - _support_costs(model, pursuit.picks)
    if pursuit.values is not None:
        value_costs = [torch.zeros(n, device=pursuit.picks.device)]
        for level in range(1, spec.max_sparsity + 1):
            value_costs.append(_value_cost(model, prefix_code(model, pursuit, torch.full((n,), level,
                                                                                        device=pursuit.picks.device))))
        terms = terms - torch.stack(value_costs, -1)
    return model.sparsity_prior.logits().log_softmax(-1).to(terms.device) + terms[:, levels]


def pursuit_params(model, params, x: torch.Tensor, *, refined: bool):
    """The guide's parameters ``params`` of the rows ``x`` with the pursuit's support and values.

    The slot logits put the picks first, in pursuit order (so the hard code and the posterior's
    draws of each count take the pursuit's prefix); the value means are those refitted for the
    prefix at the mode of the count; with ``refined`` the count logits are :func:`count_logits`,
    else the guide's ``q(L | x)`` is kept.
    """
    spec = model.spec
    found = pursue(model, x)
    sparsity_logits = count_logits(model, found) if refined else params.sparsity_logits
    n, l0 = found.picks.shape
    order = PICK_LOGIT_GAP * torch.arange(l0, 0, -1, device=x.device, dtype=x.dtype).expand(n, l0)
    slot_logits = torch.full((n, spec.latent_dim), MASKED_LOGIT, device=x.device).scatter(-1, found.picks, order)
    value_loc = None
    if found.values is not None:  # the mode's prefix, then the full prefix's values for the later picks
        rows = torch.arange(n, device=x.device)
        counts = spec.levels(device=x.device)[sparsity_logits.argmax(-1)]
        at_mode = torch.arange(l0, device=x.device) < counts.unsqueeze(-1)
        values = torch.where(at_mode, found.values[rows, (counts - 1).clamp_min(0)], found.values[:, -1])
        value_loc = torch.zeros(n, spec.latent_dim, device=x.device).scatter(-1, found.picks, values)
    return params._replace(sparsity_logits=sparsity_logits, slot_logits=slot_logits.unsqueeze(1), value_loc=value_loc)
