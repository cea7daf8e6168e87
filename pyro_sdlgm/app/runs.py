"""Run folders: train from a config, then evaluate or encode with the saved model.

A run folder holds::

    config.yaml       the resolved config (defaults filled in, input_dim set)
    metrics.jsonl     one JSON line of training metrics per epoch
    model.pt          weights-only checkpoint (SDLGM.save)
    evaluation.json   test-split metrics of the final model
    checkpoints/      training checkpoints (epoch_NNNNNN.pt), for --resume
    plots/            training_curve.png, reconstructions.png, sparsity.png
    (sdlgm inspect adds posterior.nc, inspection.json, sparsity_*.csv, count_calibration.csv
    and more plots)

``--overwrite`` deletes every one of these files an earlier run left before training, so
the folder never mixes two runs; it refuses a folder that holds anything else.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pyro_sdlgm.inference import distributed
from pyro_sdlgm.analysis import plots
from pyro_sdlgm.config import RunConfig, load_run_config, write_yaml
from pyro_sdlgm.data.unsupervised import Dataset, prepare_dataset, split_dataset
from pyro_sdlgm.inference.checkpoint import CHECKPOINT_DIR
from pyro_sdlgm.exceptions import CheckpointError, ConfigError, DataError
from pyro_sdlgm.model.registry import component_name
from pyro_sdlgm.inference.resources import cpu_threads
from pyro_sdlgm.estimators.sdlgm import SDLGM
from pyro_sdlgm.inference.run_folder import METRICS_FILE, early_stopped, restored_epoch

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
EVALUATION_FILE = "evaluation.json"
POSTERIOR_FILE = "posterior.nc"
SUMMARY_FILE = "sparsity_summary.csv"
GROUPS_FILE = "sparsity_groups.csv"
CALIBRATION_FILE = "count_calibration.csv"
INSPECTION_FILE = "inspection.json"
PREFIX_FILE = "prefix_counts.csv"
EFFECTS_FILE = "dimension_effects.csv"
PLOTS_DIR = "plots"
_OUTPUTS = (CONFIG_FILE, METRICS_FILE, MODEL_FILE, EVALUATION_FILE, POSTERIOR_FILE, SUMMARY_FILE, GROUPS_FILE,
            CALIBRATION_FILE, INSPECTION_FILE, PREFIX_FILE, EFFECTS_FILE)
#: the files a run (train, then inspect) writes: name patterns at the top, and in each folder; an
#: interrupted atomic write leaves ``.NAME.*.tmp`` (see checkpoint.atomic_write)
RUN_FILES = _OUTPUTS + tuple(f".{name}.*.tmp" for name in _OUTPUTS)
RUN_FOLDERS = {PLOTS_DIR: ("*.png",), CHECKPOINT_DIR: ("epoch_*.pt", ".epoch_*.pt.*.tmp")}


def earlier_run_files(path: Path) -> list[Path]:
    """The files an earlier run left in the folder ``path``, for ``--overwrite`` to delete.

    Raises :class:`ConfigError` naming an entry that no run writes: overwriting never
    deletes a file of the user's.
    """
    found, foreign = [], []
    for entry in sorted(path.iterdir()):
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
        if path.exists() and any(path.iterdir()):
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


def likelihood_name(config: RunConfig) -> str:
    return component_name(config.model.likelihood, "likelihood")[0]


def run_data(config: RunConfig) -> tuple[Dataset, Dataset | None]:
    """The run's train and test splits, re-derived from its data config (seeded)."""
    data = prepare_dataset(config.data, likelihood_name(config))
    return split_dataset(data, config.data.test_fraction, config.data.split_seed)


def write_plots(model: SDLGM, data: Dataset, history: list[dict] | None, run_dir: Path) -> list[Path]:
    """Training curve, reconstructions (image data) and the sparsity histogram."""
    out = []
    plot_dir = run_dir / PLOTS_DIR
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


