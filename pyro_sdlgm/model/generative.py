"""The SDLGM generative model as a Pyro program (a ``PyroModule``).

Per observation ``i`` (inside ``pyro.plate("data", size=num_data)``):

1. ``sparsity``: ``L_i`` over the levels ``{1..L0}`` (or ``{0..L0}``); an ExpConcrete
   (log-space ``RelaxedOneHotCategorical``) site with the prior ``pi``, or, in
   ``enumerate`` mode, a ``Categorical`` that ``TraceEnum_ELBO`` sums out exactly.
2. ``slot_1 .. slot_L0``: selection slots, each an ExpConcrete over the ``K`` dimensions
   with the support prior ``rho``; by default without replacement (dimensions taken by
   earlier slots are masked), so that ``L_i`` counts distinct non-zeros (``slot_layout``
   places them as one joint site or as one Gumbel-top-k site instead).
3. gates ``g_il = P(L_i >= l)`` and the soft support ``s_i = 1 - prod_l (1 - g_il c_il)``.
4. ``values``: ``v_i ~ p(v)``, event ``(K,)``; ``z_i = s_i * v_i`` (binary mode: ``z_i = s_i``).
5. ``obs``: ``x_i ~ p(x | decoder(z_i))``.

The model only places sample sites; temperatures and the KL weight are arguments
computed by the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pyro_sdlgm.model.distributions import ExpectedLogLikelihood, LevelMarginal, concrete_class
from pyro_sdlgm.exceptions import DataError
from pyro_sdlgm.model.likelihoods import LIKELIHOODS
from pyro_sdlgm.model.networks import Decoder
from pyro_sdlgm.model.priors import SPARSITY_PRIORS, SUPPORT_PRIORS, VALUE_PRIORS
from pyro_sdlgm.model.registry import ComponentSpec
from pyro_sdlgm.model.spec import DATA_PLATE, OBS_SITE, SPARSITY_SITE, VALUES_SITE, ModelSpec
from pyro_sdlgm.model.slot_estimators import build_slot_estimator
from pyro_sdlgm.model.support import level_probs_from_value, slot_gates, soft_support
from pyro_sdlgm.model.support_steps import Slots, SparseCode


def data_plate(batch_size: int, num_data: int | None, device) -> pyro.plate:
    """The ``data`` plate of a minibatch of ``batch_size`` rows from a data set of ``num_data`` rows.

    The log-likelihood and the KL terms are scaled by ``num_data / batch_size`` so that
    a minibatch ELBO estimates the full-data ELBO.
    """
    if num_data is None:
        num_data = batch_size
    if num_data < batch_size:
        raise DataError(f"num_data={num_data} is smaller than the batch size {batch_size}")
    return pyro.plate(DATA_PLATE, size=num_data, subsample=torch.arange(batch_size, device=device))


def sample_slots(spec: ModelSpec, logits_of_slot, tau: float, sparsity: torch.Tensor) -> Slots:
    """Place the slot sites and return the slots' selections (:class:`~pyro_sdlgm.model.support_steps.Slots`).

    ``spec.support_step`` (chosen by ``slot_layout``) places the sites: one per slot, one
    joint site, or one Gumbel-perturbation site (:mod:`~pyro_sdlgm.model.support_steps`); the
    selections are what the code is built from, as ``spec.slot_estimator`` makes them from the
    sites' values (:mod:`~pyro_sdlgm.model.slot_estimators`).

    Shared by the model and the guide, so both draw the slots the same way. ``logits_of_slot(l)``
    gives slot ``l``'s logits ``(N, K)`` (``None``: all slots', ``(N, S, K)``). Without
    replacement (the default), the dimensions earlier slots took are masked, so the first ``L_i``
    slots select ``L_i`` distinct dimensions at any temperature.

    Slot ``l`` only exists when ``L_i >= l``: its log-densities (hence its KL term) are
    scaled by its gate ``g_il = P(L_i >= l)`` computed from the ``sparsity`` value, so the
    ELBO counts ``sum_l P(L_i >= l) KL_l``, the KL of the slots in use. Without it, unused
    slots would cost as much as used ones and the model could pad ``L_i`` for free.
    """
    gates = slot_gates(level_probs_from_value(sparsity, spec.num_levels), spec.min_level)
    return spec.support_step.sample(spec, logits_of_slot, tau, gates, build_slot_estimator(spec.slot_estimator))


def prefix_supports(spec: ModelSpec, slot_probs: torch.Tensor) -> torch.Tensor:
    """Soft supports of every whole count: level ``l`` uses slots ``1..l``, shape ``(N, num_levels, K)``.

    ``s_l = 1 - prod_{j <= l} (1 - c_j)`` (the empty support first when ``include_zero``).
    """
    supports = 1.0 - torch.cumprod(1.0 - slot_probs, dim=-2)
    if spec.include_zero:
        supports = torch.cat([torch.zeros_like(supports[..., :1, :]), supports], dim=-2)
    return supports


def relaxed_code(spec: ModelSpec, sparsity: torch.Tensor, slots: Slots, values: torch.Tensor | None):
    """The relaxed code ``z = s * v`` (or ``s``): dense ``(..., N, K)``, or a
    :class:`~pyro_sdlgm.model.support_steps.SparseCode` over the slots' candidate columns. ``s`` is
    the soft support of the slots' selections ``(N, L0, C)`` gated by the ``sparsity`` value."""
    gates = slot_gates(level_probs_from_value(sparsity, spec.num_levels), spec.min_level)
    support = soft_support(gates, slots.selection)
    if slots.index is None:
        return support if values is None else support * values
    if values is not None:
        support = support * values.gather(-1, slots.index)
    return SparseCode(slots.index.expand(support.shape), support, spec.latent_dim)


