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
from pyro.distributions.torch_distribution import TorchDistribution, TorchDistributionMixin
from torch.distributions import constraints, register_kl
from torch.distributions.utils import clamp_probs
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical as _TorchExpRelaxed

from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.support import MASKED_LOGIT, taken_before

#: floor of a slot's gate used as the weight of its log-density and KL (a scale must be > 0)
GATE_FLOOR = 1e-6


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
    its code at all; the discrete KL is bounded by ``log K``. See ``docs/model.md``.
    """


@register_kl(DiscreteKLExpRelaxedCategorical, DiscreteKLExpRelaxedCategorical)
def _kl_discrete(q: DiscreteKLExpRelaxedCategorical, p: DiscreteKLExpRelaxedCategorical) -> torch.Tensor:
    log_q = q.logits - q.logits.logsumexp(-1, keepdim=True)
    log_p = p.logits - p.logits.logsumexp(-1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def concrete_class(objective: str) -> type[ExpRelaxedCategorical]:
    """The ExpConcrete class whose KL matches the objective (``"discrete_kl"`` or ``"relaxed"``)."""
    return DiscreteKLExpRelaxedCategorical if objective == "discrete_kl" else ExpRelaxedCategorical


class JointSlots(TorchDistribution):
    """The ``L0`` selection slots of a row as one reparameterized site: a log one-hot per slot.

    ``y ~ JointSlots(tau, logits, gates)`` has event shape ``(L0, K)``; ``y[..., l, :]`` is
    distributed as the ExpConcrete slot ``l`` of the per-slot layout (``slot_1..slot_L0``
    sites), and the sites are interchangeable: for the same random numbers the two layouts
    draw the same values (a test checks it). With ``without_replacement``, the dimensions
    that slots ``1..l-1`` peak on (their argmax) get the logit :data:`MASKED_LOGIT` in slot ``l``.

    Why one site: the per-slot layout costs ``2 L0`` Pyro sites per step, each with its own
    distribution objects, messengers and small tensor operations over ``K``; here the Gumbel
    noise, the normalization and the KL terms of all slots are single batched operations
    (``benchmarks/`` measures the difference). Only the argmax chain that decides which
    dimensions are taken stays a loop over the slots, without gradients.

    Args:
        temperature: positive scalar ``tau``.
        logits: ``batch_shape + (S, K)`` with ``S = 1`` (shared by the slots) or ``S = L0``.
        gates: ``batch_shape + (L0,)``: slot ``l``'s log-density and KL are weighted by
            ``max(gates[..., l], GATE_FLOOR)`` (``P(L_i >= l)``: only used slots count).
        without_replacement: mask the dimensions taken by earlier slots.

    ``log_prob`` is ``sum_l gate_l * log ExpConcrete_l(y_l)``, shape ``batch_shape``; the mask
    of each slot is recomputed from the value, so the model scores the guide's draw with the
    guide's masks.
    """

    # gates are tail sums of probabilities: in [0, 1] up to rounding (1 + 1e-7 happens)
    arg_constraints = {"logits": constraints.real, "gates": constraints.nonnegative}
    support = constraints.independent(log_simplex, 1)
    has_rsample = True

    def __init__(self, temperature, logits: torch.Tensor, gates: torch.Tensor, without_replacement: bool = True,
                 validate_args=None):
        self.temperature = check_temperature(temperature)
        num_slots = gates.shape[-1]
        if logits.dim() < 2 or logits.shape[-2] not in (1, num_slots):
            raise ConfigError(f"logits must have shape batch + (1 or {num_slots}, K), got {tuple(logits.shape)}")
        batch_shape = torch.broadcast_shapes(logits.shape[:-2], gates.shape[:-1])
        self.logits = logits
        self.gates = gates
        self.without_replacement = bool(without_replacement)
        self._taken = None  # masks of the last rsample, (..., L0, K) bool: what the analytic KL uses
        super().__init__(batch_shape, torch.Size((num_slots, logits.shape[-1])), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        logits = self.logits.expand(batch_shape + self.logits.shape[-2:])
        gates = self.gates.expand(batch_shape + self.gates.shape[-1:])
        return type(self)(self.temperature, logits, gates, self.without_replacement,
                          validate_args=self._validate_args if _instance is None else None)

    def _full_logits(self, shape) -> torch.Tensor:
        return self.logits.expand(shape)

    def taken_masks(self, picks: torch.Tensor) -> torch.Tensor:
        """``(..., L0, K)`` bool: the dimensions taken by earlier slots, from the slots' picks ``(..., L0)``."""
        picked = torch.nn.functional.one_hot(picks, self.event_shape[-1]).to(torch.int32)
        return (picked.cumsum(-2) - picked) > 0

    def _normalized(self, taken: torch.Tensor | None, shape) -> torch.Tensor:
        logits = self._full_logits(shape)
        if taken is not None:
            logits = logits.masked_fill(taken, MASKED_LOGIT)
        return logits - logits.logsumexp(-1, keepdim=True)  # as torch's Categorical normalizes

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        num_slots, k = self.event_shape
        # uniforms in the per-slot layout's order (slot by slot), so both layouts draw the same numbers
        uniforms = torch.rand((num_slots,) + shape[:-2] + (k,), dtype=self.logits.dtype, device=self.logits.device)
        uniforms = clamp_probs(uniforms).movedim(0, -2)
        gumbels = -((-(uniforms.log())).log())
        taken = taken_before(self._full_logits(shape) + gumbels) if self.without_replacement else None
        self._taken = taken
        # normalizing the logits first changes nothing in exact arithmetic, but it keeps the masked
        # entries (about MASKED_LOGIT / tau) rounded as in the per-slot layout's ExpConcrete draws
        scores = (self._normalized(taken, shape) + gumbels) / self.temperature
        return scores - scores.logsumexp(-1, keepdim=True)

    def masks_of(self, value: torch.Tensor) -> torch.Tensor | None:
        """The taken masks a value implies (None with independent slots)."""
        return self.taken_masks(value.argmax(-1)) if self.without_replacement else None

    def slot_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per-slot ExpConcrete log-densities ``(..., L0)`` (unweighted)."""
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        logits = self._normalized(self.masks_of(value), shape)
        k = self.event_shape[-1]
        tau = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        log_scale = torch.full_like(tau, float(k)).lgamma() - tau.log().mul(-(k - 1))
        score = logits - value.mul(tau)
        return (score - score.logsumexp(dim=-1, keepdim=True)).sum(-1) + log_scale

    def weights(self) -> torch.Tensor:
        return self.gates.clamp(min=GATE_FLOOR)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return (self.slot_log_prob(value) * self.weights()).sum(-1)


class DiscreteKLJointSlots(JointSlots):
    """:class:`JointSlots` whose KL to another is the gated sum of the slots' categorical KLs.

    ``kl_divergence(q, p) = sum_l gate_l KL(Cat(q_l) || Cat(p_l))`` with both slots masked by
    the dimensions ``q``'s own last draw took, as in the per-slot layout (where each slot's
    distributions are built after the earlier slots are drawn). It needs that draw: ``q``
    must be the guide's distribution of the trace, drawn once without a ``sample_shape``. A
    replayed or conditioned guide never draws, and the KL then raises ``RuntimeError``
    instead of letting the ELBO fall back to another objective.
    """


@register_kl(DiscreteKLJointSlots, DiscreteKLJointSlots)
def _kl_joint_slots(q: DiscreteKLJointSlots, p: DiscreteKLJointSlots) -> torch.Tensor:
    # not NotImplementedError: Pyro's ELBOs would take that as "no analytic KL" and silently switch
    # this site to the Monte-Carlo (relaxed) objective
    if q.without_replacement and q._taken is None:
        raise RuntimeError("the KL of JointSlots depends on which dimensions the guide's draw took, and this "
                           "distribution has not drawn one (a replayed or conditioned guide?): call it on the "
                           "distribution that drew the site's value")
    if q._taken is not None and q._taken.shape[:-2] != q.batch_shape:
        raise RuntimeError(f"the KL of JointSlots needs the guide's draw of batch shape {tuple(q.batch_shape)}, "
                           f"but the last draw had shape {tuple(q._taken.shape[:-2])} (drawn with a sample_shape)")
    shape = q._taken.shape if q._taken is not None else torch.broadcast_shapes(
        q.batch_shape + q.event_shape, p.batch_shape + p.event_shape)
    log_q = q._normalized(q._taken, shape)
    log_p = p._normalized(q._taken, shape)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (kl * q.weights()).sum(-1)


def joint_slots_class(objective: str) -> type[JointSlots]:
    """The joint slot distribution whose KL matches the objective."""
    return DiscreteKLJointSlots if objective == "discrete_kl" else JointSlots


class GumbelTopKSlots(TorchDistribution):
    """The ``L0`` slots of a row as one perturbation of shared slot logits (``slot_layout="gumbel_topk"``).

    ``y ~ GumbelTopKSlots(logits, gates)`` is ``y = logits + g`` with ``g`` standard Gumbel noise,
    event shape ``(K,)``. The indices of its ``L0`` largest entries, in decreasing order, are an
    exact draw of ``L0`` categorical slots without replacement from ``softmax(logits)``
    (Gumbel-top-k; Kool et al. 2019): slot ``l`` is ``Categorical(logits)`` restricted to the
    dimensions slots ``1..l-1`` did not take, as in the other slot layouts.

    ``kl_divergence(q, p)`` is ``sum_l gate_l KL(q_l || p_l)``, the gated categorical KLs of the
    slots given the dimensions ``q``'s own last draw took (the same estimate as the other layouts'
    ``discrete_kl``: exact for each slot given the earlier ones, Monte Carlo over which those
    are), computed in log space in ``O(K + L0^2)`` per row (:func:`slot_sequence_kl`). It needs
    that draw: ``q`` must be the guide's distribution of the trace, drawn once without a
    ``sample_shape``. ``log_prob`` is the density of ``y`` (independent Gumbels); the ELBO of
    SDLGM uses the KL.

    Args:
        logits: ``batch_shape + (K,)`` shared slot logits.
        gates: ``batch_shape + (L0,)``: slot ``l``'s KL is weighted by ``max(gates[..., l], GATE_FLOOR)``.
    """

    arg_constraints = {"logits": constraints.real_vector, "gates": constraints.nonnegative}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, logits: torch.Tensor, gates: torch.Tensor, validate_args=None):
        if gates.shape[-1] > logits.shape[-1]:
            raise ConfigError(f"{gates.shape[-1]} slots cannot take distinct dimensions among {logits.shape[-1]}")
        batch_shape = torch.broadcast_shapes(logits.shape[:-1], gates.shape[:-1])
        self.logits = logits
        self.gates = gates
        self._picks = None  # (..., L0) the dimensions of the last rsample, in slot order
        super().__init__(batch_shape, logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return type(self)(self.logits.expand(batch_shape + self.logits.shape[-1:]),
                          self.gates.expand(batch_shape + self.gates.shape[-1:]),
                          validate_args=self._validate_args if _instance is None else None)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        # Gumbel noise -log(-log(U)), in place (torch's exponential_ was 7x slower than rand on CPU)
        noise = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
        scores = self.logits.expand(shape) - noise.log_().neg_().log_()
        self._picks = scores.detach().topk(self.gates.shape[-1], dim=-1).indices
        return scores

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        noise = value - self.logits
        return (-noise - (-noise).exp()).sum(-1)

    def weights(self) -> torch.Tensor:
        return self.gates.clamp(min=GATE_FLOOR)


def _reverse_logcumsumexp(x: torch.Tensor) -> torch.Tensor:
    """``out[..., l] = log sum_{j >= l} exp(x[..., j])``."""
    return x.flip(-1).logcumsumexp(-1).flip(-1)


def _shared_row(logits: torch.Tensor) -> torch.Tensor | None:
    """``logits[0, ..., 0, :]`` when every row is the same vector (expanded, stride 0), else None."""
    if logits.dim() > 1 and all(stride == 0 for stride in logits.stride()[:-1]):
        return logits.reshape(-1, logits.shape[-1])[0]
    return None


def _rest_log_normalizer(log_p: torch.Tensor, picks: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """``log sum_{k not in picks} exp(log_p[..., k])`` ``(..., 1)``; for a prior shared by all rows
    (the usual case) from its one ``(K,)`` normalizer minus the picks' share, in ``O(L0)`` per row,
    unless the picks hold most of the prior's mass (then the full masked sum, which has no
    cancellation)."""
    row = _shared_row(log_p)
    if row is not None:
        total = row.logsumexp(-1)
        share = (row[picks].logsumexp(-1, keepdim=True) - total).exp()  # the picks' share of the prior's mass
        if bool((share < 0.5).all()):
            return total + torch.log1p(-share)
    return log_p.masked_fill(~rest, float("-inf")).logsumexp(-1, keepdim=True)


def slot_sequence_kl(log_q: torch.Tensor, log_p: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """The categorical KL of each slot drawn without replacement, given the earlier slots' picks.

    Slot ``l`` is ``softmax`` of the logits over the dimensions not in ``picks[..., :l]``; its KL
    is ``E_q_l[log q - log p] - log Z_q(l) + log Z_p(l)``. Each remaining set is "all dimensions
    but the picks" plus the picks from ``l`` on, so every normalizer and expectation is a sum of
    non-negative terms over one ``(..., K)`` pass and the ``L0`` picks (the prior's, when all
    rows share it, from its own ``(K,)`` normalizer).

    Args:
        log_q, log_p: ``(..., K)`` logits (unnormalized) of the guide's and the prior's slots.
        picks: ``(..., L0)`` distinct dimension indices, in slot order.

    Returns:
        ``(..., L0)`` KL of each slot, in nats.
    """
    shape = torch.broadcast_shapes(log_q.shape, log_p.shape)
    log_q, log_p = log_q.expand(shape), log_p.expand(shape)
    q_picks, p_picks = log_q.gather(-1, picks), log_p.gather(-1, picks)
    slots, k = picks.shape[-1], shape[-1]
    if slots < k:
        rest = torch.ones(shape, dtype=torch.bool, device=log_q.device).scatter(-1, picks, False)
        q_rest = log_q.masked_fill(~rest, float("-inf"))
        lz_q_rest = q_rest.logsumexp(-1, keepdim=True)  # (..., 1)
        # E over the rest's own softmax of (log q - log p); the picks' weights are exp(-inf) = 0. A dot
        # product (no (..., K) temporary), and for a uniform prior E[log q] - c (no difference tensor)
        weights = q_rest.softmax(-1).unsqueeze(-2)
        row = _shared_row(log_p)
        if row is not None and bool((row == row[0]).all()):
            mean_rest = (weights @ log_q.unsqueeze(-1)).squeeze(-1) - row[0]
        else:
            mean_rest = (weights @ (log_q - log_p).unsqueeze(-1)).squeeze(-1)
        lz_p_rest = _rest_log_normalizer(log_p, picks, rest)
    else:  # every dimension is picked: the rest is empty
        lz_q_rest = lz_p_rest = torch.full(shape[:-1] + (1,), float("-inf"), dtype=log_q.dtype, device=log_q.device)
        mean_rest = torch.zeros_like(lz_q_rest)
    lz_q = torch.logaddexp(lz_q_rest, _reverse_logcumsumexp(q_picks))  # (..., L0)
    lz_p = torch.logaddexp(lz_p_rest, _reverse_logcumsumexp(p_picks))
    later = torch.ones(slots, slots, dtype=torch.bool, device=picks.device).triu()  # [l, j]: j >= l
    # (..., L0, L0): slot l's probability of pick j >= l (masked before exp: an earlier pick may hold e^400)
    weight_picks = (q_picks.unsqueeze(-2) - lz_q.unsqueeze(-1)).masked_fill(~later, float("-inf")).exp()
    rest_weight = (lz_q_rest - lz_q).exp() if slots < k else torch.zeros_like(lz_q)
    expected = rest_weight * mean_rest + (weight_picks * (q_picks - p_picks).unsqueeze(-2)).sum(-1)
    return expected - lz_q + lz_p


@register_kl(GumbelTopKSlots, GumbelTopKSlots)
def _kl_gumbel_topk(q: GumbelTopKSlots, p: GumbelTopKSlots) -> torch.Tensor:
    # not NotImplementedError: Pyro's ELBOs would take that as "no analytic KL" (see _kl_joint_slots)
    if q._picks is None:
        raise RuntimeError("the KL of GumbelTopKSlots depends on which dimensions the guide's draw took, and this "
                           "distribution has not drawn one (a replayed or conditioned guide?)")
    if q._picks.shape[:-1] != q.batch_shape:
        raise RuntimeError(f"the KL of GumbelTopKSlots needs the guide's draw of batch shape {tuple(q.batch_shape)}, "
                           f"but the last draw had shape {tuple(q._picks.shape[:-1])} (drawn with a sample_shape)")
    return (slot_sequence_kl(q.logits, p.logits, q._picks) * q.weights()).sum(-1)


class LevelMarginal(TorchDistribution):
    """``q(L_i)`` itself as the value of the ``sparsity`` site (``sparsity_inference="marginal"``).

    The value is ``log q(L_i = l)``, shape ``batch_shape + (num_levels,)``: a point mass in log
    space on the distribution of the count, so that everything computed from the site (the
    slot gates ``P(L_i >= l)`` and the expected log-likelihood of
    :class:`ExpectedLogLikelihood`) is an exact expectation over ``L_i`` instead of a
    Monte-Carlo one. ``kl_divergence`` between two of them is the KL of the categoricals, so
    the ELBO keeps the discrete KL of ``L_i``. It has no density (``log_prob`` raises): only an
    objective with analytic KL terms (``objective="discrete_kl"``) can score it.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = log_simplex
    has_rsample = True

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        super().__init__(self.logits.shape[:-1], self.logits.shape[-1:], validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LevelMarginal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(LevelMarginal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()):
        return self.logits.expand(self._extended_shape(sample_shape))

    def log_prob(self, value):
        raise NotImplementedError("a LevelMarginal site (sparsity_inference='marginal') has no density; "
                                  "score it by its KL (objective='discrete_kl')")


@register_kl(LevelMarginal, LevelMarginal)
def _kl_level_marginal(q: LevelMarginal, p: LevelMarginal) -> torch.Tensor:
    return (q.probs * (q.logits - p.logits)).sum(-1)


class ExpectedLogLikelihood(TorchDistribution):
    """The likelihood of ``x`` averaged in log space over the count: ``sum_l w_l log p(x | z_l)``.

    ``base`` has batch shape ``batch_shape + (num_levels,)``: the likelihood of each level's
    code ``z_l`` (its first ``l`` slots), and ``weights`` ``batch_shape + (num_levels,)`` the
    level weights (``q(L_i = l)`` in ``marginal`` mode, a relaxed one-hot of ``L_i``
    otherwise). Its ``log_prob`` is the expected log-likelihood the ELBO needs (an
    unnormalized density of ``x``); ``sample`` draws a level from the weights, then ``x`` from
    that level's likelihood, so posterior-predictive draws follow the discrete model.
    The decoder only ever sees codes with a whole number of slots.
    """

    arg_constraints = {}

    def __init__(self, base, weights: torch.Tensor, validate_args=None):
        self.base, self.weights = base, weights
        super().__init__(weights.shape[:-1], base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    def log_prob(self, value):
        per_level = self.base.log_prob(value.unsqueeze(-1 - len(self.event_shape)))
        return (per_level * self.weights).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        draws = self.base.sample(sample_shape)  # sample_shape + batch + (levels,) + event
        level = torch.distributions.Categorical(probs=self.weights).sample(sample_shape)
        index = level.reshape(level.shape + (1,) * (1 + len(self.event_shape)))
        index = index.expand(level.shape + (1,) + self.event_shape)
        return draws.gather(len(level.shape), index).squeeze(len(level.shape))

    @property
    def mean(self):
        return (self.base.mean * self.weights.unsqueeze(-1)).sum(-2) if self.event_shape else None


class DistinctDraws(TorchDistribution):
    """The label set of ``L = |y|`` draws with replacement from ``softmax(logits)``, scored on
    the event that the draws are distinct and form ``y``: ``log p(y) = log |y|! + sum_{k in y} log p_k``.

    The multi-label model's set bound (:mod:`pyro_sdlgm.model.conditional`) observes its support
    through this distribution. For a set of ``|y|`` labels chosen by ``|y|`` draws *without*
    replacement (the Plackett-Luce slots of ``slot_selection="without_replacement"``), each
    ordering ``sigma`` has probability ``prod_j p_{sigma_j} / (1 - sum_{i < j} p_{sigma_i})``,
    at least ``prod_j p_{sigma_j}``, so ``log p(y)`` here is a lower bound on that model's
    log-probability of the set; for draws with replacement it is exact for the event that the
    ``|y|`` draws form ``y`` (a set can also arise from more draws with repeats). Its maximizer over
    ``softmax(logits)`` is ``p_k = E[y_k | x] / E[|y| | x]``, which orders the labels as their
    marginals do: the reduction is consistent for precision@k (the unnormalized
    pick-all-labels reduction of Menon et al., 2019).

    Args:
        logits: ``(..., K)`` unnormalized log-probabilities of one draw.

    Batch shape ``(...)``, event shape ``(K,)``; values are 0/1 vectors. Only ``log_prob`` is
    defined: the site is always observed.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DistinctDraws, _instance)
        new.logits = self.logits.expand(torch.Size(batch_shape) + self.event_shape)
        super(DistinctDraws, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        count = value.sum(-1)
        return torch.lgamma(count + 1.0) + (value * self.logits.log_softmax(-1)).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError("DistinctDraws scores an observed label set; it has no sampler (the model "
                                  "samples its support through the slot sites)")
