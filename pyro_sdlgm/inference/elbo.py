"""``AnalyticKLELBO``: Pyro's ``TraceMeanField_ELBO`` without the log-densities it does not use.

``TraceMeanField_ELBO`` scores every sample site of the model (``log_prob``) and of the
guide (score parts) before it looks at them, then replaces each latent site's two
log-densities by the analytic ``KL(q || p)`` wherever one is registered. In SDLGM every
latent site has one (the ``L0`` slot sites, ``sparsity`` and ``values``), so 11% to 18% of a
training step went into ExpConcrete densities over ``K`` that were thrown
away (measured in ``benchmarks/``). This subclass computes the model's log-density only for
observed sites and, for a latent site without a registered KL, computes both log-densities
on demand, exactly as Pyro would have. The estimate, its gradient and the order of the
sums are those of ``TraceMeanField_ELBO`` (a test checks they are equal); the mean-field
restriction is unchanged.

What it checks differently under Pyro's validation (the estimate of a valid model is the
same): the shapes of latent sites are checked through their KL (``batch_shape``), not
through log-densities it does not compute, so a latent site with an undeclared batch
dimension may pass; guide values are not checked against the model's support for sites
scored by an analytic KL; "reparameterized" means ``has_rsample`` (a partly
reparameterized distribution such as ``Rejector`` is not told apart); and
``GuideMessenger`` guides are not supported.

Why not upstream code: Pyro has no option to skip those densities; the rest
(tracing, replay, the KL terms, ``ELBOModule``) is Pyro's own.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape
from torch.distributions import kl_divergence


def _is_observed(name, site) -> bool:
    return site["is_observed"]


def _score_site(site) -> None:
    """The score parts of one guide site, as ``Trace.compute_score_parts`` computes them."""
    parts = site["fn"].score_parts(site["value"], *site["args"], **site["kwargs"])
    site["unscaled_log_prob"] = parts.log_prob
    site["score_parts"] = parts.scale_and_mask(site["scale"], site["mask"])


class AnalyticKLELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` that computes only the log-densities its estimate uses.

    Same constructor arguments, same estimate and gradients; cheaper when latent sites
    have registered analytic KL divergences.
    """

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
            _check_mean_field_requirement(model_trace, guide_trace)
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        model_trace = poutine.util.prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(site_filter=_is_observed)
        if is_validation_enabled():  # the sites whose log-density is computed (Pyro checks its shape)
            for site in model_trace.nodes.values():
                if site["type"] == "sample" and site["is_observed"]:
                    check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo_particle = 0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo_particle = elbo_particle + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled() and not guide_site["fn"].has_rsample:  # Pyro's check, without score parts
                raise NotImplementedError(f"guide site {name!r} is not reparameterized; AnalyticKLELBO, like "
                                          "TraceMeanField_ELBO, needs fully reparameterized guides")
            try:
                kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:  # no analytic KL: a Monte-Carlo term, as in TraceMeanField_ELBO
                model_trace.compute_log_prob(site_filter=lambda site_name, _: site_name == name)
                try:
                    _score_site(guide_site)
                except ValueError as err:  # as Trace.compute_score_parts words it, naming the site
                    raise ValueError(f"Error while computing score_parts at site '{name}':\n{err}") from err
                entropy_term = guide_site["score_parts"].entropy_term
                elbo_particle = elbo_particle + model_site["log_prob_sum"] - entropy_term.sum()
                continue
            kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl_qp):
                if kl_qp.shape != guide_site["fn"].batch_shape:  # TraceMeanField_ELBO asserts the same
                    raise ValueError(f"site {name!r}: KL of shape {tuple(kl_qp.shape)}, expected the batch shape "
                                     f"{tuple(guide_site['fn'].batch_shape)}")
                elbo_particle = elbo_particle - kl_qp.sum()
            else:
                elbo_particle = elbo_particle - kl_qp * torch.Size(guide_site["fn"].batch_shape).numel()
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:  # auxiliary guide sites
                assert guide_site["infer"].get("is_auxiliary")
                _score_site(guide_site)
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo_particle = elbo_particle - guide_site["score_parts"].entropy_term.sum()
        return torch_item(-elbo_particle), -elbo_particle