def train_run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train the model a run config describes and fill its run folder; return a summary.

    ``resume``: continue the interrupted training in ``config.run_dir`` from its newest
    checkpoint (``config`` is the folder's own config.yaml; it is not rewritten).
    ``config.training.num_threads`` applies to the whole run (training, evaluation, plots).
    """
    with cpu_threads(config.training.num_threads):
        if config.task == "multilabel":
            return train_multilabel_run(config, overwrite=overwrite, resume=resume)
        return train_unsupervised_run(config, overwrite=overwrite, resume=resume)


def training_summary(history: list[dict], epochs: int, wall: float) -> dict[str, Any]:
    """How a fit went: seconds, epochs run, whether it stopped early and which epoch it kept."""
    return {"train_seconds": wall, "epochs_run": len(history), "early_stopped": early_stopped(history, epochs),
            "restored_epoch": restored_epoch(history)}


def train_unsupervised_run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    train, test = run_data(config)
    if config.model.input_dim is None:
        config.model.input_dim = int(train.X.shape[1])
        config.model.validate()
    elif config.model.input_dim != train.X.shape[1]:
        raise ConfigError(f"model.input_dim={config.model.input_dim} but the data {config.data.source!r} "
                          f"has {train.X.shape[1]} features")
    model = SDLGM.from_config(config.model)  # before touching the run folder: bad options fail here
    run_dir = prepare_run_dir(config.run_dir, overwrite, resume)
    if not resume and distributed.current().is_main:
        write_yaml(config.to_dict(), run_dir / CONFIG_FILE)
    started = time.perf_counter()
    history = model.fit(train.X, run_dir=run_dir, resume=resume, overwrite=True, **config.training.to_dict())
    wall = time.perf_counter() - started
    if not distributed.current().is_main:  # rank 0 alone writes the run folder
        return {"run_dir": str(run_dir), "rank": distributed.current().rank}
    model.save(run_dir / MODEL_FILE)
    evaluation_data = test if test is not None else train
    metrics = model.evaluate(evaluation_data.X)
    metrics.update(split="test" if test is not None else "train", **training_summary(history, config.training.epochs,
                                                                                    wall))
    (run_dir / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2))
    figures = write_plots(model, evaluation_data, history, run_dir)
    return {"run_dir": str(run_dir), "metrics": metrics, "plots": [str(p) for p in figures]}


def open_run(run_dir: str | Path):
    """Read a run folder's resolved config and trained model (an SDLGM or an SDLGMClassifier)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {str(run_dir)!r} does not exist")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"run folder {str(run_dir)!r} has no {name}; was training completed?")
    config = load_run_config(run_dir / CONFIG_FILE, run_folder=True)
    if config.task == "multilabel":
        from pyro_sdlgm.estimators.classifier import SDLGMClassifier

        return config, SDLGMClassifier.load(run_dir / MODEL_FILE)
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
    if config.task == "multilabel":
        train, test = multilabel_run_data(config, source)
        metrics = multilabel_metrics(model, train, test)
        metrics["data"] = source or f"{config.data.format} (test split)"
        if source is None:  # the run's own test split: refresh its evaluation file
            (Path(run_dir) / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2))
        return metrics
    data = run_eval_data(config, source)
    metrics = model.evaluate(data.X, num_samples=num_samples)
    metrics["data"] = source or f"{config.data.source} (test split)"
    return metrics


def encode_run(run_dir: str | Path, out: str | Path, source: str | None = None) -> dict[str, Any]:
    """Write the hard codes of the run's test split (or of ``source``) to ``out`` as a sparse CSR ``.npz``.

    Beside it, ``<out>_rows.npy`` holds ``(N,)`` int64: the row of the data source each code
    row encodes (the test split is a seeded subset of the source's rows).
    """
    import scipy.sparse

    config, model = open_run(run_dir)
    if config.task == "multilabel":
        raise ConfigError(f"{run_dir} is a multi-label run: use `sdlgm predict` instead of encode")
    data = run_eval_data(config, source)
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


# ----------------------------------------------------------------------------- multi-label runs


