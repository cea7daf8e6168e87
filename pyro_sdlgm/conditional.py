"""The supervised (multi-label) SDLGM: labels are the sparse support, predicted with their count.

Data ``(x_i, y_i)``, ``y_i in {0,1}^K``. The prior over the count ``L_i`` and over the
slots is a network of ``x_i`` (:class:`ConditionalSDLGMModel`); the soft support ``s_i``
is formed as in the unsupervised model and the labels are observed through
``y_i ~ Bernoulli(eps + (1 - 2 eps) s_i)``. The guide sees ``(x_i, y_i)``
(:class:`LabelAwareGuide`, a conditional-VAE style posterior), so the KL terms train the
``x``-only networks to predict how many labels an instance has and which. Prediction
uses the ``x``-only networks alone. :class:`PriorAsGuide` uses those networks as the
guide too (an ablation: the ELBO then reduces to the expected log-likelihood).

Sites, their distributions, the slot machinery and the trainer are the unsupervised
model's (``sparsity``, ``slot_1..slot_L0``, ``obs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from .exceptions import ConfigError
from .guides import AmortizedGuide, GuideParams, amortized_slot_logits, amortized_sparsity_dist
from .model import data_plate, relaxed_support, sample_slots
from .networks import AmortizedEncoder
from .spec import OBS_SITE, SPARSITY_SITE, ModelSpec

CONDITIONAL_GUIDES = ("label_aware", "prior_as_guide")


def _label_network(spec: ModelSpec, input_dim: int, per_slot: bool, hidden: Sequence[int], activation: str):
    return AmortizedEncoder(input_dim, spec.latent_dim, spec.num_levels, spec.max_sparsity if per_slot else 1,
                            binary=True, hidden=hidden, activation=activation)


class ConditionalSDLGMModel(PyroModule):
    """``p(L, c | x) p(y | s(L, c))`` with ``x``-conditioned networks for the count and the slots.

    Args:
        spec: ``input_dim`` = features ``D``, ``latent_dim`` = labels ``K``,
            ``max_sparsity`` = ``L0`` (the cap on labels per row); ``binary`` must be True.
        per_slot: one logit vector per slot (else shared by the slots).
        hidden, activation: the prior network's MLP trunk.
        label_noise: ``eps`` of the observation ``Bernoulli(eps + (1 - 2 eps) s)``; keeps the
            likelihood of a label outside the support finite.
    """

    def __init__(self, spec: ModelSpec, *, per_slot: bool = True, hidden: Sequence[int] = (512, 256),
                 activation: str = "relu", label_noise: float = 1e-3):
        super().__init__(name="sdlgm_conditional_model")
        if not spec.binary:
            raise ConfigError("the multi-label model needs a binary spec (labels are the support)")
        if not 0.0 < label_noise < 0.5:
            raise ConfigError(f"label_noise must lie in (0, 0.5), got {label_noise!r}")
        self.spec = spec
        self.label_noise = float(label_noise)
        self.prior_net = _label_network(spec, spec.input_dim, per_slot, hidden, activation)

    def prior_params(self, x: torch.Tensor) -> GuideParams:
        """Logits of ``p(L | x)`` ``(N, num_levels)`` and of the slots ``(N, S, K)``."""
        return GuideParams(*self.prior_net(x))

    def obs_dist(self, support: torch.Tensor) -> dist.TorchDistribution:
        """``y ~ Bernoulli(eps + (1 - 2 eps) s)``, event ``(K,)``."""
        eps = self.label_noise
        return dist.Bernoulli(probs=eps + (1.0 - 2.0 * eps) * support).to_event(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None,
                tau_sparsity: float = 1.0, tau_support: float = 1.0, kl_weight: float = 1.0) -> torch.Tensor:
        """Run the generative process given features ``x (N, D)``; condition on labels ``y (N, K)`` if given.

        Returns the soft support ``(N, K)`` (with enumeration dims on the left in ``enumerate`` mode).
        """
        params = self.prior_params(x)
        with data_plate(x.shape[0], num_data, x.device):
            with poutine.scale(scale=kl_weight):
                sparsity = pyro.sample(SPARSITY_SITE, amortized_sparsity_dist(self.spec, params, tau_sparsity))
                slot_probs = sample_slots(self.spec, lambda index: amortized_slot_logits(params, index),
                                          tau_support, sparsity)
            support = relaxed_support(self.spec, sparsity, slot_probs)
            pyro.sample(OBS_SITE, self.obs_dist(support), obs=y)
        return support


class _MultiLabelGuide(AmortizedGuide):
    """A guide called as ``guide(x, y, ...)``; subclasses implement ``amortize(x, y)``."""

    def forward(self, x, y=None, *, num_data=None, tau_sparsity=1.0, tau_support=1.0, kl_weight=1.0) -> GuideParams:
        params = self.amortize(x, y)
        self.place_sites(params, num_data, tau_sparsity, tau_support, kl_weight)
        return params


class LabelAwareGuide(_MultiLabelGuide):
    """``q(L, c | x, y)``: an MLP of the concatenated features and labels."""

    def __init__(self, spec: ModelSpec, *, per_slot: bool = True, hidden: Sequence[int] = (512, 256),
                 activation: str = "relu"):
        super().__init__(spec)
        self.encoder = _label_network(spec, spec.input_dim + spec.latent_dim, per_slot, hidden, activation)

    def amortize(self, x: torch.Tensor, y: torch.Tensor) -> GuideParams:
        return GuideParams(*self.encoder(torch.cat([x, y], dim=-1)))


class PriorAsGuide(_MultiLabelGuide):
    """The model's ``x``-only networks used as the guide (ablation: no label-aware posterior)."""

    def __init__(self, model: ConditionalSDLGMModel):
        super().__init__(model.spec)
        self.prior_net = model.prior_net  # shared parameters

    def amortize(self, x: torch.Tensor, y: torch.Tensor | None = None) -> GuideParams:
        return GuideParams(*self.prior_net(x))


def build_conditional(spec: ModelSpec, guide: str, per_slot: bool, hidden: Sequence[int], activation: str,
                      label_noise: float):
    """The conditional model and its guide (``"label_aware"`` or ``"prior_as_guide"``)."""
    if guide not in CONDITIONAL_GUIDES:
        raise ConfigError(f"unknown multi-label guide {guide!r}; known: {', '.join(CONDITIONAL_GUIDES)}")
    with pyro.settings.context(module_local_params=True):
        model = ConditionalSDLGMModel(spec, per_slot=per_slot, hidden=hidden, activation=activation,
                                      label_noise=label_noise)
        if guide == "prior_as_guide":
            return model, PriorAsGuide(model)
        return model, LabelAwareGuide(spec, per_slot=per_slot, hidden=hidden, activation=activation)
