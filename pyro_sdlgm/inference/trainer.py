"""The SVI training loop: ELBO as an ``nn.Module``, a ``torch.optim`` optimizer, schedules, early stopping.

Route chosen (see ``docs/model.md``): ``Trace_ELBO()(model, guide)`` (``TraceEnum_ELBO`` in
``enumerate`` mode) is an ``nn.Module`` whose parameters are the model's and the
guide's; it is trained with ``torch.optim.Adam`` under
``pyro.settings.context(module_local_params=True)``, so nothing lives in Pyro's global
parameter store and checkpoints are plain ``state_dict``s. The same model and guide
also work with the classic ``pyro.infer.SVI`` in Pyro's default (global) mode.

The parts: :meth:`Trainer.step` is one SVI step (public: benchmarks time it, users can drive
their own loop with it); :mod:`~pyro_sdlgm.inference.faults` names what a failed step found;
:mod:`~pyro_sdlgm.inference.run_folder` writes and restores training checkpoints (a run
resumes bit for bit); :mod:`~pyro_sdlgm.inference.distributed` holds the data-parallel
plumbing; :mod:`~pyro_sdlgm.inference.resources` the memory guard :meth:`Trainer.check_memory`
applies. A non-finite loss or gradient stops training (``nan_policy="stop"``) with a
:class:`NumericalError` naming the step and, where it can be found, the sample site or
parameter; ``"skip_batch"`` skips that update instead and counts it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from tqdm.auto import tqdm

from pyro_sdlgm.config import TrainConfig
from pyro_sdlgm.data.arrays import take_rows
from pyro_sdlgm.exceptions import ConfigError, NumericalError
from pyro_sdlgm.inference import distributed
from pyro_sdlgm.inference.checkpoint import CHECKPOINT_DIR, atomic_write, prune_checkpoints, remove_temporaries
from pyro_sdlgm.inference.distributed import resolve_device
from pyro_sdlgm.inference.elbo import AnalyticKLELBO
from pyro_sdlgm.inference.faults import (
    StepFault,
    diagnose_sites,
    fault_message,
    first_bad_gradient,
    non_finite_parameters,
    validation_failure,
    without_pyro_validation,
)
from pyro_sdlgm.inference.resources import MemoryEstimate, cpu_threads, guard_training_memory
from pyro_sdlgm.inference.revival import AUTO_REVIVE_EVERY, check_revivable, revivable, revive_dead_dimensions
from pyro_sdlgm.inference.run_lock import run_folder_lock
from pyro_sdlgm.inference.run_folder import (
    METRICS_FILE,
    TrainingState,
    check_run_dir,
    data_fingerprint,
    early_stopped,
    restore_training_checkpoint,
    restored_epoch,
    save_training_checkpoint,
)
from pyro_sdlgm.inference.schedules import TrainingSchedule, final_schedule

logger = logging.getLogger(__name__)


def make_elbo(spec, num_particles: int = 1):
    """The ELBO estimator of a :class:`~pyro_sdlgm.model.spec.ModelSpec`.

    ``TraceEnum_ELBO`` (exact sum over ``L_i``) in ``enumerate`` mode;
    ``AnalyticKLELBO`` (``TraceMeanField_ELBO``'s analytic KL terms, without the
    log-densities it does not use) for ``objective="discrete_kl"``;
    ``Trace_ELBO`` (Monte-Carlo KL with Concrete densities) for ``objective="relaxed"``.
    """
    if spec.sparsity_inference == "enumerate":
        return TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=1)
    if spec.objective == "discrete_kl":
        return AnalyticKLELBO(num_particles=num_particles)
    return Trace_ELBO(num_particles=num_particles)


def as_columns(data) -> tuple:
    """The model's data arguments as a tuple of row-aligned arrays (a single array becomes a 1-tuple)."""
    return tuple(data) if isinstance(data, (tuple, list)) else (data,)


