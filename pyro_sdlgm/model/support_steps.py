"""Support steps: how the ``L0`` selection slots become Pyro sites, and what the code is built from.

A support step is a strategy chosen once, by ``ModelSpec.slot_layout``, and shared by the
model and the guide (so both place the same sites):

- ``"per_slot"``: one site per slot, ``slot_1 .. slot_L0``, each an ExpConcrete over the
  ``K`` dimensions (dimensions earlier slots took are masked). A step holds several
  ``(N, L0, K)`` tensors.
- ``"joint"``: the same distribution as one site ``slots`` (event ``(L0, K)``,
  :class:`~pyro_sdlgm.model.distributions.JointSlots`), computed in batched operations.
- ``"gumbel_topk"``: one site ``support`` holding the Gumbel-perturbed slot logits
  ``y = logits + g`` (event ``(K,)``, :class:`~pyro_sdlgm.model.distributions.GumbelTopKSlots`).
  Its ``L0`` largest entries, in order, are the slots' picks: an exact draw of ``L0`` slots
  without replacement (Gumbel-top-k; Kool et al. 2019), so slot ``l`` is distributed as in the
  other layouts with shared slot logits. The KL term is the same gated sum of the slots'
  categorical KLs, computed in ``O(K)`` per row. The relaxation is restricted to the
  ``num_candidates`` largest perturbed scores: slot ``l``'s relaxed one-hot is the softmax of
  ``y / tau`` over the candidates that slots ``1..l-1`` did not take, so the code is sparse
  (at most ``num_candidates`` non-zeros; the decoder's first layer gathers its columns) and
  time and memory are linear in ``K``, not in ``K x L0``. Dimensions outside the candidates
  get no gradient through the reconstruction (their KL gradient remains), as in a top-k
  autoencoder. Needs shared slot logits (``mlp_magnitude_slots`` or ``mlp_shared_slots``),
  ``objective="discrete_kl"``, ``slot_selection="without_replacement"``,
  ``count_coupling="gated_code"`` and ``sparsity_inference="relaxed"``.

Register another with :func:`register_support_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyro
import scipy.sparse
import torch
from pyro import poutine

from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.distributions import GATE_FLOOR, GumbelTopKSlots, concrete_class, joint_slots_class
from pyro_sdlgm.model.registry import Registry
from pyro_sdlgm.model.spec import SLOTS_SITE, WIDE_LATENT_DIM, slot_site
from pyro_sdlgm.model.support import exclude_taken, mark_taken

SUPPORT_STEPS: Registry["SupportStep"] = Registry("slot layout")
register_support_step = SUPPORT_STEPS.register

SUPPORT_SITE = "support"  # slot_layout="gumbel_topk": the perturbed slot logits, event (K,)


class Slots(NamedTuple):
    """The slots' selections, what the code is built from.

    Attributes:
        selection: ``(N, L0, C)`` (relaxed) one-hots of the slots over ``C`` columns.
        index: ``(N, C)`` the dimension of each column, or None when the columns are all
            ``K`` dimensions in order (``C = K``).
    """

    selection: torch.Tensor
    index: torch.Tensor | None


class SparseCode(NamedTuple):
    """A code with few non-zeros per row: ``value[..., c]`` at dimension ``index[..., c]`` of ``size``.

    ``index`` and ``value`` are ``(..., C)``; an index may carry the value 0. The decoder's first
    layer gathers the ``C`` columns instead of multiplying a dense ``(..., K)`` code.
    """

    index: torch.Tensor
    value: torch.Tensor
    size: int

    def to_dense(self) -> torch.Tensor:
        dense = self.value.new_zeros(self.value.shape[:-1] + (self.size,))
        return dense.scatter_add(-1, self.index, self.value)

    @classmethod
    def from_csr(cls, matrix, device: torch.device | str = "cpu") -> SparseCode:
        """The rows of a scipy CSR matrix ``(N, K)`` as ``(N, C)`` indices and values, ``C`` the most
        non-zeros of a row (at least 1; shorter rows padded with the value 0 at dimension 0)."""
        counts = np.diff(matrix.indptr)
        width = max(int(counts.max(initial=0)), 1)
        rows = np.repeat(np.arange(matrix.shape[0]), counts)
        position = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
        index = np.zeros((matrix.shape[0], width), dtype=np.int64)
        value = np.zeros((matrix.shape[0], width), dtype=np.float32)
        index[rows, position], value[rows, position] = matrix.indices, matrix.data
        return cls(torch.from_numpy(index).to(device), torch.from_numpy(value).to(device), int(matrix.shape[1]))

    def to_csr(self) -> scipy.sparse.csr_matrix:
        """The ``(N, C)`` code as a scipy CSR matrix ``(N, size)``, the inverse of :meth:`from_csr`: a
        dimension listed twice gets the sum of its values (as in :meth:`to_dense`), zeros are dropped."""
        index, value = self.index.cpu().numpy(), self.value.detach().cpu().numpy()
        rows = np.repeat(np.arange(index.shape[0]), index.shape[1])
        matrix = scipy.sparse.csr_matrix((value.ravel(), (rows, index.ravel())), shape=(index.shape[0], self.size))
        matrix.eliminate_zeros()
        return matrix


LogitsOfSlot = Callable[[int | None], torch.Tensor]


class SupportStep:
    """The strategy interface: the sites a layout places and the selections it returns."""

    #: whether the code is a :class:`SparseCode` over candidate columns (else a dense ``(N, K)``)
    sparse_code = False
    #: whether each slot's site is the slot estimator's own distribution (estimators that change the
    #: site's backward pass, such as ``imle``, need it)
    uses_site_distribution = False

    def check(self, spec) -> None:
        """Raise :class:`ConfigError` when ``spec``'s other modes do not go with this step."""

    def sites(self, spec) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def draw_numbers(self, spec) -> int:
        """How many numbers per row one draw of the sites holds (``L0 x K``: each slot over all dimensions)."""
        return spec.max_sparsity * spec.latent_dim

    def picks(self, spec, values) -> torch.Tensor:  # pragma: no cover - abstract
        """The dimension each slot takes, ``(..., L0)``, from a mapping of site names to values."""
        raise NotImplementedError

    def sample(self, spec, logits_of_slot: LogitsOfSlot, tau: float, gates: torch.Tensor, estimator) -> Slots:
        """Place the sites; ``gates (N, L0)`` weight the slots' log-densities and KL terms."""
        raise NotImplementedError  # pragma: no cover - abstract


