"""Observation models ``p(x | decoder(z))``, swappable by name.

A likelihood is an ``nn.Module`` with :meth:`Likelihood.dist` (decoder output to a
distribution with event shape ``(D,)``) and :meth:`Likelihood.check_data`, which
rejects data outside its support before training starts.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn

from pyro_sdlgm.exceptions import ConfigError, DataError
from pyro_sdlgm.model.registry import Registry
from pyro_sdlgm.model.spec import ModelSpec

LIKELIHOODS: Registry["Likelihood"] = Registry("likelihood")
register_likelihood = LIKELIHOODS.register


class Likelihood(nn.Module):
    """Base class; ``dist(out)`` maps decoder outputs ``(..., D)`` to a distribution with event ``(D,)``."""

    def dist(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def check_data(self, x: np.ndarray) -> None:
        """Raise :class:`DataError` if ``x`` (finite, shape ``(N, D)``) is outside the support.

        Called on all the data before training. Implement it for a custom likelihood: with
        ``training.pyro_validation = "epoch_start"`` (the default) Pyro checks the observed
        values only in each epoch's first batch. This default checks nothing.
        """

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """The expected observation, used for reconstructions."""
        return self.dist(decoder_output).mean


@register_likelihood("bernoulli")
class BernoulliLikelihood(Likelihood):
    """``x_d ~ Bernoulli(sigmoid(decoder(z)_d))``.

    Values in ``[0, 1]`` are accepted; fractional values (e.g. grey levels) are scored
    by the binary cross-entropy, as is common for image VAEs, which is not a
    normalized likelihood: binarize the data (the loaders' default) for a proper one.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()

    def dist(self, decoder_output):
        # validate_args=False: fractional targets are allowed on purpose (see class docstring)
        return dist.Bernoulli(logits=decoder_output, validate_args=False).to_event(1)

    def check_data(self, x):
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            bad = np.argwhere((x < 0) | (x > 1))[0]
            raise DataError(
                f"the bernoulli likelihood needs data in [0, 1]; found {float(x[tuple(bad)])} at "
                f"row {bad[0]}, column {bad[1]} (range of the data: [{low}, {high}]); "
                "rescale the data or use likelihood='normal'"
            )


@register_likelihood("normal")
class NormalLikelihood(Likelihood):
    """``x_d ~ Normal(decoder(z)_d, sigma_d)`` with a learned per-feature scale ``sigma_d``."""

    def __init__(self, spec: ModelSpec, init_scale: float = 1.0, min_scale: float = 1e-3):
        super().__init__()
        if not (init_scale > min_scale > 0):
            raise ConfigError(
                f"normal likelihood needs init_scale > min_scale > 0, got {init_scale!r}, {min_scale!r}"
            )
        self.min_scale = float(min_scale)
        # scale = min_scale + softplus(raw), initialised at init_scale
        raw = math.log(math.expm1(init_scale - min_scale))
        self.raw_scale = nn.Parameter(torch.full((spec.input_dim,), raw))

    def scale(self) -> torch.Tensor:
        return self.min_scale + nn.functional.softplus(self.raw_scale)

    def dist(self, decoder_output):
        return dist.Normal(decoder_output, self.scale()).to_event(1)
