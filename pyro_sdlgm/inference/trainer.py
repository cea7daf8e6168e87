"""The SVI training loop: ELBO as an ``nn.Module``, a ``torch.optim`` optimizer, schedules, early stopping.

Route chosen (see the README): ``Trace_ELBO()(model, guide)`` (``TraceEnum_ELBO`` in
``enumerate`` mode) is an ``nn.Module`` whose parameters are the model's and the
guide's; it is trained with ``torch.optim.Adam`` under
``pyro.settings.context(module_local_params=True)``, so nothing lives in Pyro's global
parameter store and checkpoints are plain ``state_dict``s. The same model and guide
also work with the classic ``pyro.infer.SVI`` in Pyro's default (global) mode.

Reliability: with a run folder the trainer writes a weights-only checkpoint every
``checkpoint_every`` epochs and at the end (``run_dir/checkpoints/epoch_NNNNNN.pt``,
atomically, the newest ``keep_checkpoints`` kept) holding everything the loop needs to
continue bit for bit: model, guide and optimizer state, step and epoch, the schedule
values, the RNG states and the batch-order generator, the early-stopping state and the
history. ``fit(..., resume=True)`` continues from the newest one. A non-finite loss or
gradient stops training (``nan_policy="stop"``) with a :class:`NumericalError` naming
the step and, where it can be found, the sample site or parameter; ``"skip_batch"``
skips that update instead and counts it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from tqdm.auto import tqdm

from pyro_sdlgm.inference import distributed
from pyro_sdlgm.inference.checkpoint import (
    CHECKPOINT_DIR,
    TRAINING_FORMAT,
    TRAINING_VERSION,
    atomic_save,
    atomic_write,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_temporaries,
    rng_state,
    set_rng_state,
    to_cpu,
)
from pyro_sdlgm.config import CLASSIFIER_LEGACY, TrainConfig
from pyro_sdlgm.inference.elbo import AnalyticKLELBO
from pyro_sdlgm.exceptions import CheckpointError, ConfigError, NumericalError
from pyro_sdlgm.inference.resources import cpu_threads
from pyro_sdlgm.data.arrays import take_rows
from pyro_sdlgm.inference.revival import AUTO_REVIVE_EVERY, check_revivable, revivable, revive_dead_dimensions
from pyro_sdlgm.inference.schedules import TrainingSchedule

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# options that may differ between a checkpoint and the run resuming from it
# (the remedies that NumericalError and ResourceError suggest among them)
# (and pyro_validation, num_threads and count_estimate, which change no training step, nor the
# classifier's ranking, decision and calibrate_count, which act after training)
RESUME_IGNORED = ("progress", "checkpoint_every", "keep_checkpoints", "nan_policy", "check_memory", "memory_limit_gb",
                  "pyro_validation", "num_threads", "count_estimate", "ranking", "decision", "calibrate_count")


@contextlib.contextmanager
def without_pyro_validation():
    """Pyro's validation off for a block, then Pyro's and torch's settings as they were.

    ``pyro.validation_enabled`` alone restores torch's default ``validate_args`` to Pyro's
    flag, which would switch torch's validation on where a user had turned only that off.
    """
    torch_default = torch.distributions.Distribution._validate_args
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(torch_default)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without it raises ``ConfigError``.

    In a data-parallel run, ``"cuda"`` and ``"auto"`` mean this process's GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name!r} but CUDA is not available on this machine")
    replicas = distributed.current()
    if name.startswith("cuda") and replicas.distributed:
        if name != "cuda":
            raise ConfigError(f"training.device={name!r} in a data-parallel run would put every rank on one GPU: "
                              "use 'cuda' (rank r takes cuda:LOCAL_RANK)")
        return torch.device("cuda", replicas.local_rank)
    return torch.device(name)


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


def data_fingerprint(*datasets) -> dict[str, Any]:
    """Shapes and a SHA-256 digest of the training (and validation) columns.

    Stored in training checkpoints so that a run never resumes on other data. Each
    argument is a tuple of columns (tensors, numpy arrays or scipy sparse matrices) or None.
    """
    digest = hashlib.sha256()
    shapes = []
    for columns in datasets:
        if columns is None:
            shapes.append(None)
            continue
        shapes.append([list(column.shape) for column in columns])
        for column in columns:
            if isinstance(column, torch.Tensor):
                parts = [column.detach().cpu().contiguous().numpy()]
            elif hasattr(column, "tocsr"):  # scipy.sparse
                csr = column.tocsr()
                parts = [csr.data, csr.indices, csr.indptr]
            else:
                parts = [np.asarray(column)]
            for part in parts:
                part = np.ascontiguousarray(part)
                digest.update(f"{part.dtype.str}{part.shape}".encode())
                digest.update(part.view(np.uint8).reshape(-1).data)
    return {"shapes": shapes, "sha256": digest.hexdigest()}


def _flat(prefix: str, value) -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: value}


#: options added after checkpoints were first written, with the value every older checkpoint implies
ADDED_OPTIONS = {"slot_layout": "per_slot", "num_candidates": None, "count_coupling": "gated_code",
                 "slot_estimator": "relaxed", "revive_every": 0, "revive": "split", **CLASSIFIER_LEGACY}


def config_differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: A in the checkpoint, B now"`` for each dotted key whose value differs.

    A key of :data:`ADDED_OPTIONS` missing from the checkpoint counts as its default there.
    """
    saved, current = _flat("", saved), _flat("", current)

    def saved_value(key):
        return saved[key] if key in saved else ADDED_OPTIONS.get(key.split(".")[-1])

    return [
        f"{key}: {saved_value(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if key.split(".")[-1] not in ignore and saved_value(key) != current.get(key)
    ]


