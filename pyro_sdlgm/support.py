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


def support_scores(slot_logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Scores whose top-``count`` dimensions form the hard support.

    With shared slot logits (``S = 1``) the score is the logit itself. With per-slot
    logits (``S = L0``) it is ``-sum_{l <= count} log(1 - p_lk)``, a monotone
    function of the probability that one of the used slots selects dimension ``k``.

    Args:
        slot_logits: ``(N, S, K)`` with ``S`` 1 (shared) or ``L0`` (per slot).
        counts: ``(N,)`` integer number of used slots per row.

    Returns:
        ``(N, K)`` scores.
    """
    if slot_logits.shape[-2] == 1:
        return slot_logits[..., 0, :]
    probs = slot_logits.softmax(-1)
    log_miss = torch.log1p(-probs.clamp(max=1.0 - 1e-6))  # log(1 - p_lk)
    used = torch.arange(1, slot_logits.shape[-2] + 1, device=counts.device) <= counts.unsqueeze(-1)
    return -(log_miss * used.unsqueeze(-1).to(log_miss.dtype)).sum(-2)


def hard_support(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the ``counts[i]`` highest-scoring dimensions of each row, without replacement.

    Args:
        scores: ``(N, K)``.
        counts: ``(N,)`` integers in ``[0, K]``.

    Returns:
        ``(N, K)`` bool mask with exactly ``counts[i]`` True entries in row ``i``.
    """
    n, k_dims = scores.shape
    mask = torch.zeros(n, k_dims, dtype=torch.bool, device=scores.device)
    k = int(counts.max()) if n else 0
    if k == 0:
        return mask
    top = scores.topk(k, dim=-1).indices  # (N, k), distinct per row
    keep = torch.arange(k, device=scores.device) < counts.unsqueeze(-1)
    mask.scatter_(-1, top, keep)
    return mask