def load_multilabel(config, path: str | None = None, widths: tuple[int, int] | None = None):
    """The ``[data]`` section's file (or ``path`` in the same format) as :class:`MultiLabelData`.

    ``widths``: ``(features, labels)`` a second svmlight file must be read with (the format
    has no header); default: the config's ``num_features`` and ``num_labels``.
    """
    from pyro_sdlgm.data import multilabel as mld

    data = config.data
    if data.format == "yeast":
        if path is not None:
            raise ConfigError("data.format='yeast' is the built-in data set: it takes no other file")
        return mld.load_yeast()
    if data.format == "arff":
        return mld.load_arff(path or data.path, data.labels if isinstance(data.labels, int) else Path(data.labels))
    if data.format == "xmc":
        return mld.load_xmc(path or data.train)
    num_features, num_labels = widths or (data.num_features, config.classifier.num_labels)
    return mld.load_svmlight_multilabel(path or data.train, zero_based=data.zero_based,
                                        labels_zero_based=data.labels_zero_based,
                                        num_features=num_features, num_labels=num_labels)


def _widths(data) -> tuple[int, int]:
    return int(data.X.shape[1]), int(data.Y.shape[1])


def _check_widths(expected: tuple[int, int], other, name: str) -> None:
    if _widths(other) != expected:
        raise DataError(f"{name} has {other.X.shape[1]} features and {other.Y.shape[1]} labels; the training "
                        f"data has {expected[0]} and {expected[1]}")


def multilabel_run_data(config, source: str | None = None):
    """``(train, test)``: a separate test file, the first ``train_rows`` rows, or a seeded split.

    With ``source`` (a file in the run's format), all of it is the test part (``train`` is None),
    checked against the widths recorded at training.
    """
    data = config.data
    if source is not None:
        trained = (data.num_features, config.classifier.num_labels)
        other = load_multilabel(config, source, widths=trained if None not in trained else None)
        if None not in trained:
            _check_widths(trained, other, f"data {source!r}")
        return None, other
    full = load_multilabel(config)
    if data.test is not None:
        test = load_multilabel(config, data.test, widths=_widths(full))
        _check_widths(_widths(full), test, f"data.test {data.test!r}")
        return full, test
    if data.train_rows is not None:
        if not 1 <= data.train_rows < full.X.shape[0]:
            raise ConfigError(f"data.train_rows={data.train_rows} must leave test rows out of {full.X.shape[0]}")
        return full.rows(0, data.train_rows), full.rows(data.train_rows)
    order = np.random.default_rng(data.split_seed).permutation(full.X.shape[0])
    n_test = max(1, int(round(data.test_fraction * full.X.shape[0])))
    return full.take(np.sort(order[n_test:])), full.take(np.sort(order[:n_test]))


def multilabel_metrics(model, train, test) -> dict[str, Any]:
    from pyro_sdlgm.analysis.metrics import KS, inverse_propensities, multilabel_report

    inv = inverse_propensities(train.Y) if train is not None else None
    # ranked label indices, not (N, K) scores: evaluation stays within (batch, K) memory at wide K
    report = multilabel_report(test.Y, model.predict(test.X), top_labels=model.predict_top_labels(test.X, max(KS)),
                               predicted_counts=model.predict_count(test.X), inv_propensities=inv)
    report["num_examples"] = int(test.X.shape[0])
    return report