@register_support_step("per_slot")
class PerSlot(SupportStep):
    """One ExpConcrete site per slot over all ``K`` dimensions, ``slot_1 .. slot_L0`` (see the module docstring)."""

    uses_site_distribution = True

    def sites(self, spec):
        return [slot_site(index) for index in range(spec.max_sparsity)]

    def picks(self, spec, values):
        return torch.stack([values[name].argmax(-1) for name in self.sites(spec)], -1)

    def sample(self, spec, logits_of_slot, tau, gates, estimator):
        concrete = concrete_class(spec.objective)
        without_replacement = spec.slot_selection == "without_replacement"
        taken, selections = None, []
        for index in range(spec.max_sparsity):
            logits = logits_of_slot(index)
            if without_replacement:
                logits = exclude_taken(logits, taken)
            with poutine.scale(scale=gates[..., index].clamp(min=GATE_FLOOR)):
                value = pyro.sample(slot_site(index), estimator.distribution(concrete, tau, logits))
            selection = estimator.selection(value)
            selections.append(selection)
            if without_replacement:
                taken = mark_taken(taken, selection)
        return Slots(torch.stack(selections, dim=-2), None)


@register_support_step("joint")
class Joint(SupportStep):
    """All slots as one :class:`~pyro_sdlgm.model.distributions.JointSlots` site ``slots``: the per-slot
    distribution with batched operations, faster; not with ``sparsity_inference="enumerate"``."""

    def check(self, spec):
        if spec.sparsity_inference == "enumerate":
            raise ConfigError("slot_layout='joint' does not take sparsity_inference='enumerate': with an enumerated "
                              "L_i the slot gates carry enumeration dimensions that one joint site cannot weight "
                              f"(got sparsity_inference={spec.sparsity_inference!r})")

    def sites(self, spec):
        return [SLOTS_SITE]

    def picks(self, spec, values):
        return values[self.sites(spec)[0]].argmax(-1)

    def sample(self, spec, logits_of_slot, tau, gates, estimator):
        joint = joint_slots_class(spec.objective)(tau, logits_of_slot(None), gates,
                                                  spec.slot_selection == "without_replacement")
        return Slots(estimator.selection(pyro.sample(self.sites(spec)[0], joint)), None)


