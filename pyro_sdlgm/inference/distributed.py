"""Data-parallel training on ``torch.distributed`` (``torchrun``), gloo on CPU and NCCL on GPU.

How a run is split (see "Data-parallel training" in ``docs/cli.md``):

- Every rank holds the whole data set and draws the same shuffled order of global
  batches from the same seeded generator as a single process would; ``batch_size`` is
  the *global* batch. Rank ``r`` of ``R`` trains on rows ``r, r + R, r + 2R, ...`` of
  each global batch (:func:`local_rows`). This is the sampler; ``pyro.plate`` does not
  subsample. We do not use ``torch.utils.data.DistributedSampler`` itself because it
  pads the data with repeated rows to a multiple of ``R`` (those rows would count twice
  in the ELBO) and shuffles in its own order, so a run could not be compared with, or
  resumed as, a single-process run.
- Each rank's minibatch ELBO is scaled to the global data size (``pyro.plate`` with
  ``size = N``) and weighted by its share of the global batch, so that the average of the
  ranks' gradients that ``DistributedDataParallel`` computes is the gradient of the
  single-process loss on the same global batch, up to the order of floating-point sums
  (:func:`rank_loss_weight`).
- The model and the guide hold their parameters as local module parameters
  (``pyro.settings.context(module_local_params=True)``), never in Pyro's global
  parameter store, which ``DistributedDataParallel`` cannot see; every parameter exists
  before wrapping (no lazy modules).
- Rank 0 alone writes the run folder; logged losses are averaged over all ranks' rows.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pyro_sdlgm.exceptions import ConfigError, SDLGMError

logger = logging.getLogger(__name__)


class DistributedError(SDLGMError, RuntimeError):
    """The ranks of a data-parallel run disagree (e.g. their parameters differ)."""


@dataclass(frozen=True)
class Replicas:
    """Where this process stands in a data-parallel run: ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values, device=None) -> list[float]:
        """Elementwise sum of a list of numbers over the ranks (the values themselves when alone)."""
        values = [float(v) for v in values]
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device or _collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def any(self, flag: bool, device=None) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        return self.sum([1.0 if flag else 0.0], device)[0] > 0

    def check_identical(self, named: dict[str, torch.Tensor]) -> None:
        """Raise :class:`DistributedError` unless every rank holds exactly the same parameters.

        Compares an order-sensitive float64 checksum of each parameter across ranks.
        """
        if not self.distributed:
            return
        sums = []
        for p in named.values():
            flat = p.detach().double().reshape(-1)
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
            sums.append(torch.stack([flat.sum(), (flat * weights).sum() / flat.numel()]))
        local = torch.cat(sums).to(_collective_device())
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        diverged = first_divergence(gathered, list(named))
        if diverged is not None:
            rank, name = diverged
            raise DistributedError(f"rank {rank}'s parameters differ from rank 0's (first: {name!r}); "
                                   "the data-parallel replicas diverged")


def first_divergence(checksums: list[torch.Tensor], names: list[str]) -> tuple[int, str] | None:
    """``(rank, parameter name)`` of the first rank whose checksums ``(2 * len(names),)`` differ from rank 0's.

    Exact comparison with NaN equal to NaN: a NaN parameter is a numerical fault, reported as
    such elsewhere, not a divergence (an empty parameter's mean checksum is NaN too).
    """
    for rank, other in enumerate(checksums):
        same = torch.isclose(other, checksums[0], rtol=0.0, atol=0.0, equal_nan=True)
        differ = (~same).reshape(-1, 2).any(-1)
        if bool(differ.any()):
            return rank, names[int(differ.nonzero()[0])]
    return None


