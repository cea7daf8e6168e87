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
layer, in the guide's heads and in a learned support prior, with the Adam moments of those
entries. With the ``"split"``
strategy (the default) the two copies' guide rows then move apart, in opposite directions,
along the principal direction of the trunk features of the rows the donor served, so that each
copy starts with one side of those rows (the splitting of k-means' LBG algorithm); with
``"copy"`` a little noise in the copied guide rows is all that tells them apart. The gradient
then separates them. Either works for any decoder, since it copies what the donor already does
instead of inventing a direction. With ``duplicates=True`` a dimension that the decoder reads
like a more used one (:func:`duplicate_dimensions`) counts as dead too: two dimensions standing
for one direction leave another direction to a dimension that stands for two.

Plain torch on the networks of :class:`~pyro_sdlgm.model.guides.MLPGuide` guides (an
``AmortizedEncoder``) and the model's :class:`~pyro_sdlgm.model.networks.Decoder`; the trainer calls
it between epochs while the schedules run (``TrainConfig.revive_every``).
"""

from __future__ import annotations

import torch

from pyro_sdlgm.data.arrays import take_rows
from pyro_sdlgm.exceptions import ConfigError

#: a dimension is dead when its usage is below this fraction of the mean usage over dimensions
DEAD_FRACTION = 0.25
#: a dimension may donate when its usage is above this multiple of the mean usage
OVERLOADED_FRACTION = 1.5
#: rows of the training data (a seeded sample) whose hard codes measure the usage
SAMPLE_ROWS = 4096
#: the noise added to the copied guide entries, relative to the standard deviation of their parameter
NOISE = 0.05
#: with ``duplicates=True``: two dimensions are duplicates when the decoder columns that read them
#: (all of :meth:`Decoder.code_weights`, stacked) are at least this close in ``|cos|``
DUPLICATE_COSINE = 0.9
#: dimensions compared with all others at a time in :func:`duplicate_dimensions` (memory ``K`` times this)
DUPLICATE_CHUNK = 1024


#: ``TrainConfig.revive_every = "auto"``: epochs between revivals where they apply
AUTO_REVIVE_EVERY = 10


def revivable(model, guide) -> bool:
    """Whether :func:`revive_dead_dimensions` knows these networks (the unsupervised SDLGM, an MLP guide)."""
    from pyro_sdlgm.model.guides import MLPGuide  # imported here: the trainer imports this module, not the model's modules
    from pyro_sdlgm.model.generative import SDLGMModel

    return isinstance(guide, MLPGuide) and isinstance(model, SDLGMModel)


def check_revivable(model, guide) -> None:
    """Raise :class:`ConfigError` unless the networks are ones :func:`revive_dead_dimensions` knows."""
    if not revivable(model, guide):
        raise ConfigError("revive_every is for the unsupervised SDLGM with an MLP guide (mlp_magnitude_slots, "
                          "mlp_shared_slots, mlp_per_slot or a subclass of MLPGuide), got "
                          f"{type(guide).__name__} and {type(model).__name__}")


@torch.no_grad()
def hard_codes(guide, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The guide's hard codes of ``x (N, D)``, ``(N, K)`` (the count network's mode)."""
    return torch.cat([guide.hard_code(guide.amortize(x[start:start + batch_size]))[0]
                      for start in range(0, x.shape[0], batch_size)])


def dimension_usage(guide, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Fraction of the rows of ``x (N, D)`` whose hard code uses each dimension, ``(K,)``."""
    return _usage(hard_codes(guide, x, batch_size))


def _usage(codes: torch.Tensor) -> torch.Tensor:
    return (codes != 0).to(torch.get_default_dtype()).mean(0)


@torch.no_grad()
def duplicate_dimensions(model, usage: torch.Tensor) -> set[int]:
    """Of each pair of dimensions whose decoder columns have ``|cos| >= DUPLICATE_COSINE``, the less
    used one (the higher index on a tie); ``usage (K,)`` as :func:`dimension_usage` gives it."""
    columns = torch.cat(list(model.decoder.code_weights()), 0)  # (outputs, K)
    unit = columns / columns.norm(dim=0).clamp_min(1e-12)
    usage = usage.to(unit.device)
    order = torch.arange(unit.shape[1], device=unit.device)
    out: set[int] = set()
    for start in range(0, unit.shape[1], DUPLICATE_CHUNK):
        dims = order[start:start + DUPLICATE_CHUNK]
        close = (unit[:, dims].T @ unit).abs() >= DUPLICATE_COSINE  # (chunk, K)
        close[torch.arange(len(dims)), dims] = False
        # k duplicates a partner that is more used, or as used with a lower index
        more = (usage.unsqueeze(0) > usage[dims].unsqueeze(1)) | (
            (usage.unsqueeze(0) == usage[dims].unsqueeze(1)) & (order.unsqueeze(0) < dims.unsqueeze(1)))
        out.update(int(k) for k in dims[(close & more).any(1)])
    return out


def split_pairs(usage: torch.Tensor, duplicates: set[int] = frozenset()) -> list[tuple[int, int]]:
    """``(dead, donor)`` pairs: the least used dead dimensions (and ``duplicates``) with the most used
    overloaded ones."""
    mean = usage.mean()
    dead = [int(k) for k in usage.argsort(stable=True) if usage[k] < DEAD_FRACTION * mean or int(k) in duplicates]
    taken = set(dead)
    donors = [int(k) for k in usage.argsort(descending=True, stable=True)
              if usage[k] > OVERLOADED_FRACTION * mean and int(k) not in taken]
    return list(zip(dead, donors))


def _slices(model, guide, dim: int) -> list[tuple[torch.nn.Parameter, tuple]]:
    """Every parameter entry that belongs to latent dimension ``dim``: ``(parameter, index)``."""
    latent_dim = model.spec.latent_dim
    encoder = guide.encoder
    out = [(weight, (slice(None), dim)) for weight in model.decoder.code_weights()]
    if encoder.slot_head is not None:
        rows = [head * latent_dim + dim for head in range(encoder.num_slot_heads)]
        out += [(encoder.slot_head.weight, (rows,)), (encoder.slot_head.bias, (rows,))]
    if not encoder.binary:
        rows = [dim, latent_dim + dim]  # the value's mean and its scale
        out += [(encoder.value_head.weight, (rows,)), (encoder.value_head.bias, (rows,))]
    offset = getattr(guide, "offset", None)  # MagnitudeSlotsGuide's per-dimension slot offsets
    if isinstance(offset, torch.nn.Parameter):
        out.append((offset, (dim,)))
    prior = getattr(model.support_prior, "prior_logits", None)  # support_prior="learned"
    if isinstance(prior, torch.nn.Parameter) and prior.shape == (latent_dim,):
        out.append((prior, (dim,)))
    return out


@torch.no_grad()
def _copy(model, guide, dead: int, donor: int, optimizer, generator: torch.Generator | None) -> None:
    """Copy the donor's entries and Adam moments to the dead dimension; with a ``generator``, add
    noise to the guide's copies (:data:`NOISE`)."""
    for (param, dst), (_, src) in zip(_slices(model, guide, dead), _slices(model, guide, donor)):
        value = param[src].clone()
        decoder_weight = any(param is weight for weight in model.decoder.code_weights())
        if generator is not None and not decoder_weight:  # noise lets the copies part
            value += NOISE * param.std() * torch.randn(value.shape, generator=generator).to(value)
        param[dst] = value
        for moment in optimizer.state.get(param, {}).values():
            if isinstance(moment, torch.Tensor) and moment.shape == param.shape:
                moment[dst] = moment[src]


#: ``"split"``: how far the two halves of a split move apart at one standard deviation of the
#: donor rows' principal trunk direction: a fraction of the donor's mean |value|, or logits
SPLIT_VALUE_FRACTION = 0.5
SPLIT_LOGITS = 1.0


@torch.no_grad()
def _split(model, guide, dead: int, donor: int, x_donor: torch.Tensor) -> None:
    """After :func:`_copy`: move the two copies' guide rows apart along the principal direction of the
    trunk features of the rows whose codes use the donor (``x_donor``), in opposite directions, so
    that each takes one side of those rows (the splitting of k-means' LBG algorithm). The rows that
    choose a dimension move: the slot head's, or, for the magnitude guide, the value means'."""
    encoder = guide.encoder
    if x_donor.shape[0] < 2:
        return
    h = encoder.trunk(x_donor)
    centre = h.mean(0)
    direction = torch.linalg.svd(h - centre, full_matrices=False).Vh[0]
    spread = ((h - centre) @ direction).std()
    if not spread > 1e-6 * (h.norm(dim=-1).mean() + 1e-12):  # the donor's rows look alike: nothing to split
        return
    latent_dim = model.spec.latent_dim
    rows = []  # (linear layer, row of the dead copy, row of the donor, size of the move)
    if encoder.slot_head is not None:
        rows += [(encoder.slot_head, head * latent_dim + dead, head * latent_dim + donor, SPLIT_LOGITS)
                 for head in range(encoder.num_slot_heads)]
    if encoder.slot_head is None:  # slot logits from the values' magnitudes (MagnitudeSlotsGuide): move the values
        values = h @ encoder.value_head.weight[donor] + encoder.value_head.bias[donor]
        rows.append((encoder.value_head, dead, donor, SPLIT_VALUE_FRACTION * float(values.abs().mean())))
    for layer, dst, src, size in rows:
        move = size * direction / spread
        layer.weight[dst] += move
        layer.weight[src] -= move
        layer.bias[dst] -= move @ centre  # no move at the rows' centre
        layer.bias[src] += move @ centre


def revive_dead_dimensions(model, guide, x: torch.Tensor, optimizer, seed: int, strategy: str = "split",
                           duplicates: bool = False) -> int:
    """Split overloaded dimensions into dead ones (see the module docstring); returns how many.

    Args:
        model, guide: the SDLGM model and an MLP guide (:func:`check_revivable`).
        x: training rows ``(N, D)``: a torch tensor, numpy array or scipy sparse matrix (as the
            trainer takes them); a seeded sample of :data:`SAMPLE_ROWS` of them, as float32 on the
            networks' device, measures the usage.
        optimizer: the training optimizer; the Adam moments of the copied entries are copied too.
        seed: seeds the sample and the noise (the trainer passes the run's seed and the epoch,
            so a resumed run revives the same dimensions).
        strategy: ``"split"`` (the copies' guide rows move apart, :func:`_split`) or ``"copy"``
            (noisy copies).
        duplicates: also revive the less used of two dimensions the decoder reads alike
            (:func:`duplicate_dimensions`).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(x.shape[0], generator=generator)[:SAMPLE_ROWS]
    (sample,) = take_rows((x,), rows.sort().values, model.decoder.net[0].weight.device)
    codes = hard_codes(guide, sample)
    usage = _usage(codes)
    pairs = split_pairs(usage, duplicate_dimensions(model, usage) if duplicates else frozenset())
    for dead, donor in pairs:
        _copy(model, guide, dead, donor, optimizer, None if strategy == "split" else generator)
        if strategy == "split":
            _split(model, guide, dead, donor, sample[codes[:, donor] != 0])
    return len(pairs)
