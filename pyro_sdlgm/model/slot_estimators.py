"""Gradient estimators of the support step: how a slot's sample reaches the code, and its gradient.

Each slot site ``slot_l`` draws from an ExpConcrete over the ``K`` dimensions (the argmax of
its sample is an exact ``Categorical(logits)`` draw, by the Gumbel-max trick). A slot
estimator decides two things:

- the **distribution** placed at the site (the ExpConcrete of the objective, or a subclass
  whose reparameterized sample carries another backward pass), and
- the **selection** the code is built from, given the site's log-space value.

The sites, their KL terms and the hard codes are the same for every estimator; only the
forward value of the code's selection and the gradient that reaches the guide differ.
``benchmarks/gradient_estimators.py`` measures the bias and variance of each against an
exact reference on a small model.

Built-ins (``ModelConfig.slot_estimator``, by name or as a ``{name = ..., **options}`` table):

- ``"relaxed"``: the Concrete sample itself (Gumbel-Softmax; Jang et al. 2017, Maddison et
  al. 2017).
- ``"straight_through"``: the one-hot of the sample's argmax forward, the Concrete sample's
  gradient backward (Bengio et al. 2013; Jang et al. 2017).
- ``"imle"``: implicit maximum-likelihood estimation (Niepert et al. 2021): the one-hot of
  the sample's argmax forward (an exact categorical draw); backward, the difference between
  that one-hot and the argmax of the same perturbed logits moved against the loss gradient,
  ``(z - z') / lambda`` with ``z' = onehot(argmax(logits + g - lambda dL/dz))``. Not a
  relaxation: it never evaluates the loss at a soft selection. ``lambda`` is set per row
  relative to the size of ``dL/dz`` (option ``step``, in logits; see :class:`IMLE`), so
  that it does not depend on the data set size that scales the ELBO.

Register another with :func:`register_slot_estimator`; a factory is called with the
table's options and returns a :class:`SlotEstimator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions.utils import clamp_probs

from pyro_sdlgm.model.distributions import ExpRelaxedCategorical
from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.registry import ComponentSpec, Registry, component_name
from pyro_sdlgm.model.support import MASKED_LOGIT, straight_through

SLOT_ESTIMATORS: Registry["SlotEstimator"] = Registry("slot estimator")
register_slot_estimator = SLOT_ESTIMATORS.register


class SlotEstimator:
    """The default: the site draws from the objective's ExpConcrete; the code uses its sample."""

    #: whether the estimator needs the analytic (discrete) KL of the slots and one site per slot:
    #: estimators whose backward pass is not the reparameterization of the site's density set it
    #: (``ModelSpec`` then refuses ``objective="relaxed"`` and ``slot_layout="joint"``)
    needs_discrete_kl = False

    def distribution(self, concrete: type[ExpRelaxedCategorical], tau: float, logits: torch.Tensor):
        """The site's distribution: ``concrete(tau, logits=logits)``, batch ``logits.shape[:-1]``, event ``(K,)``.

        Used with ``slot_layout="per_slot"`` only: the joint layout's one site is always
        :class:`~pyro_sdlgm.model.distributions.JointSlots`, and only :meth:`selection` applies there.
        """
        return concrete(tau, logits=logits)

    def selection(self, value: torch.Tensor) -> torch.Tensor:
        """The selection ``(..., K)`` the code uses, from the site's log-space value ``(..., K)``."""
        return value.exp()


@register_slot_estimator("relaxed")
class Relaxed(SlotEstimator):
    """Gumbel-Softmax: the code uses the Concrete sample ``exp(value)``."""


@register_slot_estimator("straight_through")
class StraightThrough(SlotEstimator):
    """Straight-through Gumbel-Softmax: the argmax one-hot forward, the Concrete sample's gradient."""

    def selection(self, value):
        return straight_through(value.exp())