def train_multilabel_run(config: RunConfig, *, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    from dataclasses import asdict

    from pyro_sdlgm.estimators.classifier import SDLGMClassifier

    train, test = multilabel_run_data(config)
    options = asdict(config.classifier)
    num_labels = options.pop("num_labels")
    if num_labels is None:
        config.classifier.num_labels = num_labels = int(train.Y.shape[1])
    elif num_labels != train.Y.shape[1]:
        raise ConfigError(f"classifier.num_labels={num_labels} but the data has {train.Y.shape[1]} labels")
    config.data.num_features = int(train.X.shape[1])  # recorded, so evaluate/predict can check other files
    max_labels = options.pop("max_labels")
    model = SDLGMClassifier(num_labels, max_labels, input_dim=int(train.X.shape[1]), **options)
    run_dir = prepare_run_dir(config.run_dir, overwrite, resume)
    if not resume and distributed.current().is_main:
        write_yaml(config.to_dict(), run_dir / CONFIG_FILE)
    started = time.perf_counter()
    history = model.fit(train.X, train.Y, run_dir=run_dir, resume=resume, overwrite=True,
                        **config.training.to_dict())
    wall = time.perf_counter() - started
    if not distributed.current().is_main:  # rank 0 alone writes the run folder
        return {"run_dir": str(run_dir), "rank": distributed.current().rank}
    model.save(run_dir / MODEL_FILE)
    metrics = multilabel_metrics(model, train, test)
    metrics.update(split="test", **training_summary(history, config.training.epochs, wall))
    (run_dir / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2))
    figures = [plots.plot_training_curve(history, run_dir / PLOTS_DIR / "training_curve.png")]
    return {"run_dir": str(run_dir), "metrics": metrics, "plots": [str(p) for p in figures]}


def predict_run(run_dir: str | Path, out: str | Path, source: str | None = None) -> dict[str, Any]:
    """Write the predicted label ids of the run's test split (or of ``source``) to ``out``."""
    config, model = open_run(run_dir)
    if config.task != "multilabel":
        raise ConfigError(f"{run_dir} is an unsupervised run: use `sdlgm encode` instead of predict")
    _, data = multilabel_run_data(config, source)
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


# ----------------------------------------------------------------------------- inspect