def iterate_minibatches(num_rows: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches covering every row once; the last batch may be smaller."""
    order = torch.randperm(num_rows, generator=generator)
    yield from order.split(batch_size)


@dataclasses.dataclass
class _Run:
    """What one call of :meth:`Trainer.fit` works over: the data, the schedule, the run folder."""

    train: tuple
    val: tuple | None
    schedule: TrainingSchedule
    schedule_end: int  # the step from which early stopping counts
    steps_per_epoch: int
    generator: torch.Generator  # the batch order
    replicas: distributed.Replicas
    identity: dict
    run_dir: Path | None
    fingerprint: dict | None

    @property
    def num_rows(self) -> int:
        return self.train[0].shape[0]

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 alone does)."""
        return self.run_dir is not None and self.replicas.is_main

    @property
    def folder(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE


class Trainer:
    """Fits an SDLGM model and guide by stochastic variational inference.

    Args:
        model, guide: the Pyro model and guide (``PyroModule``s with the SDLGM signature).
        config: training options.
        batch_kwargs: optional function of a batch (the tuple of tensors on the device)
            returning extra keyword arguments for the model and the guide, computed once per
            batch so that both see the same values (the wide-label mode's candidate
            shortlists). It may draw from torch's global RNG, which checkpoints restore.
        num_candidates: the classifier's shortlist size for the memory estimate (see
            :func:`~pyro_sdlgm.inference.resources.guard_training_memory`).
        memory_checked: the caller has applied :meth:`check_memory` already (the estimators do,
            on meta networks, before freeing their current ones): ``fit`` does not repeat it.
    The ELBO estimator follows ``model.spec`` (see :func:`make_elbo`).
    """

    def __init__(self, model, guide, config: TrainConfig, batch_kwargs=None, num_candidates: int | None = None,
                 memory_checked: bool = False):
        self.model = model
        self.guide = guide
        self.config = config
        self.batch_kwargs = batch_kwargs or (lambda batch: {})
        self.num_candidates = num_candidates
        self.memory_checked = memory_checked
        self.device = resolve_device(config.device)
        self.elbo = make_elbo(model.spec, config.num_particles)
        self.optimizer: torch.optim.Optimizer | None = None
        self._replicas = distributed.Replicas()

    def check_memory(self, num_train_rows: int, num_val_rows: int) -> MemoryEstimate | None:
        """Raise :class:`~pyro_sdlgm.exceptions.ResourceError` if training on this many rows cannot
        fit the device (the networks may be on the ``meta`` device: only sizes are read). The
        estimate needs SDLGM's sizes (``model.spec.latent_dim``, ``max_sparsity``): another model
        is not checked (None)."""
        if not all(hasattr(self.model.spec, size) for size in ("latent_dim", "max_sparsity")):
            return None
        return guard_training_memory(self.model, self.guide, self.config, num_train_rows, num_val_rows,
                                     num_candidates=self.num_candidates)

    def _cuda_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    def _collective_device(self):
        return self.device if self.device.type == "cuda" else None

    def mean_loss(self, data, schedule_kwargs: dict, seed: int, replicas: distributed.Replicas | None = None) -> float:
        """Negative ELBO per example over ``data`` with a fixed seed, leaving the global RNG untouched.

        ``data``: the model's data arguments, one array (``x``) or a tuple (``x, y``).
        ``replicas``: in a data-parallel run, each rank scores every ``R``-th row and the
        sums are added up over the ranks (every rank must call it then).
        """
        replicas = replicas or distributed.Replicas()
        columns = as_columns(data)
        num_rows = columns[0].shape[0]
        total = 0.0
        with torch.random.fork_rng(devices=self._cuda_devices()), pyro.settings.context(module_local_params=True):
            torch.manual_seed(seed)
            mine = torch.arange(num_rows)[replicas.rank::replicas.world_size]
            for rows in mine.split(self.config.eval_batch_size):
                batch = take_rows(columns, rows, self.device)
                # no num_data: the plate is unscaled, so this is the batch's sum
                total += self.elbo.loss(self.model, self.guide, *batch, **schedule_kwargs, **self.batch_kwargs(batch))
        if replicas.distributed:
            (total,) = replicas.sum([total], self._collective_device())
        return total / num_rows

    # -- one step ------------------------------------------------------------------------

    def _setup_optimizer(self) -> None:
        """The networks on the device, the ELBO module over their parameters, a fresh Adam."""
        self.model.to(self.device)
        self.guide.to(self.device)
        with pyro.settings.context(module_local_params=True):
            self.loss_fn = self.elbo(self.model, self.guide)
        self.named = dict(self.loss_fn.named_parameters())
        self.optimizer = torch.optim.Adam(self.named.values(), lr=self.config.learning_rate)
        self._step_fn = self.loss_fn

    def step(self, batch: tuple, *, num_data: int | None = None, schedule: dict | None = None,
             validate: bool = True) -> float:
        """One SVI step on ``batch``: the negative ELBO, its gradient and an Adam update.

        Args:
            batch: the model's data arguments for these rows as tensors on :attr:`device`,
                ``(x,)`` (``(B, D)``) or ``(x, y)``.
            num_data: ``N``, the rows of the data set the batch stands for (the plate's scale;
                default: the batch's rows).
            schedule: ``tau_sparsity``, ``tau_support`` and ``kl_weight`` for this step (default:
                the final values of the config's schedules).
            validate: Pyro's validation of the distributions in this step.

        Returns:
            The loss of the batch per example of the data set (the negative ELBO over ``N``).

        Raises:
            NumericalError: a non-finite loss or gradient, or rejected distribution parameters;
                no update is made.
        """
        if self.optimizer is None:
            self._setup_optimizer()
        num_data = batch[0].shape[0] if num_data is None else num_data
        kwargs = final_schedule(self.config) if schedule is None else schedule
        try:
            _, loss = self._update(batch, num_data, kwargs, validate)
        except StepFault as fault:
            self.optimizer.zero_grad()
            raise NumericalError(fault_message(fault, None, None, kwargs)) from None
        return loss.item()

    def _update(self, batch: tuple, num_data: int, kwargs: dict, validate: bool,
                weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss, gradient, checks, update: ``(elbo_loss, loss)``, the plate-scaled negative ELBO and
        the loss that was differentiated (``elbo_loss / num_data``, or ``elbo_loss * weight`` in a
        data-parallel run). Raises :class:`StepFault` before any update."""
        extra = self.batch_kwargs(batch)
        # Pyro's validation never switched on here: a global pyro.enable_validation(False) stays
        checks = contextlib.nullcontext() if validate else without_pyro_validation()
        fault = None
        try:
            with checks, pyro.settings.context(module_local_params=True):
                elbo_loss = self._step_fn(*batch, num_data=num_data, **kwargs, **extra)
            loss = elbo_loss / num_data if weight is None else elbo_loss * weight
        except ValueError as err:  # Pyro's/torch's validation of distribution parameters
            if "invalid values" not in str(err):
                raise
            fault = StepFault("invalid distribution parameters", validation_failure(err))
        if fault is None and not bool(torch.isfinite(loss.detach())):
            fault = self._loss_fault(loss, batch, num_data, {**kwargs, **extra})
        if self._replicas.distributed and self._replicas.any(fault is not None, self._collective_device()):
            fault = fault or StepFault("a fault on another data-parallel rank")  # every rank skips or stops together
        if fault is not None:
            raise fault
        self.optimizer.zero_grad()
        loss.backward()
        norm = self._gradient_norm()
        if not bool(torch.isfinite(norm)):
            raise StepFault(f"non-finite gradient (norm {norm.item()})", first_bad_gradient(self.named))
        self.optimizer.step()
        return elbo_loss, loss

    def _loss_fault(self, loss, batch, num_data: int, kwargs: dict) -> StepFault:
        with pyro.settings.context(module_local_params=True):  # the re-trace leaves Pyro's param store alone
            where = diagnose_sites(self.model, self.guide, batch, kwargs, num_data, self._cuda_devices())
        where += [f"parameter {name!r} is non-finite" for name in non_finite_parameters(self.named)]
        return StepFault(f"non-finite loss {loss.item()}",
                         where or ["no site is non-finite when the batch is re-run (a transient fault)"])

    def _gradient_norm(self) -> torch.Tensor:
        """The gradient's norm, clipped to ``grad_clip_norm`` when that is set."""
        params = list(self.named.values())
        if self.config.grad_clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm)
        grads = [p.grad for p in params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    # -- the loop -------------------------------------------------------------------------

    def fit(self, train, val=None, run_dir: str | Path | None = None, *, resume: bool = False,
            overwrite: bool = False, identity: dict | None = None):
        """Train; return the history, one dict of metrics per epoch.

        Args:
            train: the model's data arguments: ``x (N, D)``, or a tuple such as ``(x, y)``;
                each a tensor, numpy array or scipy sparse matrix (batches are densified and
                moved to the device one at a time).
            val: optional validation data of the same form, for early stopping.
            run_dir: if given, metrics are appended to ``run_dir/metrics.jsonl`` each epoch
                and checkpoints are written to ``run_dir/checkpoints/``.
            resume: continue from the newest checkpoint in ``run_dir`` instead of starting
                anew: the model, guide, optimizer, RNGs, batch order, early-stopping state
                and history are restored, and ``metrics.jsonl`` is rewritten to hold exactly
                the checkpointed epochs. The config, ``identity`` and data must equal the
                checkpoint's (else :class:`ConfigError`/:class:`CheckpointError`).
            overwrite: start afresh in a ``run_dir`` that holds an earlier run's checkpoints
                and metrics, deleting them (else :class:`ConfigError`).
            identity: plain dict describing the model (e.g. ``{"model": ModelConfig dict}``),
                stored in checkpoints and compared on resume.

        Each history record holds ``epoch``, ``step``, ``train_loss`` (mean over the batches
        not skipped), ``skipped_batches``, the schedule values, ``val_loss`` and
        ``best_epoch`` (with validation data) and ``seconds``.

        On return the model and guide hold the parameters of the best validation epoch
        (or of the last epoch without validation data).

        Raises:
            NumericalError: a non-finite loss or gradient (``nan_policy="stop"``), an epoch
                whose batches were all skipped (``"skip_batch"``), or non-finite parameters
                or validation loss after an epoch; no checkpoint is written for that epoch.
            ResourceError: training cannot fit the device (:meth:`check_memory`).
            RunFolderBusyError: another process holds ``run_dir``
                (:mod:`~pyro_sdlgm.inference.run_lock`).
        """
        writer = run_dir is not None and distributed.current().is_main
        with cpu_threads(self.config.num_threads), \
                run_folder_lock(run_dir, purpose="training") if writer else contextlib.nullcontext():
            run = self._open_run(train, val, run_dir, resume=resume, overwrite=overwrite, identity=identity)
            self._setup_optimizer()
            progress = self._start(run, resume)
            start = progress.epoch
            self._loop(run, progress)
        run.replicas.check_identical(self.named)
        if progress.best_state is not None:
            self.model.load_state_dict(progress.best_state[0])
            self.guide.load_state_dict(progress.best_state[1])
        if len(progress.history) > start:  # epochs ran in this call: say how training ended
            self._announce_end(progress, announce=self.config.progress and run.replicas.is_main)
        return progress.history

    def _open_run(self, train, val, run_dir, *, resume: bool, overwrite: bool, identity: dict | None) -> _Run:
        """Check the folder, the memory and the options; set up the schedule and the batch order."""
        cfg = self.config
        replicas = self._replicas = distributed.current()
        check_run_dir(run_dir, resume, overwrite)
        replicas.barrier()  # every rank has checked the folder before rank 0 writes to it
        train = as_columns(train)
        val = as_columns(val) if val is not None else None
        if not self.memory_checked:
            self.check_memory(train[0].shape[0], 0 if val is None else val[0].shape[0])
        steps_per_epoch = math.ceil(train[0].shape[0] / cfg.batch_size)
        schedule = TrainingSchedule.from_config(cfg, cfg.epochs * steps_per_epoch)
        if cfg.revive_every != "auto" and cfg.revive_every:
            check_revivable(self.model, self.guide)
            if replicas.distributed:
                raise ConfigError("training.revive_every is not supported in data-parallel training (the revival "
                                  f"would differ between ranks); got revive_every={cfg.revive_every}")
        return _Run(
            train=train, val=val, schedule=schedule, steps_per_epoch=steps_per_epoch,
            # a model whose objective takes no temperature or KL weight (``schedule_free``) has nothing
            # to wait for: early stopping and the choice of the best epoch start at once
            schedule_end=0 if getattr(self.model, "schedule_free", False) else schedule.end_step(),
            generator=torch.Generator().manual_seed(cfg.seed), replicas=replicas,
            # the device is part of what a checkpoint continues: CPU and CUDA draw different numbers
            identity={**dict(identity or {}), "device": self.device.type},
            run_dir=Path(run_dir) if run_dir is not None else None,
            fingerprint=data_fingerprint(train, val) if run_dir is not None else None)

    def _start(self, run: _Run, resume: bool) -> TrainingState:
        """The loop's state: restored from the newest checkpoint, or fresh (with a clean folder);
        then the data-parallel wrapper and the run's revival period."""
        if resume:
            progress = restore_training_checkpoint(run.run_dir, self.model, self.guide, self.optimizer,
                                                   run.generator, self.config, run.identity, run.fingerprint)
            if run.writes:
                remove_temporaries(run.folder)
                lines = "".join(json.dumps(record) + "\n" for record in progress.history)
                atomic_write(run.metrics_path, lambda handle: handle.write(lines.encode()))
        else:
            progress = TrainingState()
            if run.writes:
                run.run_dir.mkdir(parents=True, exist_ok=True)
                run.metrics_path.write_text("")
                remove_temporaries(run.folder)
                prune_checkpoints(run.folder, 0)  # a fresh run never resumes an old run's checkpoints
        if run.replicas.distributed:
            self._step_fn = distributed.wrap_module(self.loss_fn, self.device)
            if not run.replicas.is_main:  # ranks draw different noise (rank 0 keeps the single-process stream)
                torch.manual_seed(distributed.rank_seed(self.config.seed, run.replicas.rank, progress.epoch))
        if progress.revive_every is None:
            progress.revive_every = self._revive_every(run.replicas)
        return progress

    def _loop(self, run: _Run, progress: TrainingState) -> None:
        """Epochs until the last, or until early stopping, each recorded, logged and checkpointed."""
        cfg = self.config
        bar = tqdm(desc="SDLGM", unit="epoch", initial=progress.epoch, total=cfg.epochs,
                   disable=not cfg.progress or progress.finished or not run.replicas.is_main)
        for epoch in ([] if progress.finished else range(progress.epoch, cfg.epochs)):
            record = self._epoch(epoch, run, progress)
            if self._revival_due(progress.revive_every, epoch, run.steps_per_epoch, run.schedule_end):
                record["revived_dims"] = revive_dead_dimensions(self.model, self.guide, run.train[0], self.optimizer,
                                                                seed=cfg.seed * 100_003 + epoch, strategy=cfg.revive,
                                                                duplicates=cfg.revive_duplicates)
            progress.history.append(record)
            progress.epoch = epoch + 1
            if run.writes:
                with run.metrics_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
            bar.set_postfix({k: f"{record[k]:.2f}" for k in ("train_loss", "val_loss") if k in record}, refresh=False)
            bar.update(1)
            logger.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
            stop = cfg.patience is not None and progress.best_state is not None and progress.stale >= cfg.patience
            progress.finished = stop or progress.epoch == cfg.epochs
            due = cfg.checkpoint_every > 0 and progress.epoch % cfg.checkpoint_every == 0
            if run.writes and (due or progress.finished):
                progress.last_checkpoint = save_training_checkpoint(
                    run.folder, progress, self.model, self.guide, self.optimizer, run.generator, run.schedule,
                    cfg, run.identity, run.fingerprint, cuda=self.device.type == "cuda")
            if stop:
                break
        bar.close()

    def _revive_every(self, replicas) -> int:
        """``revive_every`` with ``"auto"`` resolved (see :class:`~pyro_sdlgm.config.TrainConfig`)."""
        every = self.config.revive_every
        if every != "auto":
            return every
        return AUTO_REVIVE_EVERY if revivable(self.model, self.guide) and not replicas.distributed else 0

    @staticmethod
    def _revival_due(every: int, epoch: int, steps_per_epoch: int, schedule_end: int) -> bool:
        """Whether dead dimensions are revived after ``epoch``: every ``every``-th epoch whose end is
        still inside the schedules (early stopping and the best state only start after them)."""
        return bool(every) and (epoch + 1) % every == 0 and (epoch + 1) * steps_per_epoch < schedule_end

    def _announce_end(self, progress: TrainingState, announce: bool) -> None:
        """Say whether training stopped early and which epoch's parameters it returns."""
        best = restored_epoch(progress.history)
        ran = len(progress.history)
        parts = []
        if early_stopped(progress.history, self.config.epochs):
            parts.append(f"early stopping after epoch {ran}: the validation loss has not improved for "
                         f"{self.config.patience} epochs")
        if best is not None and best != ran:
            parts.append(f"restored epoch {best}, the best validation loss ({progress.best_val:.4f})")
        if not parts:
            return
        message = "; ".join(parts)
        logger.info(message)
        if announce:
            tqdm.write(message, file=sys.stderr)

    def _epoch(self, epoch: int, run: _Run, progress: TrainingState) -> dict:
        """One pass over the shuffled training rows, then validation; returns the epoch's record."""
        started = time.perf_counter()
        self.model.train()
        self.guide.train()
        epoch_loss, rows_used, skipped = self._train_pass(epoch, run, progress)
        bad = non_finite_parameters(self.named)
        if bad:
            raise NumericalError(f"non-finite parameters after epoch {epoch + 1}, step {progress.step}: {bad[:5]}"
                                 + (f"; the last good checkpoint is {str(progress.last_checkpoint)!r}"
                                    if progress.last_checkpoint else ""))
        record = {
            "epoch": epoch + 1,  # counted from 1, as the progress bar, the CLI and checkpoint names count
            "step": progress.step,
            "train_loss": epoch_loss / rows_used,
            "skipped_batches": skipped,
            **{k: float(v) for k, v in run.schedule(progress.step - 1).items()},
        }
        self.model.eval()
        self.guide.eval()
        if run.val is not None and run.val[0].shape[0] > 0:
            self._validate(record, epoch, run, progress)
        record["seconds"] = time.perf_counter() - started
        return record

    def _train_pass(self, epoch: int, run: _Run, progress: TrainingState) -> tuple[float, int, int]:
        """The epoch's steps: ``(summed per-row loss, rows used, skipped batches)`` over all ranks.

        In a data-parallel run each rank takes its part of every global batch (see
        :mod:`pyro_sdlgm.inference.distributed`)."""
        cfg, n, replicas = self.config, run.num_rows, run.replicas
        epoch_loss, rows_used, skipped, batches, first_fault = 0.0, 0, 0, 0, None
        for rows in iterate_minibatches(n, cfg.batch_size, run.generator):
            batches += 1
            rows, share, weight = distributed.local_part(rows, replicas, n)
            batch = take_rows(run.train, rows, self.device)
            kwargs = run.schedule(progress.step)
            # Pyro's validation on the epoch's first step only, unless pyro_validation="always"
            try:
                elbo_loss, loss = self._update(batch, n, kwargs, batches == 1 or cfg.pyro_validation == "always",
                                               weight)
            except StepFault as fault:
                message = fault_message(fault, epoch + 1, progress.step, kwargs, progress.last_checkpoint)
                if cfg.nan_policy == "stop":
                    raise NumericalError(message + "; try a lower learning rate, grad_clip_norm, higher final "
                                         "temperatures, or nan_policy='skip_batch'") from None
                logger.warning("skipped a batch (nan_policy='skip_batch'): %s", message)
                self.optimizer.zero_grad()
                first_fault = first_fault or message
                skipped += 1
                progress.step += 1
                continue
            loss_sum, used = distributed.loss_contribution(elbo_loss, loss, len(rows), share, n, replicas)
            epoch_loss += loss_sum
            rows_used += used
            progress.step += 1
        if replicas.distributed:
            epoch_loss, rows_used = replicas.sum([epoch_loss, rows_used], self._collective_device())
        if skipped == batches:
            raise NumericalError(f"all {batches} batches of epoch {epoch + 1} had a non-finite loss or gradient and "
                                 f"were skipped (nan_policy='skip_batch'); the first: {first_fault}")
        return epoch_loss, rows_used, skipped

    def _validate(self, record: dict, epoch: int, run: _Run, progress: TrainingState) -> None:
        """``val_loss`` and ``best_epoch`` into ``record``; the best state and patience in ``progress``."""
        record["val_loss"] = self.mean_loss(run.val, run.schedule.final(), self.config.seed + 1, run.replicas)
        if not math.isfinite(record["val_loss"]):
            raise NumericalError(f"non-finite validation loss {record['val_loss']} after epoch {epoch + 1}, "
                                 f"step {progress.step}")
        # before the schedules end, the trained objective is not the target one:
        # neither keep a best state nor count patience then
        counting = progress.step >= run.schedule_end
        improved = counting and record["val_loss"] < progress.best_val
        if improved:
            progress.best_val, progress.stale = record["val_loss"], 0
            progress.best_state = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.guide.state_dict()))
        elif counting:
            progress.stale += 1
        record["best_epoch"] = improved
