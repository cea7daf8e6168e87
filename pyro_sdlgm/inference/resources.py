"""Resources: the CPU threads torch may use, and the memory guard.

:func:`cpu_threads` sets torch's intra-op thread count for a block (``training.num_threads``,
``sdlgm ... --threads N``). On a busy machine torch's default, one thread per core, can be
several times slower than one thread: OpenMP threads that wait for a core spin.

Memory guard: estimate what training needs before allocating it, and refuse what cannot fit.

The estimate (bytes, float32) of the full slot layouts (``per_slot``, ``joint``) is

    4 * (8 * P  +  max(26 * B * L0 * K * particles,  10 * E * L0 * K))

with ``P`` the parameters of model and guide (the parameter, its gradient, Adam's two
moments and the copies kept for the best epoch and checkpoints: 8 numbers each), ``B`` the
batch size, ``E`` the validation batch size, ``L0`` the slots and ``K`` the dimensions.
The constants 26 (training step: slot logits, masks, Gumbel noise, samples, KL terms of
model and guide, and their gradients) and 10 (validation pass, no gradients) were fitted to
the increase of peak RSS on CPU (torch 2.13, pyro-ppl 1.9.2) in six configurations, from
``K = 2,000`` to ``20,000`` and ``L0 = 10`` to ``32`` (0.5 to 20.5 GB measured). The estimate
was between 23% under (the smallest, 0.7 GB measured) and 19% over the measurement. It
ignores the data set itself, which is already in memory when training
starts. See ``docs/guarantees.md``.

In the classifier's shortlist mode (``num_candidates = C``) the slots draw over ``C``
candidates per row instead of ``K`` labels, while the networks still score all ``K`` labels
per row (prior logits, the hard negatives' scores, the dense label batch the guide reads):

    4 * (8 * P  +  max((26 * B * L0 * C + 6 * B * K) * particles,  10 * E * L0 * C + 5 * E * K))

linear in ``K``, never ``L0 x K``. ``slot_layout="gumbel_topk"`` has the same form with its
``C`` columns and 14 (training) and 6 (validation) numbers per (row, dimension): at ``K =
16,384``, ``L0 = 32``, batch 256, ``D = 784`` a step raised peak RSS by 511 MiB with the
parameters (about 13 numbers per row and dimension besides them). The constants 6 (training step) and 5 (validation batch)
numbers per (row, label) round up the slopes of peak RSS over the batch size measured on CPU
(5.2 and 4.0 numbers per row and label, fresh processes, D = 2,000, one thread) in 13
shortlist configurations from ``K = 25,000`` to ``200,000``, ``L0`` 8 and 32, ``C`` 32 and
128, batches 16 to 256, validation batches 0 to 1,024 and hidden sizes 64 and 256 (366 to
3,452 MiB measured above the level before ``fit``). The estimate was between 2% under and 39%
over the measurement (the parameter term's 8 copies are the main excess: the hidden-256 run below
used about 5.4). At ``K = 100,000``, ``L0 = 32``, ``C = 128``, batch 256, hidden 256, 2 epochs with
checkpoints: 2,478 MiB peak RSS of the whole process with 256 validation rows, 3,698 MiB with
a validation batch of 1,024 rows (``training.eval_batch_size`` sets it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch

from pyro_sdlgm.exceptions import ConfigError, ResourceError

logger = logging.getLogger(__name__)

BYTES_PER_NUMBER = 4
PARAMETER_COPIES = 8
TRAIN_SLOT_TENSORS = 26
EVAL_SLOT_TENSORS = 10
#: shortlist mode: float32 numbers per (row, label) of a training step and of a validation batch
#: (prior and guide slot logits over all K labels and their gradients, the dense label batch and the
#: guide's input, the hard negatives' scores and the random negatives' keys)
LABEL_TENSORS = 6
EVAL_LABEL_TENSORS = 5
#: slot_layout="gumbel_topk": numbers per (row, dimension) of a training step (slot logits, the
#: Gumbel noise and scores, the slot KL's masked terms, and their gradients) and of a validation
#: batch; first measurements on CPU (see the module docstring)
WIDE_TENSORS = 14
EVAL_WIDE_TENSORS = 6
GIB = 2**30


@contextlib.contextmanager
def cpu_threads(num_threads: int | None):
    """torch's CPU threads set to ``num_threads`` inside the block, then as they were (None: unchanged)."""
    if num_threads is None:
        yield
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigError(f"num_threads must be a whole number >= 1 or None, got {num_threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs: ``parameters`` (with optimizer state and copies),
    ``training_step`` and ``validation_pass`` activations, and the ``total`` peak."""

    parameters: int
    training_step: int
    validation_pass: int

    @property
    def total(self) -> int:
        return self.parameters + max(self.training_step, self.validation_pass)


def estimate_training_memory(num_parameters: int, latent_dim: int, max_sparsity: int, batch_size: int,
                             eval_batch_size: int = 0, num_particles: int = 1,
                             num_candidates: int | None = None, train_per_dimension: int = LABEL_TENSORS,
                             eval_per_dimension: int = EVAL_LABEL_TENSORS) -> MemoryEstimate:
    """Estimate the peak memory of training (see the module docstring for the formula).

    Args:
        num_parameters: parameters of the model and the guide together.
        latent_dim: ``K``; max_sparsity: ``L0``.
        batch_size: ``B``; eval_batch_size: rows per validation batch (0: no validation).
        num_candidates: ``C`` in the classifier's shortlist mode or the columns of
            ``slot_layout="gumbel_topk"`` (None: the full mode).
        train_per_dimension, eval_per_dimension: numbers per (row, dimension) with ``C``.
    """
    if num_candidates is None:
        slot_numbers = max_sparsity * latent_dim
        train_per_row, eval_per_row = TRAIN_SLOT_TENSORS * slot_numbers, EVAL_SLOT_TENSORS * slot_numbers
    else:
        slot_numbers = max_sparsity * num_candidates
        train_per_row = TRAIN_SLOT_TENSORS * slot_numbers + train_per_dimension * latent_dim
        eval_per_row = EVAL_SLOT_TENSORS * slot_numbers + eval_per_dimension * latent_dim
    return MemoryEstimate(
        parameters=BYTES_PER_NUMBER * PARAMETER_COPIES * num_parameters,
        training_step=BYTES_PER_NUMBER * train_per_row * batch_size * num_particles,
        validation_pass=BYTES_PER_NUMBER * eval_per_row * eval_batch_size,
    )


def available_memory(device: torch.device) -> tuple[int | None, str]:
    """Free memory on ``device`` in bytes and where the number comes from (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical pages (sysconf)"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


def check_training_memory(estimate: MemoryEstimate, *, device: torch.device, limit_gb: float | str,
                          describe: dict[str, int]) -> None:
    """Raise :class:`ResourceError` when ``estimate.total`` exceeds the limit.

    Args:
        limit_gb: the limit in GiB; ``"available"`` takes the memory the device reports free.
        describe: the options the estimate depends on (``batch_size``, ``latent_dim``...),
            named in the message.
    """
    if limit_gb == "available":
        limit, source = available_memory(device)
        if limit is None:
            logger.warning("cannot tell the free memory of this machine; memory check skipped")
            return
    else:
        limit, source = int(limit_gb * GIB), "training.memory_limit_gb"
    logger.info("estimated training memory %.2f GiB (limit %.2f GiB, %s)", estimate.total / GIB, limit / GIB, source)
    if estimate.total <= limit:
        return
    options = ", ".join(f"{key}={value}" for key, value in describe.items())
    raise ResourceError(
        f"training needs about {estimate.total / GIB:.2f} GiB ({estimate.parameters / GIB:.2f} GiB for parameters "
        f"and optimizer state, {estimate.training_step / GIB:.2f} GiB for a training step, "
        f"{estimate.validation_pass / GIB:.2f} GiB for a validation batch; {options}) but only "
        f"{limit / GIB:.2f} GiB is available ({source}). Reduce training.batch_size, training.eval_batch_size, "
        "model.latent_dim, model.max_sparsity or the hidden sizes; or set training.memory_limit_gb to a "
        "number of GiB, or to 'off' to train anyway"
    )


def count_parameters(*modules) -> int:
    """Parameters of the modules together (shared parameters counted once)."""
    unique = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in unique.values())


def guard_training_memory(model, guide, config, num_train_rows: int, num_val_rows: int, *,
                          num_candidates: int | None = None) -> MemoryEstimate | None:
    """Estimate training's memory for ``model``/``guide`` (built on the ``meta`` device, so that
    nothing is allocated yet) under the :class:`~pyro_sdlgm.config.TrainConfig` ``config``;
    raise :class:`ResourceError` if it cannot fit. ``num_candidates``: the classifier's
    shortlist size ``C`` (None: full mode). Returns the estimate, or None when
    ``config.memory_limit_gb`` is ``"off"``."""
    if config.memory_limit_gb == "off":
        return None
    from pyro_sdlgm.inference.distributed import resolve_device

    spec = model.spec
    parameters = count_parameters(model, guide)
    per_dimension = {}
    step = getattr(spec, "support_step", None)
    if num_candidates is None and step is not None and step.sparse_code:  # slot_layout="gumbel_topk"
        num_candidates = step.candidates(spec)
        per_dimension = dict(train_per_dimension=WIDE_TENSORS, eval_per_dimension=EVAL_WIDE_TENSORS)
    estimate = estimate_training_memory(
        parameters, spec.latent_dim, spec.max_sparsity, min(config.batch_size, num_train_rows),
        min(config.eval_batch_size, num_val_rows), config.num_particles, num_candidates, **per_dimension)
    describe = {"batch_size": config.batch_size, "eval_batch_size": config.eval_batch_size,
                "latent_dim": spec.latent_dim, "max_sparsity": spec.max_sparsity}
    if num_candidates:  # 0: the classifier's set bound, which holds no slot tensor
        describe["num_candidates"] = num_candidates
    check_training_memory(estimate, device=resolve_device(config.device), limit_gb=config.memory_limit_gb,
                          describe={**describe, "parameters": parameters})
    return estimate


def guard_parameters(model, guide) -> None:
    """Refuse to build networks whose parameters alone exceed the free memory of this machine.

    ``model``/``guide`` are built on the ``meta`` device: only their sizes are read.
    """
    size = BYTES_PER_NUMBER * count_parameters(model, guide)
    free, source = available_memory(torch.device("cpu"))
    if free is not None and size > free:
        spec = model.spec
        raise ResourceError(
            f"the networks need {size / GIB:.2f} GiB for their {count_parameters(model, guide):,} parameters "
            f"(latent_dim={spec.latent_dim}, max_sparsity={spec.max_sparsity}) but only {free / GIB:.2f} GiB "
            f"is available ({source}). Reduce model.latent_dim or the hidden sizes, or use shared slot logits "
            "(guide 'mlp_shared_slots', or per_slot=false): per-slot logits cost max_sparsity x latent_dim "
            "x the last hidden size"
        )
