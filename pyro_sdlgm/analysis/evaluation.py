"""Evaluation of a fitted SDLGM: ELBO terms of the relaxed model and statistics of hard codes.

The relaxed ELBO does not bound the likelihood of the discrete model, so metrics of
the hard representations (reconstruction from hard codes, non-zero counts) are
reported next to it.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyro_sdlgm.model.spec import OBS_SITE, SPARSITY_SITE


def site_kl(guide_site: dict, model_site: dict, analytic: bool) -> torch.Tensor:
    """KL term of one latent site, as the training objective computes it, per row.

    Analytic (``kl_divergence``) when ``analytic`` and registered for the pair, as
    ``TraceMeanField_ELBO`` does; else the one-sample estimate ``log q(y) - log p(y)``.
    Either is multiplied by the site's scale, as the ELBO does: a per-slot site is scaled by
    its gate ``P(L_i >= l)`` (an unused slot costs nothing), and every latent site by the
    ``kl_weight`` it was traced with (1 at the end of training).
    """
    kl = None
    if analytic:
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            pass
    if kl is None:
        kl = guide_site["fn"].log_prob(guide_site["value"]) - model_site["fn"].log_prob(model_site["value"])
    return kl * guide_site["scale"]


@torch.no_grad()
def elbo_terms(model, guide, x: torch.Tensor, schedule_kwargs: dict):
    """One-sample estimates of the training objective's terms for each row of ``x (N, D)``.

    Returns ``(terms, guide_trace)``; the terms are ``(N,)`` tensors: ``recon`` (``-log p(x | z)`` at a relaxed sample),
    ``kl_sparsity``, ``kl_slots`` (summed over the slot sites), ``kl_values`` (see
    :func:`site_kl`) and ``elbo``. In
    ``enumerate`` mode the level ``L_i`` is sampled here, which gives an unbiased
    estimate of the same ELBO.
    """
    with pyro.settings.context(module_local_params=True):
        guide_trace = poutine.trace(guide).get_trace(x, **schedule_kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, **schedule_kwargs)
    analytic = model.spec.objective == "discrete_kl" and model.spec.sparsity_inference != "enumerate"
    terms = {f"kl_{SPARSITY_SITE}": 0.0, "kl_slots": 0.0}
    slot_sites = set(model.spec.slot_sites)
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        key = "kl_slots" if name in slot_sites else f"kl_{name}"
        terms[key] = terms.get(key, 0.0) + site_kl(site, model_trace.nodes[name], analytic)
    terms["recon"] = -model_trace.nodes[OBS_SITE]["fn"].log_prob(x)
    terms["elbo"] = -(terms["recon"] + sum(v for k, v in terms.items() if k.startswith("kl_")))
    return terms, guide_trace


def slot_duplicates(guide_trace, spec) -> torch.Tensor:
    """Per row, the number of used slots of a relaxed guide draw whose argmax repeats an earlier used slot's.

    ``L_i`` of the draw is the argmax of its ``sparsity`` sample; slot ``l`` is used when
    ``L_i >= l``. Duplicates make the number of distinct non-zeros smaller than ``L_i``;
    the soft masking of ``slot_selection="without_replacement"`` makes them rare but not
    impossible at a positive temperature.

    Returns:
        ``(duplicates, counts)``: two ``(N,)`` integer tensors, the repeats and the draw's ``L_i``.
    """
    level = guide_trace.nodes["sparsity"]["value"]
    counts = (level.argmax(-1) if level.is_floating_point() else level.long()) + spec.min_level
    picks = spec.slot_picks({name: guide_trace.nodes[name]["value"] for name in spec.slot_sites})
    used = torch.arange(spec.max_sparsity, device=picks.device) < counts.unsqueeze(-1)
    hits = torch.zeros(picks.shape[0], spec.latent_dim, dtype=torch.long, device=picks.device)
    hits.scatter_add_(1, picks, used.long())
    return counts - (hits > 0).sum(-1), counts


def code_statistics(codes: torch.Tensor, max_sparsity: int) -> dict:
    """Statistics of hard codes ``(N, K)``: non-zeros per row and dimension usage.

    ``unused_dim_fraction``: the fraction of the K dimensions that are non-zero in no row.
    """
    active = codes != 0
    nnz = active.sum(-1)
    return {
        "mean_nnz": float(nnz.float().mean()),
        "std_nnz": float(nnz.float().std()) if nnz.numel() > 1 else 0.0,
        "min_nnz": int(nnz.min()),
        "max_nnz": int(nnz.max()),
        "nnz_histogram": torch.bincount(nnz, minlength=max_sparsity + 1).tolist(),
        "codes_over_cap": int((nnz > max_sparsity).sum()),
        "unused_dim_fraction": float((active.sum(0) == 0).float().mean()),
    }
