"""Custom distributions: the ExpConcrete (log-space Concrete) distribution as a Pyro distribution.

Why log space: ``RelaxedOneHotCategorical.log_prob`` underflows. With ``K = 1000``
and ``tau = 0.1`` its samples contain exact zeros, and the log-density is
``-inf``/NaN (pyro-ppl issue 3304). The ExpConcrete distribution of Maddison et al.
(2017) samples ``y = log(c)`` directly, so ``log_prob`` stays finite; the model
exponentiates deterministically, and since the KL divergence is invariant under the
bijection ``y -> exp(y)``, scoring the log-space sites gives the same ELBO.
"""

from __future__ import annotations

import numbers

import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import constraints, register_kl
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical as _TorchExpRelaxed

from .exceptions import ConfigError


class _LogSimplex(constraints.Constraint):
    """Vectors whose exponentials lie on the probability simplex: ``logsumexp(y) == 0``.

    The tolerance grows with the magnitude of the entries, because a log-space
    sample at a low temperature has entries of order ``|logits| / tau`` and its
    float32 normalization carries a relative error of about 1e-7.
    """

    event_dim = 1

    def check(self, value):
        finite_or_neg_inf = ~(torch.isnan(value) | (value == float("inf")))
        scale = value.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).amax(-1)
        tolerance = 1e-4 + 1e-5 * scale
        return finite_or_neg_inf.all(-1) & (value.logsumexp(-1).abs() <= tolerance)

    def __repr__(self):
        return "LogSimplex()"


log_simplex = _LogSimplex()


def check_temperature(temperature, name: str = "temperature") -> float:
    """Return ``temperature`` as a float; raise ``ConfigError`` unless it is a positive scalar.

    Temperatures are scalar on purpose: a per-example temperature tensor of shape
    ``(n, 1)`` breaks ``log_prob`` shapes in torch.
    """
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0:
            raise ConfigError(
                f"{name} must be a scalar, got a tensor of shape {tuple(temperature.shape)}; "
                "per-example temperatures are not supported"
            )
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ConfigError(f"{name} must be a positive number, got {temperature!r}")
    temperature = float(temperature)
    if not (temperature > 0 and temperature < float("inf")):
        raise ConfigError(f"{name} must be positive and finite, got {temperature!r}")
    return temperature


class ExpRelaxedCategorical(_TorchExpRelaxed, TorchDistributionMixin):
    """ExpConcrete distribution (Maddison et al. 2017): a Concrete sample in log space.

    ``y ~ ExpRelaxedCategorical(tau, logits)`` means ``exp(y) ~ RelaxedOneHotCategorical(tau, logits)``.
    Reparameterized (``has_rsample``); ``log_prob`` is finite for every finite sample,
    even at ``tau = 0.1`` with thousands of categories.

    Args:
        temperature: positive scalar ``tau`` (float or 0-dim tensor).
        probs / logits: event probabilities or unnormalized log-probabilities, shape
            ``batch_shape + (K,)``.

    Shapes: ``batch_shape = logits.shape[:-1]``, ``event_shape = (K,)``; samples and
    ``log_prob`` follow Pyro's conventions (``sample_shape + batch_shape + event_shape``).
    The argmax of a sample is exactly ``Categorical(logits)`` distributed at every
    temperature (the Gumbel-max trick), so ``softmax(logits)`` is the distribution
    of the discrete limit.
    """

    # logits only: ``probs`` is recomputed from the logits on every access, and checking its
    # sum against 1 within 1e-6 fails for some float32 rows of masked logits
    arg_constraints = {"logits": constraints.real_vector}
    support = log_simplex
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        tau = check_temperature(temperature)
        reference = probs if probs is not None else logits
        device = reference.device if isinstance(reference, torch.Tensor) else None
        dtype = reference.dtype if isinstance(reference, torch.Tensor) else None
        super().__init__(
            torch.tensor(tau, device=device, dtype=dtype),
            probs=probs,
            logits=logits,
            validate_args=validate_args,
        )

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ExpRelaxedCategorical, _instance)
        return super().expand(batch_shape, _instance=new)


class DiscreteKLExpRelaxedCategorical(ExpRelaxedCategorical):
    """An ExpConcrete whose KL divergence to another of its kind is that of the underlying categoricals.

    Sampling and ``log_prob`` are those of :class:`ExpRelaxedCategorical`; only
    ``kl_divergence(q, p)`` differs: it is ``KL(Categorical(q.logits) || Categorical(p.logits))``,
    the KL of the discrete variable the relaxation stands for, which is what
    ``TraceMeanField_ELBO`` then uses (the objective of Jang et al. 2017). The KL
    between two Concrete densities grows without bound as the posterior logits sharpen
    (about one nat per unit of logit margin), which on MNIST kept the model from using
    its code at all; the discrete KL is bounded by ``log K``. See the README.
    """


@register_kl(DiscreteKLExpRelaxedCategorical, DiscreteKLExpRelaxedCategorical)
def _kl_discrete(q: DiscreteKLExpRelaxedCategorical, p: DiscreteKLExpRelaxedCategorical) -> torch.Tensor:
    log_q = q.logits - q.logits.logsumexp(-1, keepdim=True)
    log_p = p.logits - p.logits.logsumexp(-1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def concrete_class(objective: str) -> type[ExpRelaxedCategorical]:
    """The ExpConcrete class whose KL matches the objective (``"discrete_kl"`` or ``"relaxed"``)."""
    return DiscreteKLExpRelaxedCategorical if objective == "discrete_kl" else ExpRelaxedCategorical
