"""A run folder's training side: the metrics file, the training state a checkpoint holds, writing
and restoring it, and the rules for resuming (same config, model and data).

With a run folder the trainer writes a weights-only checkpoint every ``checkpoint_every``
epochs and at the end (``run_dir/checkpoints/epoch_NNNNNN.pt``, atomically, the newest
``keep_checkpoints`` kept) holding everything the loop needs to continue bit for bit: model,
guide and optimizer state, step and epoch, the schedule values, the RNG states and the
batch-order generator, the early-stopping state and the history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_sdlgm.config import TrainConfig
from pyro_sdlgm.exceptions import CheckpointError, ConfigError
from pyro_sdlgm.inference.checkpoint import (
    CHECKPOINT_DIR,
    TRAINING_FORMAT,
    TRAINING_VERSION,
    atomic_save,
    check_format_version,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    set_rng_state,
    to_cpu,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# options that may differ between a checkpoint and the run resuming from it
# (the remedies that NumericalError and ResourceError suggest among them)
# (and pyro_validation, num_threads, count_estimate and encoding, which change no training step, nor the
# classifier's ranking, decision and calibrate_count, which act after training)
RESUME_IGNORED = ("progress", "checkpoint_every", "keep_checkpoints", "nan_policy", "memory_limit_gb",
                  "pyro_validation", "num_threads", "count_estimate", "encoding", "ranking", "decision", "calibrate_count")


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


def config_differences(saved: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"key: A in the checkpoint, B now"`` for each dotted key whose value differs (a key on one
    side only differs: it is None on the other)."""
    saved, current = _flat("", saved), _flat("", current)
    return [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(saved) | set(current))
        if key.split(".")[-1] not in ignore and saved.get(key) != current.get(key)
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
    return best[-1] if best else None


def early_stopped(history: list[dict], epochs: int) -> bool:
    return len(history) < epochs


@dataclasses.dataclass
class TrainingState:
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


def save_training_checkpoint(folder: Path, progress: TrainingState, model, guide, optimizer, generator, schedule,
                             config: TrainConfig, identity: dict, fingerprint: dict, cuda: bool) -> Path:
    """Write the loop's state after ``progress.epoch`` epochs; keep the newest ``keep_checkpoints``.

    Contents (all plain containers, numbers, strings and tensors): ``format``,
    ``format_version``, ``epoch`` (completed), ``step``, ``finished``, ``train_config``,
    ``identity`` (model/classifier options), ``data`` (shapes and digest),
    ``model_state``, ``guide_state``, ``optimizer_state``, ``schedule`` (values at the
    last step), ``rng`` (torch, cuda, numpy, python and ``batch_order`` generator
    states), ``early_stopping`` (``best_val``, ``best_model_state``,
    ``best_guide_state``, ``stale``), ``history`` (its records' ``epoch`` counted from 1, which
    ``history_epochs_from`` says) and ``revive_every_resolved`` (the run's
    revival period with ``"auto"`` resolved, so that a resumed run keeps it).
    """
    best = progress.best_state
    state = {
        "format": TRAINING_FORMAT,
        "format_version": TRAINING_VERSION,
        "epoch": progress.epoch,
        "step": progress.step,
        "finished": progress.finished,
        "train_config": config.to_dict(),
        "identity": identity,
        "data": fingerprint,
        "model_state": to_cpu(model.state_dict()),
        "guide_state": to_cpu(guide.state_dict()),
        "optimizer_state": to_cpu(optimizer.state_dict()),
        "schedule": {k: float(v) for k, v in schedule(max(progress.step - 1, 0)).items()},
        "rng": {**rng_state(cuda=cuda), "batch_order": generator.get_state()},
        "early_stopping": {
            "best_val": progress.best_val,
            "best_model_state": None if best is None else to_cpu(best[0]),
            "best_guide_state": None if best is None else to_cpu(best[1]),
            "stale": progress.stale,
        },
        "history": progress.history,
        "history_epochs_from": 1,
        "revive_every_resolved": progress.revive_every,
    }
    path = checkpoint_path(folder, progress.epoch)
    atomic_save(state, path)
    prune_checkpoints(folder, config.keep_checkpoints)
    logger.info("checkpoint after epoch %d: %s", progress.epoch, path)
    return path

def restore_training_checkpoint(run_dir: Path, model, guide, optimizer, generator, config: TrainConfig,
                                identity: dict, fingerprint: dict) -> TrainingState:
    """Load the newest checkpoint of ``run_dir`` into the model, guide, optimizer and RNGs, after
    checking that ``config``, ``identity`` and the data ``fingerprint`` match it."""
    path = latest_checkpoint(run_dir)
    data = load_checkpoint(path, TRAINING_FORMAT, (
        "format_version", "epoch", "step", "finished", "train_config", "identity", "data", "model_state",
        "guide_state", "optimizer_state", "rng", "early_stopping", "history"))
    check_format_version(data, path, TRAINING_VERSION)
    revive_every = data.get("revive_every_resolved")
    history = list(data["history"])
    if data.get("history_epochs_from", 0) == 0:  # pyro_sdlgm 0.2.0 counted the records' epochs from 0
        history = [{**record, "epoch": record["epoch"] + 1} for record in history]
    differences = config_differences({"training": data["train_config"], **data["identity"]},
                                     {"training": config.to_dict(), **identity}, RESUME_IGNORED)
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
        restored = TrainingState(epoch=int(data["epoch"]), step=int(data["step"]), history=history,
                             best_val=float(early["best_val"]), best_state=best, stale=int(early["stale"]),
                             finished=bool(data["finished"]), last_checkpoint=path,
                             revive_every=None if revive_every is None else int(revive_every))
        model.load_state_dict(data["model_state"])
        guide.load_state_dict(data["guide_state"])
        optimizer.load_state_dict(data["optimizer_state"])
        generator.set_state(data["rng"]["batch_order"])
        set_rng_state(data["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match the model being resumed: {err}") from None
    logger.info("resuming from %s (epoch %d, step %d)", path, restored.epoch, restored.step)
    return restored