@register_support_step("gumbel_topk")
class GumbelTopK(SupportStep):
    """One site ``support``: a Gumbel perturbation of the shared slot logits whose top ``L0`` are the
    slots, an exact draw without replacement; time and memory linear in ``K``; needs shared slot
    logits (see the module docstring).

    Args:
        num_candidates: the columns of the relaxation, ``"auto"``: ``2 L0`` (at most ``K``).
    """

    sparse_code = True

    def __init__(self, num_candidates: int | str = "auto"):
        if num_candidates != "auto" and (isinstance(num_candidates, bool) or not isinstance(num_candidates, int)
                                         or num_candidates < 1):
            raise ConfigError(f"gumbel_topk num_candidates must be 'auto' or a positive integer, got {num_candidates!r}")
        self.num_candidates = num_candidates

    def candidates(self, spec) -> int:
        wanted = 2 * spec.max_sparsity if self.num_candidates == "auto" else self.num_candidates
        return min(spec.latent_dim, max(wanted, spec.max_sparsity))

    #: the modes this step needs, and their values
    REQUIRED_MODES = {"objective": "discrete_kl", "slot_selection": "without_replacement",
                      "count_coupling": "gated_code", "sparsity_inference": "relaxed"}

    @classmethod
    def conflicts(cls, spec) -> dict:
        """The modes of ``spec`` this step does not take, with their values (empty when it takes them all)."""
        return {name: getattr(spec, name) for name, needed in cls.REQUIRED_MODES.items() if getattr(spec, name) != needed}

    def check(self, spec):
        wrong = self.conflicts(spec)
        if wrong:
            needed = ", ".join(f"{name}={value!r}" for name, value in self.REQUIRED_MODES.items())
            raise ConfigError(f"slot_layout='gumbel_topk' needs {needed}; got {wrong}")

    def sites(self, spec):
        return [SUPPORT_SITE]

    def draw_numbers(self, spec):
        return spec.latent_dim

    def picks(self, spec, values):
        return values[SUPPORT_SITE].topk(spec.max_sparsity, dim=-1).indices

    def sample(self, spec, logits_of_slot, tau, gates, estimator):
        logits = logits_of_slot(None)
        if logits.shape[-2] != 1:
            raise ConfigError("slot_layout='gumbel_topk' draws all slots from one perturbation of shared slot "
                              f"logits, but the guide gives {logits.shape[-2]} logit vectors (per-slot logits); use "
                              "guide 'mlp_magnitude_slots' or 'mlp_shared_slots', or slot_layout='per_slot' "
                              f"(slot_layout='auto' takes gumbel_topk above {WIDE_LATENT_DIM} dimensions)")
        site = GumbelTopKSlots(logits.squeeze(-2), gates)
        scores = pyro.sample(SUPPORT_SITE, site)
        top = scores.topk(self.candidates(spec), dim=-1)
        # slot l may take candidate c unless an earlier slot took it: the first l - 1 candidates
        slots, columns = spec.max_sparsity, top.indices.shape[-1]
        taken = torch.ones(slots, columns, dtype=torch.bool, device=scores.device).tril(-1)
        scaled = (top.values / tau).unsqueeze(-2).masked_fill(taken, float("-inf"))
        return Slots(estimator.selection(scaled.log_softmax(-1)), top.indices)


def build_support_step(layout) -> SupportStep:
    """The support step a ``slot_layout`` (a name or a ``{name = ..., **options}`` table) names."""
    return SUPPORT_STEPS.build(layout)