def check_run_dir(run_dir: str | Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run in a folder holding an earlier run's checkpoints or metrics
    (unless ``overwrite``), and to resume without a folder."""
    if run_dir is None:
        if resume:
            raise ConfigError("resume=True needs the run_dir whose checkpoints to continue from")
        return
    run_dir = Path(run_dir)
    if resume or overwrite:
        return
    metrics = run_dir / METRICS_FILE
    if list_checkpoints(run_dir / CHECKPOINT_DIR) or (metrics.is_file() and metrics.stat().st_size > 0):
        raise ConfigError(f"run_dir {str(run_dir)!r} holds the checkpoints or metrics of an earlier run; pass "
                          "resume=True to continue it or overwrite=True to replace them")


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest training checkpoint of a run folder; :class:`CheckpointError` if there is none."""
    return latest_checkpoint_epoch(run_dir)[1]


def latest_checkpoint_epoch(run_dir: str | Path) -> tuple[int, Path]:
    """``(completed epochs, path)`` of the newest training checkpoint; :class:`CheckpointError` if none."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(
            f"cannot resume {str(run_dir)!r}: it holds no training checkpoint ({str(folder)}/epoch_*.pt); "
            "start the run anew"
        )
    return found[-1]


def restored_epoch(history: list[dict]) -> int | None:
    """The epoch (counted from 1) whose parameters :meth:`Trainer.fit` returned: the best
    validation epoch, or None without validation (the last epoch's parameters)."""
    best = [record["epoch"] for record in history if record.get("best_epoch")]
    return best[-1] + 1 if best else None


def early_stopped(history: list[dict], epochs: int) -> bool:
    return len(history) < epochs


_SITE = re.compile(r"at site '([^']+)'")


def validation_failure(err: ValueError) -> list[str]:
    """What a ValueError of Pyro's or torch's validation (``... invalid values``) says of the sites."""
    where = [f"site {m!r} has invalid parameters or values" for m in dict.fromkeys(_SITE.findall(str(err)))]
    return where or ["Pyro's validation: " + str(err).splitlines()[0].rstrip(":")[:300]]


@dataclasses.dataclass
class _Progress:
    """The state of the training loop between epochs (what a checkpoint restores)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken (skipped batches included)
    history: list = dataclasses.field(default_factory=list)
    best_val: float = math.inf
    best_state: tuple | None = None  # (model state_dict, guide state_dict) of the best epoch
    stale: int = 0  # epochs without improvement since the schedules ended
    finished: bool = False  # all epochs run or early-stopped
    last_checkpoint: Path | None = None
    revive_every: int | None = None  # the run's revival period, "auto" resolved (None: not yet)


class Trainer:
    """Fits an SDLGM model and guide by stochastic variational inference.

    Args:
        model, guide: the Pyro model and guide (``PyroModule``s with the SDLGM signature).
        config: training options.
        batch_kwargs: optional function of a batch (the tuple of tensors on the device)
            returning extra keyword arguments for the model and the guide, computed once per
            batch so that both see the same values (the wide-label mode's candidate
            shortlists). It may draw from torch's global RNG, which checkpoints restore.
    The ELBO estimator follows ``model.spec`` (see :func:`make_elbo`).
    """

    def __init__(self, model, guide, config: TrainConfig, batch_kwargs=None):
        self.model = model
        self.guide = guide
        self.config = config
        self.batch_kwargs = batch_kwargs or (lambda batch: {})
        self.device = resolve_device(config.device)
        self.elbo = make_elbo(model.spec, config.num_particles)

    def _cuda_devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    @torch.no_grad()
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

    def _collective_device(self):
        return self.device if self.device.type == "cuda" else None

    # -- fault diagnosis ------------------------------------------------------------------

    @torch.no_grad()
    def diagnose(self, batch: tuple, kwargs: dict, num_data: int) -> list[str]:
        """Sample sites whose values or log-densities are non-finite on ``batch``.

        Re-runs the guide and the model replayed on the guide's draws once (with the global
        RNG state restored afterwards, and Pyro's validation off) and checks each sample site.
        Best effort: a fault that does not recur on the rerun, or a failing rerun, gives an
        empty list.
        """
        found: list[str] = []
        try:
            # without Pyro's validation, so that a site with invalid parameters is reached and
            # named by its non-finite values or log-density instead of stopping the re-trace
            with torch.random.fork_rng(devices=self._cuda_devices()), warnings.catch_warnings(), \
                    without_pyro_validation():
                warnings.simplefilter("ignore")
                kwargs = {**kwargs, **self.batch_kwargs(batch)}
                guide_trace = poutine.trace(self.guide).get_trace(*batch, num_data=num_data, **kwargs)
                model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
                    *batch, num_data=num_data, **kwargs)
                for role, trace in (("guide", guide_trace), ("model", model_trace)):
                    for name, site in trace.nodes.items():
                        if site["type"] != "sample":
                            continue
                        value = site["value"]
                        if role == "guide" and torch.is_tensor(value) and not torch.isfinite(value).all():
                            found.append(f"{role} site {name!r} has non-finite values")
                            continue
                        try:
                            log_prob = site["fn"].log_prob(value)
                        except ValueError:
                            found.append(f"{role} site {name!r} has invalid distribution parameters")
                            continue
                        if not torch.isfinite(log_prob).all():
                            found.append(f"{role} site {name!r} has a non-finite log-density")
        except ValueError as err:  # a distribution built with validate_args=True rejected its parameters
            if "invalid values" not in str(err):
                logger.debug("could not re-trace the faulty batch: %s", err)
            else:
                found += validation_failure(err)
        except Exception as err:  # noqa: BLE001 - the diagnosis must never hide the original fault
            logger.debug("could not re-trace the faulty batch: %s", err)
        return found

    def _non_finite_parameters(self, named: dict[str, torch.Tensor]) -> list[str]:
        return [name for name, p in named.items() if not bool(torch.isfinite(p.detach()).all())]

    def _fault_message(self, fault: str, epoch: int, step: int, kwargs: dict, where: list[str],
                       progress: _Progress) -> str:
        message = (f"{fault} at epoch {epoch}, step {step} (tau_sparsity={kwargs['tau_sparsity']:.4g}, "
                   f"tau_support={kwargs['tau_support']:.4g}, kl_weight={kwargs['kl_weight']:.4g})")
        if where:
            message += "; " + "; ".join(where)
        if progress.last_checkpoint is not None:
            message += f"; the last good checkpoint is {str(progress.last_checkpoint)!r}"
        return message

    # -- checkpoints ----------------------------------------------------------------------

    def _save_checkpoint(self, folder: Path, progress: _Progress, optimizer, generator, schedule,
                         identity: dict, fingerprint: dict) -> Path:
        """Write the loop's state after ``progress.epoch`` epochs; keep the newest ``keep_checkpoints``.

        Contents (all plain containers, numbers, strings and tensors): ``format``,
        ``format_version``, ``epoch`` (completed), ``step``, ``finished``, ``train_config``,
        ``identity`` (model/classifier options), ``data`` (shapes and digest),
        ``model_state``, ``guide_state``, ``optimizer_state``, ``schedule`` (values at the
        last step), ``rng`` (torch, cuda, numpy, python and ``batch_order`` generator
        states), ``early_stopping`` (``best_val``, ``best_model_state``,
        ``best_guide_state``, ``stale``), ``history`` and ``revive_every_resolved`` (the run's
        revival period with ``"auto"`` resolved, so that a resumed run keeps it).
        """
        best = progress.best_state
        state = {
            "format": TRAINING_FORMAT,
            "format_version": TRAINING_VERSION,
            "epoch": progress.epoch,
            "step": progress.step,
            "finished": progress.finished,
            "train_config": self.config.to_dict(),
            "identity": identity,
            "data": fingerprint,
            "model_state": to_cpu(self.model.state_dict()),
            "guide_state": to_cpu(self.guide.state_dict()),
            "optimizer_state": to_cpu(optimizer.state_dict()),
            "schedule": {k: float(v) for k, v in schedule(max(progress.step - 1, 0)).items()},
            "rng": {**rng_state(cuda=self.device.type == "cuda"), "batch_order": generator.get_state()},
            "early_stopping": {
                "best_val": progress.best_val,
                "best_model_state": None if best is None else to_cpu(best[0]),
                "best_guide_state": None if best is None else to_cpu(best[1]),
                "stale": progress.stale,
            },
            "history": progress.history,
            "revive_every_resolved": progress.revive_every,
        }
        path = checkpoint_path(folder, progress.epoch)
        atomic_save(state, path)
        prune_checkpoints(folder, self.config.keep_checkpoints)
        logger.info("checkpoint after epoch %d: %s", progress.epoch, path)
        return path

    def _restore(self, run_dir: Path, optimizer, generator, identity: dict, fingerprint: dict) -> _Progress:
        """Load the newest checkpoint of ``run_dir`` into the model, guide, optimizer and RNGs."""
        path = latest_checkpoint(run_dir)
        data = load_checkpoint(path, TRAINING_FORMAT, (
            "format_version", "epoch", "step", "finished", "train_config", "identity", "data", "model_state",
            "guide_state", "optimizer_state", "rng", "early_stopping", "history"))
        if data["format_version"] != TRAINING_VERSION:
            raise CheckpointError(f"checkpoint {str(path)!r} has format version {data['format_version']!r}; "
                                  f"this version of pyro_sdlgm resumes from version {TRAINING_VERSION}")
        current = self.config.to_dict()
        revive_every = data.get("revive_every_resolved")
        if "revive_every" not in data["train_config"] and current["revive_every"] == "auto":
            # written before revival existed: the default continues the run as it began, without it
            current["revive_every"] = revive_every = 0
        differences = config_differences({"training": data["train_config"], **data["identity"]},
                                         {"training": current, **identity}, RESUME_IGNORED)
        if differences:
            raise ConfigError(f"cannot resume from {str(path)!r}: the run's config differs from the checkpoint's: "
                              + "; ".join(differences))
        if data["data"] != fingerprint:
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: the training/validation data differ from the checkpoint's "
                f"(shapes {data['data'].get('shapes')} in the checkpoint, {fingerprint['shapes']} now)"
            )
        try:
            early = data["early_stopping"]
            best = None
            if early["best_model_state"] is not None:
                best = (early["best_model_state"], early["best_guide_state"])
            restored = _Progress(epoch=int(data["epoch"]), step=int(data["step"]), history=list(data["history"]),
                                 best_val=float(early["best_val"]), best_state=best, stale=int(early["stale"]),
                                 finished=bool(data["finished"]), last_checkpoint=path,
                                 revive_every=None if revive_every is None else int(revive_every))
            self.model.load_state_dict(data["model_state"])
            self.guide.load_state_dict(data["guide_state"])
            optimizer.load_state_dict(data["optimizer_state"])
            generator.set_state(data["rng"]["batch_order"])
            set_rng_state(data["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match the model being resumed: {err}") from None
        logger.info("resuming from %s (epoch %d, step %d)", path, restored.epoch, restored.step)
        return restored

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
        """
        with cpu_threads(self.config.num_threads):
            return self._fit(train, val, run_dir, resume=resume, overwrite=overwrite, identity=identity)

    def _fit(self, train, val, run_dir, *, resume: bool, overwrite: bool, identity: dict | None):
        cfg = self.config
        replicas = distributed.current()
        check_run_dir(run_dir, resume, overwrite)
        replicas.barrier()  # every rank has checked the folder before rank 0 writes to it
        # the device is part of what a checkpoint continues: CPU and CUDA draw different numbers
        identity = {**dict(identity or {}), "device": self.device.type}
        train = as_columns(train)
        val = as_columns(val) if val is not None else None
        n = train[0].shape[0]
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        schedule = TrainingSchedule.from_config(cfg, cfg.epochs * steps_per_epoch)
        # a model whose objective takes no temperature or KL weight (``schedule_free``) has nothing
        # to wait for: early stopping and the choice of the best epoch start at once
        schedule_end = 0 if getattr(self.model, "schedule_free", False) else schedule.end_step()
        self.model.to(self.device)
        self.guide.to(self.device)
        run_dir = Path(run_dir) if run_dir is not None else None
        metrics_path = run_dir / METRICS_FILE if run_dir is not None else None
        folder = run_dir / CHECKPOINT_DIR if run_dir is not None else None
        fingerprint = data_fingerprint(train, val) if run_dir is not None else None
        writes = run_dir is not None and replicas.is_main  # rank 0 alone writes the run folder
        if cfg.revive_every != "auto" and cfg.revive_every:
            check_revivable(self.model, self.guide)
            if replicas.distributed:
                raise ConfigError("training.revive_every is not supported in data-parallel training (the revival "
                                  f"would differ between ranks); got revive_every={cfg.revive_every}")

        with pyro.settings.context(module_local_params=True):
            loss_fn = self.elbo(self.model, self.guide)
            named = dict(loss_fn.named_parameters())
            optimizer = torch.optim.Adam(named.values(), lr=cfg.learning_rate)
            generator = torch.Generator().manual_seed(cfg.seed)
            if resume:
                progress = self._restore(run_dir, optimizer, generator, identity, fingerprint)
                if writes:
                    remove_temporaries(folder)
                    lines = "".join(json.dumps(record) + "\n" for record in progress.history)
                    atomic_write(metrics_path, lambda handle: handle.write(lines.encode()))
            else:
                progress = _Progress()
                if writes:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    metrics_path.write_text("")
                    remove_temporaries(folder)
                    prune_checkpoints(folder, 0)  # a fresh run never resumes an old run's checkpoints
            step_fn = loss_fn
            if replicas.distributed:
                # wraps the ELBO module itself: its parameters are the model's and the guide's
                step_fn = torch.nn.parallel.DistributedDataParallel(
                    loss_fn, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                if not replicas.is_main:  # ranks draw different noise (rank 0 keeps the single-process stream)
                    torch.manual_seed(distributed.rank_seed(cfg.seed, replicas.rank, progress.epoch))
            start = progress.epoch
            if progress.revive_every is None:
                progress.revive_every = self._revive_every(replicas)
            bar = tqdm(desc="SDLGM", unit="epoch", initial=start, total=cfg.epochs,
                       disable=not cfg.progress or progress.finished or not replicas.is_main)
            for epoch in ([] if progress.finished else range(start, cfg.epochs)):
                record = self._epoch(epoch, train, val, n, step_fn, named, optimizer, generator, schedule,
                                     schedule_end, progress, replicas)
                if self._revival_due(progress.revive_every, epoch, steps_per_epoch, schedule_end):
                    record["revived_dims"] = revive_dead_dimensions(self.model, self.guide, train[0], optimizer,
                                                                    seed=cfg.seed * 100_003 + epoch, strategy=cfg.revive)
                progress.history.append(record)
                progress.epoch = epoch + 1
                if writes:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                bar.set_postfix({k: f"{record[k]:.2f}" for k in ("train_loss", "val_loss") if k in record},
                                refresh=False)
                bar.update(1)
                logger.info("epoch %d: %s", epoch,
                            {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
                stop = cfg.patience is not None and progress.best_state is not None and progress.stale >= cfg.patience
                progress.finished = stop or progress.epoch == cfg.epochs
                due = cfg.checkpoint_every > 0 and progress.epoch % cfg.checkpoint_every == 0
                if writes and (due or progress.finished):
                    progress.last_checkpoint = self._save_checkpoint(folder, progress, optimizer, generator,
                                                                     schedule, identity, fingerprint)
                if stop:
                    break
            bar.close()
        replicas.check_identical(named)
        if progress.best_state is not None:
            self.model.load_state_dict(progress.best_state[0])
            self.guide.load_state_dict(progress.best_state[1])
        if len(progress.history) > start:  # epochs ran in this call: say how training ended
            self._announce_end(progress, announce=cfg.progress and replicas.is_main)
        return progress.history

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

    def _announce_end(self, progress: _Progress, announce: bool) -> None:
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

    def _epoch(self, epoch: int, train: tuple, val: tuple | None, n: int, loss_fn, named: dict, optimizer,
               generator, schedule, schedule_end: int, progress: _Progress,
               replicas: distributed.Replicas | None = None) -> dict:
        """One pass over the shuffled training rows, then validation; returns the epoch's record.

        In a data-parallel run ``loss_fn`` is the ``DistributedDataParallel`` ELBO and each
        rank takes its part of every global batch (see :mod:`pyro_sdlgm.inference.distributed`).
        """
        replicas = replicas or distributed.Replicas()
        cfg = self.config
        params = list(named.values())
        started = time.perf_counter()
        self.model.train()
        self.guide.train()
        epoch_loss, rows_used, skipped, batches, first_fault = 0.0, 0, 0, 0, None
        for rows in iterate_minibatches(n, cfg.batch_size, generator):
            batches += 1
            share = 1.0
            if replicas.distributed:
                rows, share = distributed.local_rows(rows, replicas)
            batch = take_rows(train, rows, self.device)
            kwargs = schedule(progress.step)
            fault, where = None, []
            # Pyro's validation on the epoch's first step only, unless pyro_validation="always"
            # (it never switches validation on: a global pyro.enable_validation(False) stays)
            checks = (contextlib.nullcontext() if batches == 1 or cfg.pyro_validation == "always"
                      else without_pyro_validation())
            try:
                with checks:
                    elbo_loss = loss_fn(*batch, num_data=n, **kwargs, **self.batch_kwargs(batch))
                if replicas.distributed:
                    loss = elbo_loss * distributed.rank_loss_weight(share, replicas, n)
                else:
                    loss = elbo_loss / n
            except ValueError as err:  # Pyro's/torch's validation of distribution parameters
                if "invalid values" not in str(err):
                    raise
                fault = "invalid distribution parameters"
                where = validation_failure(err)
            if fault is None and not bool(torch.isfinite(loss.detach())):
                fault = f"non-finite loss {loss.item()}"
                where = self.diagnose(batch, kwargs, n)
                where += [f"parameter {name!r} is non-finite" for name in self._non_finite_parameters(named)]
                where = where or ["no site is non-finite when the batch is re-run (a transient fault)"]
            if replicas.distributed and replicas.any(fault is not None, self._collective_device()) and fault is None:
                fault = "a fault on another data-parallel rank"  # every rank skips or stops together
            if fault is None:
                optimizer.zero_grad()
                loss.backward()
                if cfg.grad_clip_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
                else:
                    grads = [p.grad for p in params if p.grad is not None]
                    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
                if not bool(torch.isfinite(norm)):
                    fault = f"non-finite gradient (norm {norm.item()})"
                    bad = [name for name, p in named.items()
                           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
                    where = [(f"parameter {bad[0]!r} has the first non-finite gradient ({len(bad)} of "
                              f"{len(named)} parameters have one)")] if bad else []
            if fault is not None:
                message = self._fault_message(fault, epoch, progress.step, kwargs, where, progress)
                if cfg.nan_policy == "stop":
                    raise NumericalError(message + "; try a lower learning rate, grad_clip_norm, higher final "
                                         "temperatures, or nan_policy='skip_batch'")
                logger.warning("skipped a batch (nan_policy='skip_batch'): %s", message)
                optimizer.zero_grad()
                first_fault = first_fault or message
                skipped += 1
                progress.step += 1
                continue
            optimizer.step()
            if replicas.distributed:
                # this rank's sum of per-row negative ELBOs: the plate scaled its B_r rows by N / B_r
                epoch_loss += elbo_loss.item() * len(rows) / n if share > 0 else 0.0
                rows_used += len(rows) if share > 0 else 0
            else:
                epoch_loss += loss.item() * len(rows)
                rows_used += len(rows)
            progress.step += 1
        if replicas.distributed:
            epoch_loss, rows_used = replicas.sum([epoch_loss, rows_used], self._collective_device())
        if skipped == batches:
            raise NumericalError(f"all {batches} batches of epoch {epoch} had a non-finite loss or gradient and "
                                 f"were skipped (nan_policy='skip_batch'); the first: {first_fault}")
        bad = self._non_finite_parameters(named)
        if bad:
            raise NumericalError(f"non-finite parameters after epoch {epoch}, step {progress.step}: {bad[:5]}"
                                 + (f"; the last good checkpoint is {str(progress.last_checkpoint)!r}"
                                    if progress.last_checkpoint else ""))
        step = progress.step
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": epoch_loss / rows_used,
            "skipped_batches": skipped,
            **{k: float(v) for k, v in schedule(step - 1).items()},
        }
        self.model.eval()
        self.guide.eval()
        if val is not None and val[0].shape[0] > 0:
            record["val_loss"] = self.mean_loss(val, schedule.final(), cfg.seed + 1, replicas)
            if not math.isfinite(record["val_loss"]):
                raise NumericalError(f"non-finite validation loss {record['val_loss']} after epoch {epoch}, "
                                     f"step {step}")
            # before the schedules end, the trained objective is not the target one:
            # neither keep a best state nor count patience then
            improved = step >= schedule_end and record["val_loss"] < progress.best_val
            if improved:
                progress.best_val, progress.stale = record["val_loss"], 0
                progress.best_state = (
                    copy.deepcopy(self.model.state_dict()),
                    copy.deepcopy(self.guide.state_dict()),
                )
            elif step >= schedule_end:
                progress.stale += 1
            record["best_epoch"] = improved
        record["seconds"] = time.perf_counter() - started
        return record
