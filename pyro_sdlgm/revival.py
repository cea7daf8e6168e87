"""Dead-dimension revival: split an overloaded dimension into a dimension the hard codes never use.

A sparse code can settle where some dimensions are (nearly) never chosen while others each
stand for two or more directions of the data: on the recovery benchmark's linear-Gaussian
data, 6 of 40 learned dimensions were used by 1-3% of the rows (the true rate is 11%) while 5
were used by 17-29%, and 10 of the 40 true directions were matched by no learned one
(``experiments/NOTES.md``). Gradient steps do not leave such an optimum: an unused dimension
gets no reconstruction gradient.

:func:`revive_dead_dimensions` moves it: each dead dimension (used by fewer than
:data:`DEAD_FRACTION` of the mean usage) takes a copy of the parameters of one of the most used
dimensions (those above :data:`OVERLOADED_FRACTION` times the mean), in the decoder's first
layer and in the guide's heads, with the Adam moments of those entries, plus a little noise in
the guide's rows so that the two copies can part. The rows the donor served are then shared
between the two, and the gradient separates them. Like k-means' cluster splitting, it works
for any decoder, since it copies what the donor already does instead of inventing a direction.

Plain torch on the networks of :class:`~pyro_sdlgm.guides.MLPGuide` guides (an
``AmortizedEncoder``) and the model's :class:`~pyro_sdlgm.networks.Decoder`; the trainer calls
it between epochs while the schedules run (``TrainConfig.revive_every``).
"""

from __future__ import annotations

import torch

from .exceptions import ConfigError

#: a dimension is dead when its usage is below this fraction of the mean usage over dimensions
DEAD_FRACTION = 0.25
#: a dimension may donate when its usage is above this multiple of the mean usage
OVERLOADED_FRACTION = 1.5
#: rows of the training data (a seeded sample) whose hard codes measure the usage
SAMPLE_ROWS = 4096
#: the noise added to the copied guide entries, relative to the standard deviation of their parameter
NOISE = 0.05


def check_revivable(model, guide) -> None:
    """Raise :class:`ConfigError` unless the networks are ones :func:`revive_dead_dimensions` knows."""
    from .guides import MLPGuide  # imported here: the trainer imports this module, not the model's modules
    from .model import SDLGMModel

    if not (isinstance(guide, MLPGuide) and isinstance(model, SDLGMModel)):
        raise ConfigError("revive_every is for the unsupervised SDLGM with an MLP guide (mlp_magnitude_slots, "
                          "mlp_shared_slots, mlp_per_slot or a subclass of MLPGuide), got "
                          f"{type(guide).__name__} and {type(model).__name__}")


@torch.no_grad()
def dimension_usage(guide, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Fraction of the rows of ``x (N, D)`` whose hard code uses each dimension, ``(K,)``."""
    used = None
    for start in range(0, x.shape[0], batch_size):
        z, _ = guide.hard_code(guide.amortize(x[start:start + batch_size]))
        count = (z != 0).sum(0)
        used = count if used is None else used + count
    return used.to(torch.get_default_dtype()) / x.shape[0]


def split_pairs(usage: torch.Tensor) -> list[tuple[int, int]]:
    """``(dead, donor)`` pairs: the least used dead dimensions with the most used overloaded ones."""
    mean = usage.mean()
    dead = [int(k) for k in usage.argsort() if usage[k] < DEAD_FRACTION * mean]
    donors = [int(k) for k in usage.argsort(descending=True) if usage[k] > OVERLOADED_FRACTION * mean]
    return list(zip(dead, donors))


def _slices(model, guide, dim: int) -> list[tuple[torch.nn.Parameter, tuple]]:
    """Every parameter entry that belongs to latent dimension ``dim``: ``(parameter, index)``."""
    latent_dim = model.spec.latent_dim
    encoder = guide.encoder
    first = model.decoder.net[0]
    out = [(first.weight, (slice(None), dim))]
    if encoder.slot_head is not None:
        rows = [head * latent_dim + dim for head in range(encoder.num_slot_heads)]
        out += [(encoder.slot_head.weight, (rows,)), (encoder.slot_head.bias, (rows,))]
    if not encoder.binary:
        rows = [dim, latent_dim + dim]  # the value's mean and its scale
        out += [(encoder.value_head.weight, (rows,)), (encoder.value_head.bias, (rows,))]
    offset = getattr(guide, "offset", None)  # MagnitudeSlotsGuide's per-dimension slot offsets
    if isinstance(offset, torch.nn.Parameter):
        out.append((offset, (dim,)))
    return out


@torch.no_grad()
def _copy(model, guide, dead: int, donor: int, optimizer, generator: torch.Generator) -> None:
    for (param, dst), (_, src) in zip(_slices(model, guide, dead), _slices(model, guide, donor)):
        value = param[src].clone()
        if param is not model.decoder.net[0].weight:  # the guide's rows: noise lets the copies part
            value += NOISE * param.std() * torch.randn(value.shape, generator=generator).to(value)
        param[dst] = value
        for moment in optimizer.state.get(param, {}).values():
            if isinstance(moment, torch.Tensor) and moment.shape == param.shape:
                moment[dst] = moment[src]


def revive_dead_dimensions(model, guide, x: torch.Tensor, optimizer, seed: int) -> int:
    """Split overloaded dimensions into dead ones (see the module docstring); returns how many.

    Args:
        model, guide: the SDLGM model and an MLP guide (:func:`check_revivable`).
        x: training rows ``(N, D)``; a seeded sample of :data:`SAMPLE_ROWS` of them (moved to the
            networks' device) measures the usage.
        optimizer: the training optimizer; the Adam moments of the copied entries are copied too.
        seed: seeds the sample and the noise (the trainer passes the run's seed and the epoch,
            so a resumed run revives the same dimensions).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(x.shape[0], generator=generator)[:SAMPLE_ROWS]
    device = model.decoder.net[0].weight.device
    pairs = split_pairs(dimension_usage(guide, x[rows.to(x.device)].to(device)))
    for dead, donor in pairs:
        _copy(model, guide, dead, donor, optimizer, generator)
    return len(pairs)
