"""Neural networks of SDLGM: plain ``nn.Module``s with no Pyro primitives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_sdlgm.exceptions import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None = None, activation: str = "relu",
        dropout: float = 0.0) -> nn.Sequential:
    """Fully connected network ``in_dim -> hidden... [-> out_dim]``.

    Every hidden layer is followed by the activation (and, with ``dropout > 0``, by dropout
    with that rate, active in training mode only); the optional output layer is linear.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise ConfigError(f"hidden layer sizes must be a list of positive integers, got {hidden!r}")
    hidden = list(hidden)
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ConfigError(f"hidden layer sizes must be positive integers, got {hidden!r}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def output_width(hidden: Sequence[int], in_dim: int) -> int:
    """Width of the last layer of ``mlp(in_dim, hidden)``."""
    return list(hidden)[-1] if len(hidden) else in_dim


class Decoder(nn.Module):
    """``z (..., K) -> (..., D)`` parameters of the likelihood (logits or means).

    An MLP, and with ``skip=True`` a linear map of the code added to its output,
    ``decoder(z) = A z + MLP(z)`` (``A (D, K)``, no bias): the linear part is explicit, the MLP
    adds what is not linear.

    ``z`` is a dense ``(..., K)`` code, or a sparse one with ``index`` and ``value`` of shape
    ``(..., C)`` (:class:`~pyro_sdlgm.model.support_steps.SparseCode`): then the layers that read
    the code gather the ``C`` weight columns it uses (``(..., C, hidden)``) instead of multiplying
    a dense ``(..., K)`` code, with the same result up to float rounding.
    """

    def __init__(self, latent_dim: int, output_dim: int, hidden: Sequence[int] = (256, 512), activation: str = "relu",
                 skip: bool = False):
        super().__init__()
        if skip and not len(hidden):
            raise ConfigError("decoder_skip=True needs hidden layers (decoder_hidden): a linear decoder has no "
                              "nonlinear part beside its linear one")
        self.net = mlp(latent_dim, hidden, output_dim, activation)
        self.skip = nn.Linear(latent_dim, output_dim, bias=False) if skip else None

    def code_weights(self) -> list[nn.Parameter]:
        """The weights that read the code, each ``(out, K)``: column ``k`` belongs to dimension ``k``."""
        return [self.net[0].weight] + ([self.skip.weight] if self.skip is not None else [])

    def forward(self, z) -> torch.Tensor:
        out = self.net[1:](_read_code(self.net[0], z))
        return out if self.skip is None else out + _read_code(self.skip, z)


def _read_code(layer: nn.Linear, z) -> torch.Tensor:
    """``layer(z)`` for a dense code, or from the weight columns a :class:`SparseCode` uses."""
    if isinstance(z, torch.Tensor):
        return layer(z)
    # the weight's columns the code uses, (out, ...*C): no copy of the whole (out, K) weight
    columns = layer.weight.index_select(1, z.index.reshape(-1)).reshape(layer.out_features, *z.index.shape)
    h = torch.einsum("...c,h...c->...h", z.value, columns)
    return h if layer.bias is None else h + layer.bias


class AmortizedEncoder(nn.Module):
    """Encoder ``x (N, D)`` to the guide's parameters.

    Returns a tuple:
        ``sparsity_logits (N, num_levels)``, ``slot_logits (N, S, K)`` with ``S`` 1
        (shared slots) or ``L0`` (per-slot logits) (None with ``num_slot_heads=0``), and, unless ``binary``,
        ``value_loc (N, K)`` and ``value_scale (N, K)`` (positive); else ``None, None``.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        num_levels: int,
        num_slot_heads: int,
        binary: bool,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
        min_scale: float = 1e-4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_slot_heads = num_slot_heads
        self.binary = binary
        self.min_scale = min_scale
        self.trunk = mlp(input_dim, hidden, None, activation, dropout)
        width = output_width(hidden, input_dim)
        self.sparsity_head = nn.Linear(width, num_levels)
        # num_slot_heads=0: no slot head (a guide that derives the slot logits otherwise); slot_logits is None
        self.slot_head = nn.Linear(width, num_slot_heads * latent_dim) if num_slot_heads else None
        if not binary:
            self.value_head = nn.Linear(width, 2 * latent_dim)

    def forward(self, x: torch.Tensor):
        h = self.trunk(x)
        sparsity_logits = self.sparsity_head(h)
        slot_logits = (None if self.slot_head is None else
                       self.slot_head(h).reshape(*h.shape[:-1], self.num_slot_heads, self.latent_dim))
        if self.binary:
            return sparsity_logits, slot_logits, None, None
        loc, raw_scale = self.value_head(h).chunk(2, dim=-1)
        return sparsity_logits, slot_logits, loc, self.min_scale + nn.functional.softplus(raw_scale)
