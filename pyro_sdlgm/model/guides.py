"""Amortized guides ``q(L, c, v | x)``, swappable by name.

A guide subclasses :class:`AmortizedGuide` and implements :meth:`AmortizedGuide.amortize`,
mapping a batch ``x (N, D)`` to :class:`GuideParams`; the base class places the sample
sites, so every guide matches the model's sites by construction. Register one with
:func:`register_guide` and select it with ``guide = "name"`` in a config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pyro_sdlgm.model.distributions import LevelMarginal, concrete_class
from pyro_sdlgm.model.generative import data_plate, sample_slots
from pyro_sdlgm.model.networks import AmortizedEncoder
from pyro_sdlgm.model.registry import Registry
from pyro_sdlgm.model.spec import SPARSITY_SITE, VALUES_SITE, ModelSpec
from pyro_sdlgm.model.support import greedy_support

GUIDES: Registry["AmortizedGuide"] = Registry("guide")
register_guide = GUIDES.register


class GuideParams(NamedTuple):
    """Variational parameters of a batch of ``N`` rows.

    Attributes:
        sparsity_logits: ``(N, num_levels)`` logits of ``q(L_i | x_i)``.
        slot_logits: ``(N, S, K)``; ``S = 1`` shares one distribution across the slots,
            ``S = L0`` gives each slot its own.
        value_loc, value_scale: ``(N, K)`` Normal parameters of ``q(v_i | x_i)``, or None in
            binary mode.
    """

    sparsity_logits: torch.Tensor
    slot_logits: torch.Tensor
    value_loc: torch.Tensor | None
    value_scale: torch.Tensor | None


def amortized_sparsity_dist(spec: ModelSpec, params: GuideParams, tau: float) -> dist.TorchDistribution:
    """``L_i`` given per-row logits ``(N, num_levels)``: categorical (enumerate mode) or ExpConcrete."""
    if spec.sparsity_inference == "enumerate":
        return dist.Categorical(logits=params.sparsity_logits)
    if spec.sparsity_inference == "marginal":
        return LevelMarginal(params.sparsity_logits)
    return concrete_class(spec.objective)(tau, logits=params.sparsity_logits)


def amortized_slot_logits(params: GuideParams, index: int | None) -> torch.Tensor:
    """Logits of slot ``index`` ``(N, K)``: its own head, or the shared one (``None``: all, ``(N, S, K)``)."""
    if index is None:
        return params.slot_logits
    return params.slot_logits[:, min(index, params.slot_logits.shape[1] - 1)]


class AmortizedGuide(PyroModule):
    """Base class of SDLGM guides; subclasses implement :meth:`amortize`."""

    def __init__(self, spec: ModelSpec):
        super().__init__(name="sdlgm_guide")
        self.spec = spec

    def amortize(self, x: torch.Tensor) -> GuideParams:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- distributions ------------------------------------------------------------------

    def sparsity_dist(self, params: GuideParams, tau: float) -> dist.TorchDistribution:
        return amortized_sparsity_dist(self.spec, params, tau)

    def slot_logits(self, params: GuideParams, index: int | None) -> torch.Tensor:
        """Logits of slot ``index`` before masking taken dimensions: ``(N, K)`` (``None``: ``(N, S, K)``)."""
        return amortized_slot_logits(params, index)

    def values_dist(self, params: GuideParams) -> dist.TorchDistribution:
        return dist.Normal(params.value_loc, params.value_scale).to_event(1)

    # -- the Pyro program ---------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        *,
        batch_size: int | None = None,
        num_data: int | None = None,
        tau_sparsity: float = 1.0,
        tau_support: float = 1.0,
        kl_weight: float = 1.0,
    ) -> GuideParams:
        """Sample ``L``, the slots and the values given ``x (N, D)``; same arguments as the model."""
        params = self.amortize(x)
        self.place_sites(params, num_data, tau_sparsity, tau_support, kl_weight)
        return params

    def place_sites(self, params: GuideParams, num_data, tau_sparsity, tau_support, kl_weight) -> None:
        """The guide's sample sites for a batch with parameters ``params``."""
        enumerate_sparsity = self.spec.sparsity_inference == "enumerate"
        logits = params.sparsity_logits
        with data_plate(logits.shape[0], num_data, logits.device), poutine.scale(scale=kl_weight):
            sparsity = pyro.sample(
                SPARSITY_SITE,
                self.sparsity_dist(params, tau_sparsity),
                infer={"enumerate": "parallel"} if enumerate_sparsity else {},
            )
            sample_slots(self.spec, lambda index: self.slot_logits(params, index), tau_support, sparsity)
            if not self.spec.binary:
                pyro.sample(VALUES_SITE, self.values_dist(params))

    # -- summaries of q used for hard codes ---------------------------------------------

    def sparsity_probs(self, params: GuideParams) -> torch.Tensor:
        """``q(L_i = level | x_i)``, shape ``(N, num_levels)``.

        In relaxed mode this is the distribution of the argmax of the Concrete sample
        (exact at every temperature, by the Gumbel-max trick).
        """
        return params.sparsity_logits.softmax(-1)

    def hard_code(self, params: GuideParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard representation of a batch: ``(z (N, K), counts (N,))``.

        ``L_hat`` is the mode of ``q(L | x)``; slots ``1..L_hat`` each take their
        highest-logit dimension not taken by an earlier slot (the zero-temperature limit of
        the without-replacement selection; with shared slot logits, the ``L_hat``
        highest-scoring dimensions); values are the guide means (ones in binary mode).
        So every row has at most ``L_hat <= L0`` non-zeros, by construction.
        """
        counts = params.sparsity_logits.argmax(-1) + self.spec.min_level
        mask = greedy_support(params.slot_logits, counts, sorted_shared=self.spec.support_step.sparse_code)
        if params.value_loc is None:
            return mask.to(params.slot_logits.dtype), counts
        return mask * params.value_loc, counts


class MLPGuide(AmortizedGuide):
    """An MLP encoder with heads for ``q(L|x)``, the slot logits and ``q(v|x)``.

    Args:
        spec: sizes and modes.
        per_slot: one logit vector per slot (``S = L0``) instead of one shared by all slots.
            Independent slots that share logits select the same dimension more often,
            so the number of distinct non-zeros of a relaxed sample falls below ``L_i``.
        hidden: hidden layer sizes of the encoder trunk.
        activation: activation function name.
    """

    def __init__(self, spec: ModelSpec, per_slot: bool, hidden: Sequence[int] = (512, 256), activation: str = "relu",
                 num_slot_heads: int | None = None):
        super().__init__(spec)
        self.encoder = AmortizedEncoder(
            spec.input_dim,
            spec.latent_dim,
            spec.num_levels,
            (spec.max_sparsity if per_slot else 1) if num_slot_heads is None else num_slot_heads,
            spec.binary,
            hidden,
            activation,
        )

    def amortize(self, x):
        return GuideParams(*self.encoder(x))


class MagnitudeSlotsGuide(MLPGuide):
    """Slot logits tied to the values: ``softplus(a) * |E[v_k | x]| + b_k``, shared by all slots.

    The selection follows the values' magnitudes, as a top-k autoencoder's does, so the
    encoder learns "which dimension" from the same signal as "what value"; the
    zero-temperature support is the ``L_hat`` dimensions with the largest ``|E[v_k | x]|``
    (plus the learned per-dimension offsets ``b``). ``a`` starts at ``init_gain`` (before the
    softplus). Binary codes have no values to tie to: there the shared slot head's logits are
    used, as in ``mlp_shared_slots``.
    """

    def __init__(self, spec: ModelSpec, hidden: Sequence[int] = (512, 256), activation: str = "relu",
                 init_gain: float = 3.0):
        # one shared slot head in binary mode only: data-parallel training refuses unused parameters
        super().__init__(spec, per_slot=False, hidden=hidden, activation=activation,
                         num_slot_heads=1 if spec.binary else 0)
        if not spec.binary:
            self.gain = torch.nn.Parameter(torch.tensor(float(init_gain)))
            self.offset = torch.nn.Parameter(torch.zeros(spec.latent_dim))

    def amortize(self, x):
        params = super().amortize(x)
        if params.value_loc is None:  # binary codes: the shared slot head
            return params
        logits = torch.nn.functional.softplus(self.gain) * params.value_loc.abs() + self.offset
        return params._replace(slot_logits=logits.unsqueeze(-2))


@register_guide("mlp_magnitude_slots")
def mlp_magnitude_slots(spec: ModelSpec, hidden: Sequence[int] = (512, 256), activation: str = "relu",
                        init_gain: float = 3.0) -> MagnitudeSlotsGuide:
    """MLP guide whose shared slot logits are the magnitudes of the value means, so the selection follows
    the values as a top-k autoencoder's does (see :class:`MagnitudeSlotsGuide`)."""
    return MagnitudeSlotsGuide(spec, hidden=hidden, activation=activation, init_gain=init_gain)


@register_guide("mlp_shared_slots")
def mlp_shared_slots(spec: ModelSpec, hidden: Sequence[int] = (512, 256), activation: str = "relu") -> MLPGuide:
    """MLP guide whose ``L0`` slots share one logit vector over the ``K`` dimensions."""
    return MLPGuide(spec, per_slot=False, hidden=hidden, activation=activation)


@register_guide("mlp_per_slot")
def mlp_per_slot(spec: ModelSpec, hidden: Sequence[int] = (512, 256), activation: str = "relu") -> MLPGuide:
    """MLP guide with one logit vector per slot (``L0 x K`` slot logits)."""
    return MLPGuide(spec, per_slot=True, hidden=hidden, activation=activation)
