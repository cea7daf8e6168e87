"""Run folders: train from a config, then evaluate or encode with the saved model.

A run folder holds::

    config.yaml       the resolved config (defaults filled in, input_dim set)
    metrics.jsonl     one JSON line of training metrics per epoch
    model.pt          weights-only checkpoint (SDLGM.save)
    evaluation.json   test-split metrics of the final model
    checkpoints/      training checkpoints (epoch_NNNNNN.pt), for --resume (deleted after
                      training with keep = "model")
    .lock             held by the process that trains (or reads) the folder; see
                      pyro_sdlgm.inference.run_lock
    plots/            training_curve.png, reconstructions.png, sparsity.png
    (sdlgm inspect adds posterior.nc, inspection.json, sparsity_*.csv, count_calibration.csv
    and more plots)

``--overwrite`` deletes every one of these files an earlier run left before training, so
the folder never mixes two runs; it refuses a folder that holds anything else.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pyro_sdlgm.app.files import CONFIG_FILE, EVALUATION_FILE, MODEL_FILE, PLOTS_DIR, RUN_FILES, RUN_FOLDERS
from pyro_sdlgm.app.tasks import task_for
from pyro_sdlgm.app.run_config import RunConfig, load_run_config
from pyro_sdlgm.config import write_yaml
from pyro_sdlgm.exceptions import CheckpointError, ConfigError
from pyro_sdlgm.inference import distributed
from pyro_sdlgm.inference.resources import cpu_threads
from pyro_sdlgm.inference.run_lock import LOCK_FILE, run_folder_lock
from pyro_sdlgm.inference.checkpoint import CHECKPOINT_DIR, prune_checkpoints
from pyro_sdlgm.inference.run_folder import early_stopped, restored_epoch

logger = logging.getLogger(__name__)

def earlier_run_files(path: Path) -> list[Path]:
    """The files an earlier run left in the folder ``path``, for ``--overwrite`` to delete.

    Raises :class:`ConfigError` naming an entry that no run writes: overwriting never
    deletes a file of the user's.
    """
    found, foreign = [], []
    for entry in sorted(path.iterdir()):
        if entry.name == LOCK_FILE:  # held by this process; never deleted (see inference.run_lock)
            continue
        if entry.is_file() and any(fnmatch.fnmatchcase(entry.name, p) for p in RUN_FILES):
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and entry.name in RUN_FOLDERS:
            for inner in sorted(entry.iterdir()):
                patterns = RUN_FOLDERS[entry.name]
                ok = inner.is_file() and any(fnmatch.fnmatchcase(inner.name, p) for p in patterns)
                (found if ok else foreign).append(inner)
        else:
            foreign.append(entry)
    if foreign:
        raise ConfigError(f"--overwrite replaces the files of an earlier run, but {str(path)!r} also holds "
                          f"{str(foreign[0])!r}, which no run writes ({len(foreign)} such entries); move them or "
                          "choose another run folder")
    return found


def prepare_run_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Create the run folder; refuse a non-empty existing one unless ``overwrite``.

    With ``resume``, the folder must already exist (its checkpoints are continued). In a
    data-parallel run every rank checks the folder, then rank 0 alone creates it.
    """
    path = Path(path)
    replicas = distributed.current()
    if resume:
        if not path.is_dir():
            raise CheckpointError(f"cannot resume {str(path)!r}: no such run folder")
    stale: list[Path] = []
    if not resume:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run_dir {str(path)!r} exists and is not a folder")
        if path.exists() and any(entry.name != LOCK_FILE for entry in path.iterdir()):
            if not overwrite:
                raise ConfigError(f"run folder {str(path)!r} already exists and is not empty; pass --overwrite to "
                                  "replace its files")
            stale = earlier_run_files(path)
    replicas.barrier()  # no rank checks a folder that rank 0 has started writing
    if replicas.is_main:
        for old in stale:
            old.unlink(missing_ok=True)
        if stale:
            logger.info("--overwrite: deleted the %d files of the earlier run in %s", len(stale), path)
        (path / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    replicas.barrier()
    return path


TRAINING_SUMMARY_KEYS = ("train_seconds", "epochs_run", "early_stopped", "restored_epoch")


def training_summary(history: list[dict], epochs: int) -> dict[str, Any]:
    """How a fit went: seconds, epochs run, whether it stopped early and which epoch it kept.

    ``train_seconds`` is the time of the epochs (their ``seconds``, summed): the same for a run
    trained in one go and one interrupted and resumed, and unchanged by a ``--resume`` of a
    finished run."""
    return {"train_seconds": sum(record.get("seconds", 0.0) for record in history), "epochs_run": len(history),
            "early_stopped": early_stopped(history, epochs), "restored_epoch": restored_epoch(history)}


def train_run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train the model a run config describes and fill its run folder; return a summary.

    ``resume``: continue the interrupted training in ``config.run_dir`` from its newest
    checkpoint (``config`` is the folder's own config.yaml; it is not rewritten).
    ``config.training.num_threads`` applies to the whole run (training, evaluation, plots).
    """
    with cpu_threads(config.training.num_threads):
        train, test = task_for(config).splits()
        task = task_for(task_for(config).resolved(train))  # the config with the sizes the data decide
        config = task.config
        model = task.build()  # before touching the run folder: bad options fail here
        main = distributed.current().is_main
        # rank 0 holds the folder for the whole run (a check by every rank would be refused)
        with run_folder_lock(config.run_dir, purpose="sdlgm train") if main else contextlib.nullcontext():
            run_dir = prepare_run_dir(config.run_dir, overwrite, resume)
            if not resume and main:
                write_yaml(config.to_dict(), run_dir / CONFIG_FILE)
            history = task.fit(model, train, run_dir, resume)
            if not main:  # rank 0 alone writes the run folder
                return {"run_dir": str(run_dir), "rank": distributed.current().rank}
            model.save(run_dir / MODEL_FILE)
            if config.keep == "model":
                prune_checkpoints(run_dir / CHECKPOINT_DIR, 0)
            evaluated = test if test is not None else train
            metrics = task.metrics(model, train, evaluated)
            metrics.update(split="test" if test is not None else "train",
                           **training_summary(history, config.training.epochs))
            (run_dir / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2))
            figures = task.figures(model, evaluated, history, run_dir)
    return {"run_dir": str(run_dir), "metrics": metrics, "plots": [str(p) for p in figures]}


def open_run(run_dir: str | Path):
    """Read a run folder's resolved config and trained model: ``(config, task, model)``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {str(run_dir)!r} does not exist")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"run folder {str(run_dir)!r} has no {name}; was training completed?")
    config = load_run_config(run_dir / CONFIG_FILE)
    task = task_for(config)
    return config, task, task.load(run_dir / MODEL_FILE)


def eval_data(task, source: str | None):
    """``(train, data)`` for evaluate, encode, predict and inspect: the run's test split (else its
    train split), or all of ``source``, preprocessed the way the run's training data was."""
    train, test = task.splits(source)
    return train, test if test is not None else train


def evaluate_run(run_dir: str | Path, source: str | None = None, num_samples: int = 1) -> dict[str, Any]:
    config, task, model = open_run(run_dir)
    train, data = eval_data(task, source)
    metrics = task.metrics(model, train, data, num_samples)
    metrics["data"] = source or f"{task.data_name()} (test split)"
    if source is None and task.refresh_evaluation:  # the run's own test split: refresh its evaluation file
        path = Path(run_dir) / EVALUATION_FILE
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        # how training went stays recorded (train_seconds, epochs_run, ...): evaluating does not retrain
        kept = {key: earlier[key] for key in TRAINING_SUMMARY_KEYS + ("split",) if key in earlier}
        path.write_text(json.dumps({**metrics, **kept}, indent=2))
    return metrics


def encode_run(run_dir: str | Path, out: str | Path, source: str | None = None) -> dict[str, Any]:
    """Write the hard codes of the run's test split (or of ``source``) to ``out`` as a sparse CSR ``.npz``.

    Beside it, ``<out>_rows.npy`` holds ``(N,)`` int64: the row of the data source each code
    row encodes (the test split is a seeded subset of the source's rows).
    """
    import scipy.sparse

    config, task, model = open_run(run_dir)
    task.check_command("encode", run_dir)
    _, data = eval_data(task, source)
    codes = model.encode(data.X, sparse=True)
    out = Path(out)
    if out.suffix != ".npz":  # scipy.sparse.save_npz appends it; name the file it writes
        out = out.with_name(out.name + ".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    scipy.sparse.save_npz(out, codes)
    rows_out = out.with_name(out.stem + "_rows.npy")
    np.save(rows_out, data.source_rows(), allow_pickle=False)
    nnz = np.diff(codes.indptr)
    return {"out": str(out), "rows_out": str(rows_out), "source": source or config.data.source,
            "shape": list(codes.shape), "mean_nnz": float(nnz.mean()), "max_nnz": int(nnz.max())}


def predict_run(run_dir: str | Path, out: str | Path, source: str | None = None) -> dict[str, Any]:
    """Write the predicted label ids of the run's test split (or of ``source``) to ``out``."""
    _, task, model = open_run(run_dir)
    task.check_command("predict", run_dir)
    _, data = eval_data(task, source)
    predicted = model.predict(data.X)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for row in range(predicted.shape[0]):
            handle.write(" ".join(str(i) for i in predicted.indices[predicted.indptr[row]:predicted.indptr[row + 1]]) + "\n")
    counts = np.diff(predicted.indptr)
    return {"out": str(out), "rows": int(predicted.shape[0]), "mean_labels": float(counts.mean())}
