"""The static description of one SDLGM: sizes, modes, and the names of its sample sites."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch

from pyro_sdlgm.exceptions import ConfigError

#: Sample-site names shared by every model and guide.
SPARSITY_SITE = "sparsity"  # L_i: relaxed one-hot (log space) or enumerated categorical
SLOT_SITE_PREFIX = "slot_"  # slot l (1..L0) is the site "slot_l": a relaxed one-hot over the K dims
SLOTS_SITE = "slots"  # all L0 slots as one site (slot_layout="joint"): event (L0, K)
VALUES_SITE = "values"  # v_i, the values of the representation (absent in binary mode)
OBS_SITE = "obs"  # the likelihood of x_i
DATA_PLATE = "data"

# the model's modes: one Literal type each (the config's field types), and its options as a tuple
SparsityInference = Literal["relaxed", "enumerate", "marginal"]
CountCoupling = Literal["gated_code", "prefix_mixture"]
Objective = Literal["discrete_kl", "relaxed"]
SlotSelection = Literal["without_replacement", "independent"]
SPARSITY_INFERENCE_MODES = get_args(SparsityInference)
COUNT_COUPLINGS = get_args(CountCoupling)
OBJECTIVES = get_args(Objective)
SLOT_SELECTIONS = get_args(SlotSelection)
#: slot_layout="auto" takes "gumbel_topk" above this many dimensions, else "per_slot". Measured
#: (experiments/NOTES.md): at K = 200 per_slot's test ELBO is 7 nats better (3 seeds, MNIST-5k), at
#: K = 4,096 its step is 36x a top-k autoencoder's and 21x its memory, gumbel_topk's 2.0x and 1.6x;
#: the widths between were not measured
WIDE_LATENT_DIM = 1024
#: the fields of a spec that are sizes or their kind; the others choose a mode (``MODE_FIELDS``)
SIZE_FIELDS = ("input_dim", "latent_dim", "max_sparsity", "include_zero", "binary")


def slot_site(index: int) -> str:
    """Name of the site of slot ``index + 1`` (``index`` counts from 0)."""
    return f"{SLOT_SITE_PREFIX}{index + 1}"


@dataclass(frozen=True)
class ModelSpec:
    """Sizes and modes of an SDLGM.

    Attributes:
        input_dim: ``D``, features per observation.
        latent_dim: ``K``, width of the sparse representation.
        max_sparsity: ``L0``, the cap on non-zeros (``1 <= L0 <= K``).
        include_zero: if True the sparsity levels are ``{0..L0}``, else ``{1..L0}``.
        binary: if True the representation is the support itself (``z = s``), with no values.
        sparsity_inference: ``"relaxed"`` (Concrete site for ``L_i``), ``"enumerate"``
            (categorical ``L_i`` summed out exactly with ``TraceEnum_ELBO``) or ``"marginal"``
            (the site's value is ``q(L_i)`` itself, :class:`~pyro_sdlgm.model.distributions.LevelMarginal`:
            the slot gates and the expected log-likelihood are exact sums over ``L_i``, with the
            discrete KL of ``L_i``; needs ``objective="discrete_kl"`` and
            ``count_coupling="prefix_mixture"``).
        count_coupling: how ``L_i`` reaches the likelihood. ``"gated_code"``: the code is
            ``z = s * v`` with the soft support ``s`` of the gated slots, so a relaxed ``L_i``
            interpolates between codes inside the decoder. ``"prefix_mixture"``: the decoder sees
            the code of every whole count ``l`` (its first ``l`` slots) and the likelihood is
            ``sum_l w_l log p(x | z_l)`` with the level weights ``w`` of the ``sparsity`` site
            (:class:`~pyro_sdlgm.model.distributions.ExpectedLogLikelihood`); one decoder pass per level.
        slot_estimator: the gradient estimator of the support, a name or a ``{name = ..., **options}``
            table in :data:`~pyro_sdlgm.model.slot_estimators.SLOT_ESTIMATORS`. ``"relaxed"``: the code uses the
            slots' Concrete samples (Gumbel-Softmax). ``"straight_through"``: the code uses their
            one-hot argmax, with the Concrete samples' gradient. ``"imle"``: the one-hot argmax,
            with the implicit-MLE gradient (perturb-and-MAP; needs ``objective="discrete_kl"``
            and ``slot_layout="per_slot"``). The sites and their KL terms are the same for all,
            so with the last two the decoder sees hard slot choices (with
            ``count_coupling="gated_code"`` the relaxed gates still weight them).
        objective: how the KL terms of the relaxed sites are computed.
            ``"discrete_kl"``: analytically, as the KL of the discrete variables the
            relaxations stand for (``TraceMeanField_ELBO``; Jang et al. 2017), with the
            likelihood evaluated at the relaxed samples. ``"relaxed"``: the ELBO of the
            relaxed model, Monte Carlo with Concrete densities (``Trace_ELBO``).
            ``enumerate`` needs ``"relaxed"`` (``TraceEnum_ELBO`` has no analytic-KL path;
            the enumerated ``L_i`` itself is exact either way).
        slot_selection: ``"without_replacement"``: slot ``l`` draws from its logits with the
            dimensions already taken by slots ``1..l-1`` (the argmax of each of their
            samples) masked out, so the first ``L_i`` slots select ``L_i`` distinct
            dimensions and ``L_i`` is the number of non-zeros. ``"independent"``: slots draw independently; duplicates then make
            ``L_i`` over-count the non-zeros, and ``L_i`` is not identifiable.
        slot_layout: the support step (a name or a ``{name = ..., **options}`` table in
            :data:`~pyro_sdlgm.model.support_steps.SUPPORT_STEPS`). ``"per_slot"``: one Pyro site
            per slot (``slot_1..slot_L0``, each an ExpConcrete over ``K``). ``"joint"``: all slots
            in one site ``slots`` (event ``(L0, K)``, :class:`~pyro_sdlgm.model.distributions.JointSlots`):
            the same distribution, computed with batched operations (faster; ``benchmarks/``); not
            with ``sparsity_inference="enumerate"``. ``"auto"``: ``"gumbel_topk"`` above
            :data:`WIDE_LATENT_DIM` dimensions (when the other modes allow it), else
            ``"per_slot"``; the spec holds the resolved name. ``"gumbel_topk"`` (option ``num_candidates``):
            one site ``support``, a Gumbel perturbation of shared slot logits whose top ``L0`` are
            the slots; time and memory linear in ``K`` (see
            :mod:`~pyro_sdlgm.model.support_steps`).
    """

    input_dim: int
    latent_dim: int
    max_sparsity: int
    include_zero: bool = False
    binary: bool = False
    sparsity_inference: SparsityInference = "relaxed"
    objective: Objective = "discrete_kl"
    slot_selection: SlotSelection = "without_replacement"
    slot_layout: str | Mapping[str, Any] = "per_slot"
    count_coupling: CountCoupling = "gated_code"
    slot_estimator: str | Mapping[str, Any] = "relaxed"

    @classmethod
    def from_options(cls, input_dim: int, latent_dim: int, max_sparsity: int, *, include_zero: bool, binary: bool,
                     options: Mapping[str, Any]) -> ModelSpec:
        """The spec of the sizes and of the modes ``options`` names (a config's fields or an
        estimator's parameters; a mode it leaves out takes the default): the one place a config
        becomes a spec."""
        modes = {name: options[name] for name in MODE_FIELDS if name in options}
        return cls(input_dim, latent_dim, max_sparsity, include_zero=include_zero, binary=binary, **modes)

    def __post_init__(self):
        if isinstance(self.slot_layout, str) and self.slot_layout == "auto":
            object.__setattr__(self, "slot_layout", self._auto_slot_layout())
        for name in ("input_dim", "latent_dim", "max_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.input_dim < 1:
            raise ConfigError(f"input_dim must be >= 1, got {self.input_dim}")
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not 1 <= self.max_sparsity <= self.latent_dim:
            raise ConfigError(
                f"max_sparsity (L0) must satisfy 1 <= L0 <= latent_dim={self.latent_dim}, "
                f"got {self.max_sparsity}"
            )
        if self.sparsity_inference not in SPARSITY_INFERENCE_MODES:
            raise ConfigError(
                f"sparsity_inference must be one of {SPARSITY_INFERENCE_MODES}, "
                f"got {self.sparsity_inference!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.slot_selection not in SLOT_SELECTIONS:
            raise ConfigError(f"slot_selection must be one of {SLOT_SELECTIONS}, got {self.slot_selection!r}")
        self.support_step.check(self)  # unknown layouts and bad options raise here
        self._check_slot_estimator()
        if self.count_coupling not in COUNT_COUPLINGS:
            raise ConfigError(f"count_coupling must be one of {COUNT_COUPLINGS}, got {self.count_coupling!r}")
        if self.sparsity_inference == "marginal" and (self.objective != "discrete_kl"
                                                      or self.count_coupling != "prefix_mixture"):
            raise ConfigError("sparsity_inference='marginal' needs objective='discrete_kl' (its site is scored by "
                              "the KL of L_i alone) and count_coupling='prefix_mixture' (the likelihood averaged "
                              f"over L_i), got objective={self.objective!r}, count_coupling={self.count_coupling!r}")
        if self.sparsity_inference == "enumerate" and self.count_coupling != "gated_code":
            raise ConfigError("sparsity_inference='enumerate' needs count_coupling='gated_code' (TraceEnum_ELBO "
                              f"sums the enumerated L_i out itself), got {self.count_coupling!r}")
        if self.sparsity_inference == "enumerate" and self.objective != "relaxed":
            raise ConfigError(
                "sparsity_inference='enumerate' needs objective='relaxed': TraceEnum_ELBO has no "
                f"analytic-KL path for the slot sites (got objective={self.objective!r})"
            )

    @property
    def wide(self) -> bool:
        """More than :data:`WIDE_LATENT_DIM` dimensions: where the ``"auto"`` choices take their wide forms
        (``slot_layout``, the posterior's ``inclusion``, sparse hard codes in ``diagnose``)."""
        return isinstance(self.latent_dim, int) and self.latent_dim > WIDE_LATENT_DIM

    def _auto_slot_layout(self) -> str:
        """``slot_layout="auto"``: ``"gumbel_topk"`` above :data:`WIDE_LATENT_DIM` dimensions when the
        other modes and the slot estimator allow it, else ``"per_slot"``."""
        from pyro_sdlgm.model.slot_estimators import build_slot_estimator
        from pyro_sdlgm.model.support_steps import GumbelTopK  # imported here: it imports the distributions

        if self.wide and not GumbelTopK.conflicts(self) and not build_slot_estimator(self.slot_estimator).needs_discrete_kl:
            return "gumbel_topk"
        return "per_slot"

    def _check_slot_estimator(self) -> None:
        from pyro_sdlgm.model.slot_estimators import build_slot_estimator  # imported here: estimators imports the distributions

        estimator = build_slot_estimator(self.slot_estimator)  # unknown names and bad options raise here
        if estimator.needs_discrete_kl and (self.objective != "discrete_kl"
                                            or not self.support_step.uses_site_distribution):
            raise ConfigError(f"slot_estimator={self.slot_estimator!r} needs objective='discrete_kl' (its gradient is "
                              "not the reparameterization of the slots' densities) and slot_layout='per_slot', got "
                              f"objective={self.objective!r}, slot_layout={self.slot_layout!r}")

    @property
    def min_level(self) -> int:
        """The smallest sparsity level (0 or 1)."""
        return 0 if self.include_zero else 1

    @property
    def num_levels(self) -> int:
        """Number of sparsity levels: ``L0`` or ``L0 + 1``."""
        return self.max_sparsity + 1 - self.min_level

    @functools.cached_property
    def support_step(self):
        """The :class:`~pyro_sdlgm.model.support_steps.SupportStep` that ``slot_layout`` names (built once)."""
        from pyro_sdlgm.model.support_steps import build_support_step  # imported here: it imports the distributions

        return build_support_step(self.slot_layout)

    @property
    def slot_sites(self) -> list[str]:
        """Names of the slot sites, in sampling order: ``L0`` of them, or the layout's one site."""
        return self.support_step.sites(self)

    def slot_picks(self, values) -> torch.Tensor:
        """The dimension each slot takes, ``(..., L0)``, from a mapping of site names to values."""
        return self.support_step.picks(self, values)

    def levels(self, device=None) -> torch.Tensor:
        """The sparsity level values, shape ``(num_levels,)``, e.g. ``[1, 2, ..., L0]``."""
        return torch.arange(self.min_level, self.max_sparsity + 1, device=device)


#: the fields of a spec that choose a mode of the model, in declaration order
MODE_FIELDS = tuple(field.name for field in fields(ModelSpec) if field.name not in SIZE_FIELDS)
