"""Priors of SDLGM, swappable by name: sparsity ``pi``, support ``rho``, and values ``p(v)``.

Each prior is a small ``nn.Module`` built by a registry from ``(spec, **options)``;
learned priors hold their parameters, fixed ones hold buffers (so they move with
``.to(device)``). Register your own with :func:`register_sparsity_prior`,
:func:`register_support_prior` or :func:`register_value_prior`.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.registry import Registry
from pyro_sdlgm.model.spec import ModelSpec

SPARSITY_PRIORS: Registry["SparsityPrior"] = Registry("sparsity prior")
SUPPORT_PRIORS: Registry["SupportPrior"] = Registry("support prior")
VALUE_PRIORS: Registry["ValuePrior"] = Registry("value prior")

register_sparsity_prior = SPARSITY_PRIORS.register
register_support_prior = SUPPORT_PRIORS.register
register_value_prior = VALUE_PRIORS.register


# ----------------------------------------------------------------------------- sparsity


class SparsityPrior(nn.Module):
    """Prior ``pi`` over the sparsity levels ``min_level..L0``.

    Subclasses implement :meth:`logits`, returning unnormalized log-probabilities of
    shape ``(num_levels,)``. ``self.levels`` holds the level values as floats.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.register_buffer("levels", spec.levels().to(torch.get_default_dtype()), persistent=False)

    def logits(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def probs(self) -> torch.Tensor:
        """Normalized probabilities, shape ``(num_levels,)``."""
        return self.logits().softmax(-1)


@register_sparsity_prior("uniform")
class UniformSparsity(SparsityPrior):
    """All levels equally likely."""

    def logits(self):
        return torch.zeros_like(self.levels)


@register_sparsity_prior("truncated_geometric")
class TruncatedGeometricSparsity(SparsityPrior):
    """``pi(l) ∝ (1 - p)^(l - min_level)``: mass decays geometrically with the level."""

    def __init__(self, spec: ModelSpec, p: float = 0.3):
        super().__init__(spec)
        if not 0.0 < p < 1.0:
            raise ConfigError(f"truncated_geometric: p must lie in (0, 1), got {p!r}")
        self.p = float(p)

    def logits(self):
        return (self.levels - self.levels[0]) * math.log1p(-self.p)


@register_sparsity_prior("truncated_poisson")
class TruncatedPoissonSparsity(SparsityPrior):
    """``pi(l) ∝ rate^l / l!`` restricted to the levels."""

    def __init__(self, spec: ModelSpec, rate: float = 3.0):
        super().__init__(spec)
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"truncated_poisson: rate must be positive and finite, got {rate!r}")
        self.rate = float(rate)

    def logits(self):
        return self.levels * math.log(self.rate) - torch.lgamma(self.levels + 1)


@register_sparsity_prior("learned")
class LearnedSparsity(SparsityPrior):
    """A global learnable distribution over the levels (maximum-likelihood type-II), initially uniform."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.prior_logits = nn.Parameter(torch.zeros(spec.num_levels))

    def logits(self):
        return self.prior_logits


# ----------------------------------------------------------------------------- support


class SupportPrior(nn.Module):
    """Prior ``rho`` over which of the ``K`` dimensions a slot selects; :meth:`logits` is ``(K,)``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.latent_dim = spec.latent_dim

    def logits(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@register_support_prior("uniform")
class UniformSupport(SupportPrior):
    """Every dimension equally likely."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.register_buffer("zeros", torch.zeros(spec.latent_dim), persistent=False)

    def logits(self):
        return self.zeros


@register_support_prior("learned")
class LearnedSupport(SupportPrior):
    """Learnable global dimension frequencies, initially uniform."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.prior_logits = nn.Parameter(torch.zeros(spec.latent_dim))

    def logits(self):
        return self.prior_logits


# ----------------------------------------------------------------------------- values


class ValuePrior(nn.Module):
    """Prior over the values ``v_i``; :meth:`dist` returns a distribution with event shape ``(K,)``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.latent_dim = spec.latent_dim

    def dist(self, batch_size: int) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class _LocScaleValuePrior(ValuePrior):
    family: type

    def __init__(self, spec: ModelSpec, scale: float = 1.0):
        super().__init__(spec)
        if not (scale > 0 and math.isfinite(scale)):
            raise ConfigError(f"value prior scale must be positive and finite, got {scale!r}")
        self.register_buffer("loc", torch.zeros(spec.latent_dim), persistent=False)
        self.register_buffer("scale", torch.full((spec.latent_dim,), float(scale)), persistent=False)

    def dist(self, batch_size):
        return self.family(self.loc, self.scale).expand([batch_size, self.latent_dim]).to_event(1)


@register_value_prior("normal")
class NormalValues(_LocScaleValuePrior):
    """``v_ik ~ Normal(0, scale)``."""

    family = dist.Normal


@register_value_prior("laplace")
class LaplaceValues(_LocScaleValuePrior):
    """``v_ik ~ Laplace(0, scale)``."""

    family = dist.Laplace