def read_groups(groups: str | None, num_obs: int, default: np.ndarray | None) -> np.ndarray | None:
    """Group labels for ``sdlgm inspect``: ``"auto"`` (the data's own), ``"none"``, or a file.

    A file is a ``.npy`` array or a text file with one label per line; its length must
    equal the number of inspected observations.
    """
    from pyro_sdlgm.analysis.inspection import check_groups

    if groups in (None, "auto"):
        return default
    if groups == "none":
        return None
    path = Path(groups)
    if not path.is_file():
        raise DataError(f"--groups {groups!r}: no such file (or use 'auto' / 'none')")
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            raise DataError(f"--groups {groups!r}: cannot read the array ({type(err).__name__}: {err})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"--groups {groups!r}: not UTF-8 text (byte offset {err.start})") from None
        labels = np.array([line.strip() for line in text.splitlines() if line.strip()])
    return check_groups(labels, num_obs, f"groups file {groups!r}")


def inspect_run(run_dir: str | Path, source: str | None = None, groups: str | None = "auto", *,
                num_samples: int = 100, seed: int = 0, show: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write the posterior over sparsity of the run's test split (or of ``source``) into the run folder.

    Files: ``posterior.nc`` (ArviZ, netCDF), ``sparsity_summary.csv`` (one row per
    observation), ``sparsity_groups.csv`` (with groups), ``count_calibration.csv``
    (multi-label), ``inspection.json`` (the headline numbers) and plots in ``plots/``.
    Groups: ``"auto"`` uses the data's classes (unsupervised) or the true label counts
    (multi-label). ``progress``: a progress bar over the posterior draws, then a line per
    stage (on stderr). Returns the headline numbers, the tables and the written paths.
    """
    from pyro_sdlgm.analysis import inspection
    from pyro_sdlgm.analysis.posterior import check_num_samples, group

    check_num_samples(num_samples)
    config, model = open_run(run_dir)
    run_dir = Path(run_dir)
    multilabel = config.task == "multilabel"
    image_shape = None
    if multilabel:
        _, data = multilabel_run_data(config, source)
        X = data.X
        idata = model.posterior(X, data.Y, num_samples=num_samples, seed=seed, progress=progress)
        default_groups = group(idata, "observed_data")["label_count"].values  # the true label counts
    else:
        data = run_eval_data(config, source)
        X, image_shape, default_groups = data.X, data.image_shape, data.y
        idata = model.posterior(X, num_samples=num_samples, seed=seed, progress=progress)
    labels = read_groups(groups, X.shape[0], default_groups)

    _stage(progress, f"writing {POSTERIOR_FILE} and the tables")
    written = []
    posterior_path = run_dir / POSTERIOR_FILE
    posterior_path.unlink(missing_ok=True)  # netCDF writers may refuse to replace an open-able file
    idata.to_netcdf(str(posterior_path))
    written.append(posterior_path)
    summary = inspection.sparsity_summary(idata)
    summary.to_csv(run_dir / SUMMARY_FILE, index=False)
    written.append(run_dir / SUMMARY_FILE)
    marginals = group(idata, "marginals")
    probs, levels = marginals["sparsity_probs"].values, marginals["sparsity_probs"]["level"].values
    usage = inspection.dimension_usage(idata)
    result: dict[str, Any] = {
        "data": source or "test split",
        "num_examples": int(X.shape[0]),
        "num_samples": num_samples,
        "seed": seed,
        "mode_histogram": {int(level): int((summary["mode"] == level).sum()) for level in levels},
        "mean_L": float(summary["mean"].mean()),
        "sd_between": float(summary["mean"].std(ddof=0)),
        "mean_entropy": float(summary["entropy"].mean()),
        "max_entropy": float(np.log(len(levels))),
        "mean_interval_width": float((summary["upper"] - summary["lower"]).mean()),
        "mean_nnz": float(summary["mean_nnz"].mean()),
        "dead_dims": int(inspection.dead(usage).sum()),
        "always_on_dims": int(inspection.always_on(usage).sum()),
        "num_dims": int(len(usage)),
    }
    for stale in (GROUPS_FILE, CALIBRATION_FILE, PREFIX_FILE, EFFECTS_FILE):  # left by an earlier inspect
        (run_dir / stale).unlink(missing_ok=True)
    diagnosis = None
    if not multilabel:  # why rows got their counts: per-prefix reconstructions, dimension effects
        diagnosis = model.diagnose(X)
        written += _write_diagnosis(diagnosis, model.sparsity_levels, run_dir)
        result["prefix"] = diagnosis["summary"]
        result["dimension_effects"] = _effect_summary(diagnosis)
    group_table = None
    if labels is not None:
        group_table = inspection.group_summary(idata, labels)
        group_table.to_csv(run_dir / GROUPS_FILE, index=False)
        written.append(run_dir / GROUPS_FILE)
        if len(group_table) >= 2:
            result["group_difference"] = inspection.group_difference(idata, labels)
    calibration = bins = None
    if multilabel:
        calibration, bins = inspection.count_calibration(idata)
        bins.to_csv(run_dir / CALIBRATION_FILE, index=False)
        written.append(run_dir / CALIBRATION_FILE)
        result["calibration"] = calibration

    _stage(progress, "drawing the plots")
    figures = _inspection_figures(model, X, summary, probs, levels, usage, group_table, bins, calibration,
                                  image_shape, labels, multilabel, run_dir / PLOTS_DIR, show, diagnosis)
    written += figures
    (run_dir / INSPECTION_FILE).write_text(json.dumps(_finite_or_null(result), indent=2, allow_nan=False))
    written.append(run_dir / INSPECTION_FILE)
    result.update(files=[str(p) for p in written], groups=group_table)
    return result


def _stage(progress: bool, message: str) -> None:
    if progress:
        print(f"inspect: {message}", file=sys.stderr, flush=True)


def _finite_or_null(value):
    """``value`` with NaN and infinities replaced by None, so that it is valid JSON."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_diagnosis(diagnosis: dict, levels: np.ndarray, run_dir: Path) -> list[Path]:
    """``prefix_counts.csv`` (one row per count) and ``dimension_effects.csv`` (one row per dimension)."""
    import pandas as pd

    recon, kl = diagnosis["prefix_recon"], diagnosis["prefix_slot_kl"]
    pd.DataFrame({
        "level": levels, "mean_recon": recon.mean(0), "mean_slot_kl": kl.mean(0),
        "mean_recon_plus_kl": (recon + kl).mean(0),
        "rows_with_l_hat": [(diagnosis["l_hat"] == level).sum() for level in levels],
        "rows_with_best_count": [(diagnosis["best_count"] == level).sum() for level in levels],
    }).to_csv(run_dir / PREFIX_FILE, index=False)
    effect, usage = diagnosis["dimension_effect"], diagnosis["dimension_usage"]
    pd.DataFrame({"dim": np.arange(len(effect)), "effect": effect, "hard_code_usage": usage}).to_csv(
        run_dir / EFFECTS_FILE, index=False)
    return [run_dir / PREFIX_FILE, run_dir / EFFECTS_FILE]


def _effect_summary(diagnosis: dict) -> dict:
    effect, usage = diagnosis["dimension_effect"], diagnosis["dimension_usage"]
    used = usage > 0
    return {"used_dims": int(used.sum()), "num_dims": int(len(usage)),
            "median_effect_used": float(np.median(effect[used])) if used.any() else float("nan"),
            "median_effect_unused": float(np.median(effect[~used])) if (~used).any() else float("nan")}


def _inspection_figures(model, X, summary, probs, levels, usage, group_table, bins, calibration, image_shape,
                        labels, multilabel, plot_dir: Path, show: bool, diagnosis: dict | None = None) -> list[Path]:
    """The inspect plots, saved as PNG (and shown on screen with ``show``)."""
    if show:
        from matplotlib import pyplot

        figure = pyplot.figure
    else:
        def figure():
            return None  # the plot functions create a Figure outside pyplot
    plot_dir.mkdir(parents=True, exist_ok=True)
    out = []

    def save(name, draw):
        path = plot_dir / name
        draw(path, figure())
        out.append(path)

    # observations spread over the range of E[L_i]: the sparsest, the densest and between
    order = np.argsort(summary["mean"].to_numpy(), kind="stable")
    chosen = order[np.unique(np.linspace(0, len(order) - 1, min(8, len(order))).astype(int))]
    titles = [f"#{summary['obs'][i]} E[L]={summary['mean'][i]:.1f}" + (f"\ngroup {labels[i]}" if labels is not None
                                                                        else "") for i in chosen]
    inputs = X[chosen] if image_shape is not None else None
    save("sparsity_examples.png", lambda p, f: plots.plot_sparsity_examples(probs[chosen], levels, titles, inputs,
                                                                            image_shape, p, f))
    if group_table is not None:
        save("sparsity_by_group.png", lambda p, f: plots.plot_group_sparsity(group_table, p, f))
    unit = "label" if multilabel else "dimension"
    save(f"{unit}_usage.png", lambda p, f: plots.plot_dimension_usage(usage, p, f, unit=unit))
    if image_shape is not None:
        top = usage.sort_values("mean_inclusion", ascending=False, kind="stable").head(16)
        dims = top["dim"].to_numpy()
        # the mean value each dimension takes in the hard codes that use it (from the diagnosis's codes)
        values = diagnosis["dimension_value"][dims]
        effects = model.decode_dimensions(dims, values) - model.decode_dimensions(dims[:1], [0.0])
        save("dimension_images.png", lambda p, f: plots.plot_dimension_images(
            effects, dims, top["mean_inclusion"].to_numpy(), image_shape, p, f))
    if diagnosis is not None:
        save("prefix_counts.png", lambda p, f: plots.plot_prefix_diagnostics(
            model.sparsity_levels, diagnosis["prefix_recon"], diagnosis["prefix_slot_kl"], diagnosis["l_hat"],
            diagnosis["best_count"], p, f))
    if bins is not None:
        save("count_calibration.png", lambda p, f: plots.plot_count_calibration(bins, calibration, p, f))
    if show:
        pyplot.show()
    return out