class SDLGMModel(PyroModule):
    """``p(x, L, c, v) = p(L) p(c) p(v) p(x | decoder(z(L, c, v)))``.

    Args:
        spec: sizes and modes.
        likelihood, sparsity_prior, support_prior, value_prior: component names or
            ``{name=..., **options}`` tables, looked up in the registries.
        decoder_hidden: hidden layer sizes of the decoder MLP.
        activation: activation of the decoder MLP.
        decoder_skip: add a linear map of the code to the MLP's output (:class:`Decoder`).
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        likelihood: ComponentSpec = "bernoulli",
        sparsity_prior: ComponentSpec = "uniform",
        support_prior: ComponentSpec = "uniform",
        value_prior: ComponentSpec = "normal",
        decoder_hidden: Sequence[int] = (256, 512),
        activation: str = "relu",
        decoder_skip: bool = False,
    ):
        super().__init__(name="sdlgm_model")
        self.spec = spec
        self.sparsity_prior = SPARSITY_PRIORS.build(sparsity_prior, spec)
        self.support_prior = SUPPORT_PRIORS.build(support_prior, spec)
        self.value_prior = None if spec.binary else VALUE_PRIORS.build(value_prior, spec)
        self.likelihood = LIKELIHOODS.build(likelihood, spec)
        self.decoder = Decoder(spec.latent_dim, spec.input_dim, decoder_hidden, activation, decoder_skip)

    # -- distributions ------------------------------------------------------------------

    def sparsity_dist(self, batch_size: int, tau: float) -> dist.TorchDistribution:
        """Prior of ``L_i``: batch ``(batch_size,)``, event ``(num_levels,)`` (relaxed) or ``()``."""
        logits = self.sparsity_prior.logits()
        if self.spec.sparsity_inference == "enumerate":
            return dist.Categorical(logits=logits).expand([batch_size])
        if self.spec.sparsity_inference == "marginal":
            return LevelMarginal(logits).expand([batch_size])
        return concrete_class(self.spec.objective)(tau, logits=logits).expand([batch_size])

    def slot_logits(self, batch_size: int, index: int | None) -> torch.Tensor:
        """Prior logits of slot ``index`` before masking taken dimensions: ``(batch_size, K)``
        (``index=None``: of all slots, ``(batch_size, 1, K)``)."""
        if index is None:  # all slots at once (joint slot layout): (batch_size, 1, K)
            return self.support_prior.logits().expand(batch_size, 1, self.spec.latent_dim)
        return self.support_prior.logits().expand(batch_size, self.spec.latent_dim)

    def values_dist(self, batch_size: int) -> dist.TorchDistribution:
        """Prior of the values: batch ``(batch_size,)``, event ``(K,)``."""
        return self.value_prior.dist(batch_size)

    def obs_dist(self, z) -> dist.TorchDistribution:
        """Likelihood ``p(x | decoder(z))`` for codes ``z (..., K)`` (dense or ``SparseCode``): event ``(D,)``."""
        return self.likelihood.dist(self.decoder(z))

    @torch.no_grad()
    def draw(self, num_rows: int) -> tuple[torch.Tensor, SparseCode, torch.Tensor]:
        """Hard draws of the generative process, nothing relaxed: ``(x (N, D), z, counts (N,))``.

        ``L_i ~ p(L)``; ``L0`` slots drawn from the support prior, the first ``L_i`` of them
        used: distinct dimensions in turn (Gumbel top-k), or with ``slot_selection="independent"``
        independent draws (a dimension drawn twice counts once, so the code may have fewer than
        ``L_i`` non-zeros); values from the value prior (1 in binary mode); ``x ~ p(x | decoder(z))``.
        ``z`` is a :class:`~pyro_sdlgm.model.support_steps.SparseCode` of ``L0`` columns
        (an unused column carries the value 0).
        """
        spec = self.spec
        device = next(self.decoder.parameters()).device
        levels = spec.levels(device=device)
        counts = levels[dist.Categorical(logits=self.sparsity_prior.logits()).sample((num_rows,))]
        logits = self.support_prior.logits().expand(num_rows, spec.latent_dim)
        if spec.slot_selection == "without_replacement":
            gumbel = -torch.empty_like(logits).exponential_().log()
            index = (logits + gumbel).topk(spec.max_sparsity, dim=-1).indices
            repeated = torch.zeros_like(index, dtype=torch.bool)
        else:
            index = dist.Categorical(logits=logits).sample((spec.max_sparsity,)).T
            earlier = torch.ones(spec.max_sparsity, spec.max_sparsity, device=device).tril(-1).bool()
            repeated = ((index.unsqueeze(-1) == index.unsqueeze(-2)) & earlier).any(-1)
        used = (torch.arange(spec.max_sparsity, device=device) < counts.unsqueeze(-1)) & ~repeated
        values = (torch.ones(index.shape, device=device) if spec.binary
                  else self.values_dist(num_rows).sample().gather(-1, index))
        z = SparseCode(index, values * used, spec.latent_dim)
        return self.obs_dist(z).sample(), z, counts

    # -- deterministic parts ------------------------------------------------------------

    def representation(self, sparsity: torch.Tensor, slots: Slots, values: torch.Tensor | None):
        """The (relaxed) sparse code ``z = s * v`` (or ``s`` in binary mode), shape ``(..., N, K)``
        (a :class:`~pyro_sdlgm.model.support_steps.SparseCode` with ``slot_layout="gumbel_topk"``).

        Args:
            sparsity: value of the ``sparsity`` site (log one-hot ``(..., N, num_levels)``
                or level indices ``(..., N)``; enumerated values broadcast on the left).
            slots: the slots' relaxed one-hots, ``(N, L0, C)``, and their columns' dimensions.
            values: value of the ``values`` site, ``(N, K)``, or None in binary mode.
        """
        return relaxed_code(self.spec, sparsity, slots, values)

    def prefix_mixture(self, sparsity: torch.Tensor, slots: Slots, values: torch.Tensor | None):
        """``count_coupling="prefix_mixture"``: the likelihood of ``x`` averaged over the counts.

        Returns ``(obs distribution, z)``: an :class:`~pyro_sdlgm.model.distributions.ExpectedLogLikelihood`
        over the codes of every whole count ``(N, num_levels, K)``, weighted by the level
        weights of the ``sparsity`` value, and their weighted mean code ``z (N, K)``.
        """
        codes = prefix_supports(self.spec, slots.selection)  # dense: gumbel_topk refuses prefix_mixture
        if values is not None:
            codes = codes * values.unsqueeze(-2)
        weights = level_probs_from_value(sparsity, self.spec.num_levels)
        return ExpectedLogLikelihood(self.obs_dist(codes), weights), (codes * weights.unsqueeze(-1)).sum(-2)

    # -- the Pyro program ---------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        num_data: int | None = None,
        tau_sparsity: float = 1.0,
        tau_support: float = 1.0,
        kl_weight: float = 1.0,
    ) -> torch.Tensor:
        """Run the generative process; condition on ``x (N, D)`` when given.

        Args:
            x: observations, or None to sample ``batch_size`` new ones.
            num_data: size of the full data set (scales a minibatch ELBO); default ``N``.
            tau_sparsity, tau_support: temperatures of the ``sparsity`` and ``slots`` sites.
            kl_weight: scale on the latent sites' log-densities (KL warm-up); 1 is the ELBO.

        Returns:
            the relaxed code ``z``, shape ``(N, K)`` (with enumeration dims on the left in
            ``enumerate`` mode; a ``SparseCode`` with ``slot_layout="gumbel_topk"``).
        """
        if x is None and batch_size is None:
            raise DataError("pass either the observations x or batch_size")
        n = x.shape[0] if x is not None else batch_size
        device = x.device if x is not None else self.decoder.net[0].weight.device
        with data_plate(n, num_data, device):
            with poutine.scale(scale=kl_weight):
                sparsity = pyro.sample(SPARSITY_SITE, self.sparsity_dist(n, tau_sparsity))
                slots = sample_slots(self.spec, lambda index: self.slot_logits(n, index), tau_support, sparsity)
                values = None if self.spec.binary else pyro.sample(VALUES_SITE, self.values_dist(n))
            if self.spec.count_coupling == "prefix_mixture":
                likelihood, z = self.prefix_mixture(sparsity, slots, values)
            else:
                z = self.representation(sparsity, slots, values)
                likelihood = self.obs_dist(z)
            pyro.sample(OBS_SITE, likelihood, obs=x)
        return z