def _collective_device() -> torch.device:
    """Tensors of collectives live on the GPU with NCCL, on the CPU with gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current() -> Replicas:
    """This process's place in the initialized process group (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Replicas()
    return Replicas(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or another launcher) set a ``WORLD_SIZE`` above 1 in the environment."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def backend_for(device: str) -> str:
    """``"nccl"`` for a CUDA run, ``"gloo"`` for a CPU run (``"auto"``: CUDA when available)."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


@contextlib.contextmanager
def process_group(device: str):
    """Join the process group ``torchrun`` describes in the environment for the duration of a run.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (``env://``
    rendezvous); with NCCL, binds this process to GPU ``LOCAL_RANK``. Does nothing when the
    group is already initialized or the run is not distributed.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                          "data-parallel runs with torchrun")
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError(f"training.device={device!r} asks for NCCL on GPUs, but CUDA is not available on "
                              "this machine")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    try:
        replicas = current()
        logger.info("data-parallel rank %d of %d (%s)", replicas.rank, replicas.world_size, backend)
        yield replicas
        # no rank tears its connections down while another still uses them (gloo aborts the
        # process whose peer vanished); after an error torchrun stops the other ranks itself
        dist.barrier()
    finally:
        dist.destroy_process_group()


def local_rows(global_rows: torch.Tensor, replicas: Replicas) -> tuple[torch.Tensor, float]:
    """This rank's rows of a global batch and their share of it.

    Rank ``r`` takes rows ``r, r + R, ...``. A rank left without a row (a last global
    batch smaller than ``R``) computes on the batch's first row with weight 0, so that it
    still takes part in the gradient all-reduce without contributing to it.
    """
    rows = global_rows[replicas.rank::replicas.world_size]
    if len(rows) == 0:
        return global_rows[:1], 0.0
    return rows, len(rows) / len(global_rows)


def rank_loss_weight(share: float, replicas: Replicas, num_data: int) -> float:
    """Factor turning a rank's minibatch negative ELBO (scaled to ``num_data``) into its part of the step's loss.

    A rank's negative ELBO estimate over ``B_r`` of the global batch's ``B`` rows is
    ``(N / B_r) * sum_rank``. Multiplied by ``(B_r / B) * R / N`` it is ``(R / B) * sum_rank``;
    ``DistributedDataParallel`` averages the gradients over the ``R`` ranks, which gives
    the gradient of ``(1 / B) * sum_global``: the single-process loss ``-ELBO / N``.
    """
    return share * replicas.world_size / num_data


def local_part(global_rows: torch.Tensor, replicas: Replicas, num_data: int) -> tuple[torch.Tensor, float, float | None]:
    """``(rows, share, weight)`` of a global batch for this process: its rows (:func:`local_rows`),
    their share and the loss weight (:func:`rank_loss_weight`); in one process the whole batch,
    share 1 and weight None (the loss is the negative ELBO over ``num_data``)."""
    if not replicas.distributed:
        return global_rows, 1.0, None
    rows, share = local_rows(global_rows, replicas)
    return rows, share, rank_loss_weight(share, replicas, num_data)


def loss_contribution(elbo_loss: torch.Tensor, loss: torch.Tensor, num_rows: int, share: float, num_data: int,
                      replicas: Replicas) -> tuple[float, int]:
    """This process's part of an epoch's summed per-row loss, and its rows, after a step on
    ``num_rows`` rows (``elbo_loss`` plate-scaled to ``num_data``; ``loss`` the differentiated one)."""
    if not replicas.distributed:
        return loss.item() * num_rows, num_rows
    if share <= 0:  # a rank without a row of its own (see local_rows)
        return 0.0, 0
    # this rank's sum of per-row negative ELBOs: the plate scaled its B_r rows by N / B_r
    return elbo_loss.item() * num_rows / num_data, num_rows


def wrap_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` (the ELBO module, whose parameters are the model's and the guide's) under
    ``DistributedDataParallel``, which averages its gradients over the ranks."""
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None)


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the sampling noise of rank ``rank`` > 0 from epoch ``epoch`` on (at the start or on resume).

    Rank 0 keeps the seeded single-process stream; the other ranks must not draw the same
    noise as it, so each gets its own stream, derived from ``(seed, rank, epoch)``.
    """
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without it raises ``ConfigError``.

    In a data-parallel run, ``"cuda"`` and ``"auto"`` mean this process's GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name!r} but CUDA is not available on this machine")
    replicas = current()
    if name.startswith("cuda") and replicas.distributed:
        if name != "cuda":
            raise ConfigError(f"training.device={name!r} in a data-parallel run would put every rank on one GPU: "
                              "use 'cuda' (rank r takes cuda:LOCAL_RANK)")
        return torch.device("cuda", replicas.local_rank)
    return torch.device(name)