class _PerturbAndMAP(torch.autograd.Function):
    """Forward: the ExpConcrete sample ``log_softmax((logits + g) / tau)``. Backward: I-MLE.

    The incoming gradient is taken as ``dL/dz`` of the one-hot ``z = onehot(argmax(logits + g))``
    (the selection of :class:`IMLE` passes it through unchanged). The gradient of ``logits``
    is ``(z - z') * s / step`` with ``z' = onehot(argmax(logits + g - step * dL/dz / s))`` and
    ``s`` the root mean square of ``dL/dz`` over the row (an adaptive ``lambda = step / s``); the
    dimensions earlier slots took (logit :data:`~pyro_sdlgm.model.support.MASKED_LOGIT`) are left out of
    both.
    """

    @staticmethod
    def forward(ctx, logits, gumbels, tau, step):
        scores = logits + gumbels
        ctx.save_for_backward(scores)
        ctx.step = step
        scaled = scores / tau
        return scaled - scaled.logsumexp(-1, keepdim=True)

    @staticmethod
    def backward(ctx, grad):
        (scores,) = ctx.saved_tensors
        # dimensions taken by earlier slots (logit MASKED_LOGIT) are neither a target nor part of the RMS
        free = scores > MASKED_LOGIT / 2
        grad_free = grad.masked_fill(~free, 0.0)
        count = free.sum(-1, keepdim=True).clamp_min(1)
        scale = (torch.linalg.vector_norm(grad_free, dim=-1, keepdim=True) / count.sqrt()).clamp_min(
            torch.finfo(grad.dtype).tiny)
        num_classes = scores.shape[-1]
        hard = F.one_hot(scores.argmax(-1), num_classes).to(grad.dtype)
        moved = (scores - ctx.step * grad_free / scale).masked_fill(~free, float("-inf"))
        target = F.one_hot(moved.argmax(-1), num_classes).to(grad.dtype)
        return (hard - target) * (scale / ctx.step), None, None, None


def _imle_class(concrete: type[ExpRelaxedCategorical]) -> type[ExpRelaxedCategorical]:
    """A subclass of ``concrete`` (so its KL registrations apply) whose ``rsample`` is :class:`_PerturbAndMAP`."""

    class PerturbAndMAP(concrete):
        step = 1.0

        def rsample(self, sample_shape=torch.Size()):
            shape = self._extended_shape(sample_shape)
            # the same random numbers as torch's ExpRelaxedCategorical.rsample
            uniforms = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
            gumbels = -((-(uniforms.log())).log())
            return _PerturbAndMAP.apply(self.logits.expand(shape), gumbels, self.temperature, self.step)

        def expand(self, batch_shape, _instance=None):
            new = self._get_checked_instance(PerturbAndMAP, _instance)
            new = super().expand(batch_shape, _instance=new)
            new.step = self.step
            return new

    PerturbAndMAP.__name__ = PerturbAndMAP.__qualname__ = f"PerturbAndMAP{concrete.__name__}"
    return PerturbAndMAP


_IMLE_CLASSES: dict[type, type] = {}


@register_slot_estimator("imle")
class IMLE(SlotEstimator):
    """Implicit maximum-likelihood estimation (Niepert et al. 2021) of the slots' gradient.

    Args:
        step: the size of the perturbation, in logits per unit root-mean-square ``s`` of
            ``dL/dz`` over the row: I-MLE's ``lambda`` is ``step / s``. Small steps change the
            argmax of few rows (a sparse, low-bias but noisy gradient); large ones change it in
            most rows (denser, more biased).
    """

    needs_discrete_kl = True

    def __init__(self, step: float = 1.0):
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0 or step == float("inf"):
            raise ConfigError(f"imle step must be a positive finite number, got {step!r}")
        self.step = float(step)

    def distribution(self, concrete, tau, logits):
        cls = _IMLE_CLASSES.get(concrete)
        if cls is None:
            cls = _IMLE_CLASSES[concrete] = _imle_class(concrete)
        site = cls(tau, logits=logits)
        site.step = self.step
        return site

    def selection(self, value):
        hard = F.one_hot(value.argmax(-1), value.shape[-1]).to(value.dtype)
        return hard + value - value.detach()  # dL/dvalue = dL/dz, which _PerturbAndMAP reads


_BUILT: dict[tuple, SlotEstimator] = {}


def build_slot_estimator(spec: ComponentSpec) -> SlotEstimator:
    """The :class:`SlotEstimator` that ``spec`` (a name or a ``{name = ..., **options}`` table) names.

    Built once per spec (the model and the guide ask on every step); a registration with
    ``overwrite=True`` replaces the built estimator from the next step on, in existing models
    too (and without :class:`~pyro_sdlgm.model.spec.ModelSpec`'s check of its ``needs_discrete_kl``).
    """
    name, options = component_name(spec, SLOT_ESTIMATORS.kind)
    try:  # with the types: True == 1 == 1.0, but only some of them are valid options
        key = (name, SLOT_ESTIMATORS.get(name), tuple(sorted((k, type(v), v) for k, v in options.items())))
        hash(key)
    except TypeError:  # unhashable option values: build each time
        return SLOT_ESTIMATORS.build(spec)
    if key not in _BUILT:
        _BUILT[key] = SLOT_ESTIMATORS.build(spec)
    return _BUILT[key]


def slot_estimator_name(spec: ComponentSpec) -> str:
    """The registered name of a slot-estimator spec."""
    return component_name(spec, SLOT_ESTIMATORS.kind)[0]
