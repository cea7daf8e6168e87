"""The sparse machinery, in plain torch: slot gates, the soft support, and hard supports.

Nothing here places Pyro sites; the model and the evaluation code share these
functions, so the relaxed and the hard representation follow one definition.

Notation: ``L0`` slots, ``K`` dimensions, ``num_levels`` sparsity levels
(``{1..L0}`` or ``{0..L0}``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def slot_gates(level_probs: torch.Tensor, min_level: int) -> torch.Tensor:
    """Gates ``g_l = P(L >= l)`` of the slots ``l = 1..L0``.

    Args:
        level_probs: ``(..., num_levels)`` (relaxed) one-hot over the levels
            ``min_level..L0``; rows sum to one.
        min_level: 0 or 1, the smallest level.

    Returns:
        ``(..., L0)`` gates, non-increasing in ``l``; exactly ``1[L >= l]`` for a hard one-hot.
    """
    # reverse cumulative sum: entry j holds sum_{j' >= j} p_j'
    tail = level_probs.flip(-1).cumsum(-1).flip(-1)
    # the tail of level index j (value min_level + j) is P(L >= min_level + j); slot l needs value l
    return tail[..., 1 - min_level:]


def soft_support(gates: torch.Tensor, slot_probs: torch.Tensor) -> torch.Tensor:
    """Soft union of the used slots: ``s_k = 1 - prod_l (1 - g_l * c_lk)``.

    Args:
        gates: ``(..., L0)`` slot gates.
        slot_probs: ``(..., L0, K)`` (relaxed) one-hot selections of the slots.

    Returns:
        ``(..., K)`` support mask in ``[0, 1]``; the indicator of the chosen
        dimensions when gates and selections are hard.
    """
    return 1.0 - torch.prod(1.0 - gates.unsqueeze(-1) * slot_probs, dim=-2)


def level_probs_from_value(value: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Turn a ``sparsity`` site value into level probabilities ``(..., num_levels)``.

    A floating value is a log-space relaxed one-hot (ExpConcrete sample); an integer
    value is a level index (enumerated or sampled categorical).
    """
    if value.is_floating_point():
        return value.exp()
    return F.one_hot(value.long(), num_levels).to(torch.get_default_dtype())


def straight_through(selection: torch.Tensor) -> torch.Tensor:
    """The one-hot of the argmax of a relaxed selection ``(..., K)`` in the forward pass, with the
    relaxed selection's gradient in the backward pass (Bengio et al. 2013; Jang et al. 2017)."""
    hard = mark_taken(None, selection).to(selection.dtype)
    return hard + selection - selection.detach()


#: logit given to dimensions taken by earlier slots: far below any learned logit, yet finite so
#: that the ExpConcrete log-density and the categorical KL stay finite
MASKED_LOGIT = -1e4


def exclude_taken(logits: torch.Tensor, taken: torch.Tensor | None) -> torch.Tensor:
    """Give the dimensions in the boolean mask ``taken (..., K)`` the logit :data:`MASKED_LOGIT`."""
    if taken is None:
        return logits
    return logits.masked_fill(taken, MASKED_LOGIT)


def mark_taken(taken: torch.Tensor | None, selection: torch.Tensor) -> torch.Tensor:
    """Add the argmax of a (relaxed) selection ``(..., K)`` to the boolean mask of taken dimensions.

    The mask is a constant for gradients (an argmax); gradients flow through the samples.
    """
    hard = torch.zeros_like(selection, dtype=torch.bool).scatter_(-1, selection.argmax(-1, keepdim=True), True)
    return hard if taken is None else taken | hard


@torch.no_grad()
def taken_before(scores: torch.Tensor) -> torch.Tensor:
    """Which dimensions earlier slots took, for slots drawn in order without replacement.

    Slot ``l`` takes the argmax of its perturbed scores among the dimensions slots
    ``1..l-1`` have not taken (the argmax chain of the without-replacement selection).

    Args:
        scores: ``(..., L0, K)`` perturbed logits (logits plus Gumbel noise) of each slot.

    Returns:
        ``(..., L0, K)`` bool: entry ``[..., l, k]`` is True when a slot before ``l`` took ``k``.
        A constant for gradients.
    """
    num_slots = scores.shape[-2]
    taken = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    running = torch.zeros(scores.shape[:-2] + scores.shape[-1:], dtype=torch.bool, device=scores.device)
    for index in range(num_slots):
        taken[..., index, :] = running
        pick = scores[..., index, :].masked_fill(running, float("-inf")).argmax(-1, keepdim=True)
        running = running.scatter(-1, pick, True)
    return taken


def greedy_picks(slot_logits: torch.Tensor, num_slots: int, sorted_shared: bool = False) -> torch.Tensor:
    """Slots ``1..num_slots`` each take their highest-logit dimension not taken by an earlier slot.

    This is the zero-temperature limit of the without-replacement slot selection.

    Args:
        slot_logits: ``(N, S, K)`` with ``S`` 1 (shared by all slots) or ``L0`` (per slot).
        num_slots: how many slots pick (at most ``K``).
        sorted_shared: with shared logits, take the ``num_slots`` largest at once (``topk``, one pass
            over ``K`` instead of one per slot; the same picks but for the order of exact ties).

    Returns:
        ``(N, num_slots)`` distinct dimension indices per row, in slot order.
    """
    n, num_heads, k = slot_logits.shape
    if sorted_shared and num_heads == 1:
        return slot_logits[:, 0].topk(num_slots, dim=-1).indices
    taken = torch.zeros(n, k, dtype=torch.bool, device=slot_logits.device)
    rows = torch.arange(n, device=slot_logits.device)
    picks = []
    for index in range(num_slots):
        pick = slot_logits[:, min(index, num_heads - 1)].masked_fill(taken, float("-inf")).argmax(-1)
        taken[rows, pick] = True
        picks.append(pick)
    return torch.stack(picks, -1) if picks else torch.zeros(n, 0, dtype=torch.long, device=slot_logits.device)


def greedy_support(slot_logits: torch.Tensor, counts: torch.Tensor, sorted_shared: bool = False) -> torch.Tensor:
    """Hard support: the picks of slots ``1..counts[i]`` (see :func:`greedy_picks`).

    With shared logits this is the ``count`` highest-scoring dimensions.

    Args:
        slot_logits: ``(N, S, K)``.
        counts: ``(N,)`` integers in ``[0, min(L0, K)]``.
        sorted_shared: see :func:`greedy_picks`.

    Returns:
        ``(N, K)`` bool mask with exactly ``counts[i]`` True entries in row ``i``.
    """
    n, _, k = slot_logits.shape
    mask = torch.zeros(n, k, dtype=torch.bool, device=slot_logits.device)
    picks = greedy_picks(slot_logits, int(counts.max()) if n else 0, sorted_shared)
    used = torch.arange(picks.shape[1], device=counts.device) < counts.unsqueeze(-1)
    mask.scatter_(-1, picks, used)
    return mask
