"""Run folders: train from a config, then evaluate or encode with the saved model.

A run folder holds::

    config.yaml       the resolved config (defaults filled in, input_dim set)
    metrics.jsonl     one JSON line of training metrics per epoch
    model.pt          weights-only checkpoint (SDLGM.save)
    evaluation.json   test-split metrics of the final model
    plots/            training_curve.png, reconstructions.png, sparsity.png
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .config import RunConfig, load_run_config, write_yaml
from .datasets import Dataset, prepare_dataset, split_dataset
from .exceptions import CheckpointError, ConfigError
from .registry import component_name
from .sdlgm import SDLGM

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Create the run folder; refuse a non-empty existing one unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir {str(path)!r} exists and is not a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"run folder {str(path)!r} already exists and is not empty; pass --overwrite to replace its files")
    path.mkdir(parents=True, exist_ok=True)
    (path / "plots").mkdir(exist_ok=True)
    return path


def likelihood_name(config: RunConfig) -> str:
    return component_name(config.model.likelihood, "likelihood")[0]


def run_data(config: RunConfig) -> tuple[Dataset, Dataset | None]:
    """The run's train and test splits, re-derived from its data config (seeded)."""
    data = prepare_dataset(config.data, likelihood_name(config))
    return split_dataset(data, config.data.test_fraction, config.data.split_seed)


def write_plots(model: SDLGM, data: Dataset, history: list[dict] | None, run_dir: Path) -> list[Path]:
    """Training curve, reconstructions (image data) and the sparsity histogram."""
    out = []
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    if history:
        out.append(plots.plot_training_curve(history, plot_dir / "training_curve.png"))
    sample = data.X[: min(len(data.X), 2000)]
    counts = model.predict_sparsity(sample)
    if data.image_shape is not None:
        # evenly spaced rows: data sets are often sorted by class
        rows = np.unique(np.linspace(0, len(sample) - 1, 10).astype(int))
        out.append(plots.plot_reconstructions(sample[rows], model.reconstruct(sample[rows]), data.image_shape,
                                              plot_dir / "reconstructions.png", counts[rows]))
    nnz = (model.encode(sample) != 0).sum(1)
    out.append(plots.plot_sparsity(model.sparsity_levels, nnz, model.sparsity_posterior(sample).mean(0),
                                   plot_dir / "sparsity.png"))
    return out


def train_run(config: RunConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Train the model a run config describes and fill its run folder; return a summary."""
    train, test = run_data(config)
    if config.model.input_dim is None:
        config.model.input_dim = int(train.X.shape[1])
        config.model.validate()
    elif config.model.input_dim != train.X.shape[1]:
        raise ConfigError(f"model.input_dim={config.model.input_dim} but the data {config.data.source!r} "
                          f"has {train.X.shape[1]} features")
    model = SDLGM.from_config(config.model)  # before touching the run folder: bad options fail here
    run_dir = prepare_run_dir(config.run_dir, overwrite)
    write_yaml(config.to_dict(), run_dir / CONFIG_FILE)
    started = time.perf_counter()
    history = model.fit(train.X, run_dir=run_dir, **config.training.to_dict())
    wall = time.perf_counter() - started
    model.save(run_dir / MODEL_FILE)
    evaluation_data = test if test is not None else train
    metrics = model.evaluate(evaluation_data.X)
    metrics.update(split="test" if test is not None else "train", train_seconds=wall, epochs_run=len(history))
    (run_dir / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2))
    figures = write_plots(model, evaluation_data, history, run_dir)
    return {"run_dir": str(run_dir), "metrics": metrics, "plots": [str(p) for p in figures]}


def open_run(run_dir: str | Path) -> tuple[RunConfig, SDLGM]:
    """Read a run folder's resolved config and trained model."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {str(run_dir)!r} does not exist")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"run folder {str(run_dir)!r} has no {name}; was training completed?")
    config = load_run_config(run_dir / CONFIG_FILE)
    return config, SDLGM.load(run_dir / MODEL_FILE)


def run_eval_data(config: RunConfig, source: str | None) -> Dataset:
    """Data for evaluate/encode: the run's test split (else train split), or all of ``source``,
    preprocessed the way the run's training data was."""
    if source is None:
        train, test = run_data(config)
        return test if test is not None else train
    from dataclasses import replace

    return prepare_dataset(replace(config.data, source=source, max_examples=None), likelihood_name(config))


def evaluate_run(run_dir: str | Path, source: str | None = None, num_samples: int = 1) -> dict[str, Any]:
    config, model = open_run(run_dir)
    data = run_eval_data(config, source)
    metrics = model.evaluate(data.X, num_samples=num_samples)
    metrics["data"] = source or f"{config.data.source} (test split)"
    return metrics


def encode_run(run_dir: str | Path, out: str | Path, source: str | None = None) -> dict[str, Any]:
    """Write the hard codes of the run's test split (or of ``source``) to ``out`` as a sparse CSR ``.npz``."""
    import scipy.sparse

    config, model = open_run(run_dir)
    data = run_eval_data(config, source)
    codes = model.encode(data.X, sparse=True)
    out = Path(out)
    if out.suffix != ".npz":  # scipy.sparse.save_npz appends it; name the file it writes
        out = out.with_name(out.name + ".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    scipy.sparse.save_npz(out, codes)
    nnz = np.diff(codes.indptr)
    return {"out": str(out), "shape": list(codes.shape), "mean_nnz": float(nnz.mean()), "max_nnz": int(nnz.max())}
