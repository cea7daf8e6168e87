"""What a run folder's task decides: its data, its estimator, its metrics, its figures and its
posterior for ``sdlgm inspect``. :mod:`pyro_sdlgm.app.runs` is one pipeline over these objects.

``task = "unsupervised"`` (:class:`UnsupervisedTask`): an :class:`~pyro_sdlgm.SDLGM` on a
``[data]`` source; ``task = "multilabel"`` (:class:`MultiLabelTask`): an
:class:`~pyro_sdlgm.SDLGMClassifier` on a multi-label file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pyro_sdlgm._optional import optional_import
from pyro_sdlgm.analysis import plots
from pyro_sdlgm.app.files import EFFECTS_FILE, PLOTS_DIR, PREFIX_FILE, SELF_CHECK_FILE
from pyro_sdlgm.app.run_config import RunConfig
from pyro_sdlgm.exceptions import ConfigError
from pyro_sdlgm.model.registry import component_name


class Task:
    """One task's parts of the run pipeline (a subclass per ``config.task``)."""

    #: the CLI command that writes this task's outputs for new data ("encode" or "predict")
    output_command: ClassVar[str]
    #: how messages name a run of this task
    kind: ClassVar[str]
    #: whether ``sdlgm evaluate`` on the run's own test split rewrites ``evaluation.json``
    refresh_evaluation: ClassVar[bool] = False
    #: what ``sdlgm inspect`` calls a dimension of the code
    unit: ClassVar[str] = "dimension"

    def __init__(self, config: RunConfig):
        self.config = config

    def splits(self, source: str | None = None) -> tuple[Any, Any]:
        """``(train, test)`` of the run (``test`` may be None); with ``source``, ``(None, all of it)``."""
        raise NotImplementedError

    def resolved(self, train) -> RunConfig:
        """A copy of the config with the sizes ``train`` decides filled in (what ``config.yaml`` records);
        :class:`ConfigError` when a size given in the config disagrees with the data."""
        raise NotImplementedError

    def build(self):
        """The estimator of the (resolved) config."""
        raise NotImplementedError

    def fit(self, model, train, run_dir: Path, resume: bool) -> list[dict]:
        raise NotImplementedError

    def load(self, path: Path):
        raise NotImplementedError

    def metrics(self, model, train, test, num_samples: int = 1) -> dict[str, Any]:
        """Metrics of ``model`` on ``test`` (``train`` for the multi-label propensities)."""
        raise NotImplementedError

    def figures(self, model, data, history: list[dict] | None, run_dir: Path) -> list[Path]:
        return [plots.plot_training_curve(history, run_dir / PLOTS_DIR / "training_curve.png")] if history else []

    def posterior(self, model, data, num_samples: int, seed: int, progress: bool):
        """``(idata, X, image_shape, default_groups)`` for ``sdlgm inspect``."""
        raise NotImplementedError

    def data_name(self) -> str:
        """The run's data, as evaluation results name it."""
        raise NotImplementedError

    def inspect_extras(self, model, X, idata, run_dir: Path) -> dict[str, Any]:
        """What ``sdlgm inspect`` adds for this task: ``{"files": [...], "result": {...}, **for the plots}``."""
        return {"files": [], "result": {}}

    def check_command(self, command: str, run_dir) -> None:
        """Refuse ``sdlgm encode`` on a multi-label run and ``sdlgm predict`` on an unsupervised one."""
        if command != self.output_command:
            raise ConfigError(f"{run_dir} is {self.kind} run: use `sdlgm {self.output_command}` instead of {command}")


class UnsupervisedTask(Task):
    output_command = "encode"
    kind = "an unsupervised"

    def data_name(self) -> str:
        return self.config.data.source

    def inspect_extras(self, model, X, idata, run_dir):
        """Why rows got their counts (per-prefix reconstructions and dimension effects), and whether
        ``q(L|x)`` finds the counts of the model's own draws: from the inspected rows' codes, and
        from the prior (as many rows)."""
        from pyro_sdlgm.analysis.inspection import count_self_check

        pd = optional_import("pandas", "sdlgm inspect")
        diagnosis = model.diagnose(X)
        files = write_diagnosis(diagnosis, model.sparsity_levels, run_dir)
        checks = {source: count_self_check(model, X if source == "codes" else None, num_rows=X.shape[0], seed=0)
                  for source in ("codes", "prior")}
        pd.concat([bins.assign(source=source) for source, (_, bins) in checks.items()]).to_csv(
            run_dir / SELF_CHECK_FILE, index=False)
        return {"files": files + [run_dir / SELF_CHECK_FILE], "diagnosis": diagnosis, "self_check": checks,
                "result": {"prefix": diagnosis["summary"], "dimension_effects": effect_summary(diagnosis),
                           "count_self_check": {source: metrics for source, (metrics, _) in checks.items()}}}

    def _likelihood(self) -> str:
        return component_name(self.config.model.likelihood, "likelihood")[0]

    def splits(self, source=None):
        from pyro_sdlgm.data.unsupervised import prepare_dataset, split_dataset

        data_config = self.config.data
        if source is not None:  # all of source, preprocessed the way the run's training data was
            return None, prepare_dataset(dataclasses.replace(data_config, source=source, max_examples=None),
                                         self._likelihood())
        data = prepare_dataset(data_config, self._likelihood())
        return split_dataset(data, data_config.test_fraction, data_config.split_seed)

    def resolved(self, train):
        model_config = self.config.model
        if model_config.input_dim is None:
            model_config = dataclasses.replace(model_config, input_dim=int(train.X.shape[1]))  # validated anew
        elif model_config.input_dim != train.X.shape[1]:
            raise ConfigError(f"model.input_dim={model_config.input_dim} but the data {self.config.data.source!r} "
                              f"has {train.X.shape[1]} features")
        return dataclasses.replace(self.config, model=model_config)

    def build(self):
        from pyro_sdlgm.estimators.sdlgm import SDLGM

        return SDLGM.from_config(self.config.model)

    def fit(self, model, train, run_dir, resume):
        return model.fit(train.X, run_dir=run_dir, resume=resume, overwrite=True,
                         **self.config.training.to_dict()).history_

    def load(self, path):
        from pyro_sdlgm.estimators.sdlgm import SDLGM

        return SDLGM.load(path)

    def metrics(self, model, train, test, num_samples=1):
        return model.evaluate(test.X, num_samples=num_samples)

    def figures(self, model, data, history, run_dir):
        """Training curve, reconstructions (image data) and the sparsity histogram."""
        out = super().figures(model, data, history, run_dir)
        plot_dir = run_dir / PLOTS_DIR
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

    def posterior(self, model, data, num_samples, seed, progress):
        idata = model.posterior(data.X, num_samples=num_samples, seed=seed, progress=progress)
        return idata, data.X, data.image_shape, data.y


class MultiLabelTask(Task):
    output_command = "predict"
    kind = "a multi-label"
    refresh_evaluation = True
    unit = "label"

    def data_name(self) -> str:
        return self.config.data.format

    def inspect_extras(self, model, X, idata, run_dir):
        """The calibration of the predicted counts against the true ones."""
        from pyro_sdlgm.analysis import inspection
        from pyro_sdlgm.app.files import CALIBRATION_FILE

        calibration, bins = inspection.count_calibration(idata)
        bins.to_csv(run_dir / CALIBRATION_FILE, index=False)
        return {"files": [run_dir / CALIBRATION_FILE], "calibration": calibration, "bins": bins,
                "result": {"calibration": calibration}}

    def splits(self, source=None):
        from pyro_sdlgm.data.multilabel import configured_splits

        return configured_splits(self.config.data, self.config.classifier.num_labels, source)

    def resolved(self, train):
        classifier = self.config.classifier
        if classifier.num_labels is None:
            classifier = dataclasses.replace(classifier, num_labels=int(train.Y.shape[1]))
        elif classifier.num_labels != train.Y.shape[1]:
            raise ConfigError(f"classifier.num_labels={classifier.num_labels} but the data has {train.Y.shape[1]} "
                              "labels")
        # the feature count is recorded, so that evaluate and predict can check other files
        data = dataclasses.replace(self.config.data, num_features=int(train.X.shape[1]))
        return dataclasses.replace(self.config, classifier=classifier, data=data)

    def build(self):
        from pyro_sdlgm.estimators.classifier import SDLGMClassifier

        options = dataclasses.asdict(self.config.classifier)
        return SDLGMClassifier(**{**options, "input_dim": self.config.data.num_features or options["input_dim"]})

    def fit(self, model, train, run_dir, resume):
        return model.fit(train.X, train.Y, run_dir=run_dir, resume=resume, overwrite=True,
                         **self.config.training.to_dict()).history_

    def load(self, path):
        from pyro_sdlgm.estimators.classifier import SDLGMClassifier

        return SDLGMClassifier.load(path)

    def metrics(self, model, train, test, num_samples=1):
        from pyro_sdlgm.analysis.metrics import KS, inverse_propensities, multilabel_report

        inv = inverse_propensities(train.Y) if train is not None else None
        # ranked label indices, not (N, K) scores: evaluation stays within (batch, K) memory at wide K
        report = multilabel_report(test.Y, model.predict(test.X), top_labels=model.predict_top_labels(test.X, max(KS)),
                                   predicted_counts=model.predict_count(test.X), inv_propensities=inv)
        report["num_examples"] = int(test.X.shape[0])
        return report

    def posterior(self, model, data, num_samples, seed, progress):
        from pyro_sdlgm.analysis.posterior import group

        idata = model.posterior(data.X, data.Y, num_samples=num_samples, seed=seed, progress=progress)
        return idata, data.X, None, group(idata, "observed_data")["label_count"].values  # the true label counts


TASKS: dict[str, type[Task]] = {"unsupervised": UnsupervisedTask, "multilabel": MultiLabelTask}


def task_for(config: RunConfig) -> Task:
    """The task object of ``config.task``."""
    return TASKS[config.task](config)


def write_diagnosis(diagnosis: dict, levels: np.ndarray, run_dir: Path) -> list[Path]:
    """``prefix_counts.csv`` (one row per count) and ``dimension_effects.csv`` (one row per dimension)."""
    pd = optional_import("pandas", "sdlgm inspect")

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


def effect_summary(diagnosis: dict) -> dict:
    effect, usage = diagnosis["dimension_effect"], diagnosis["dimension_usage"]
    used = usage > 0
    # None (JSON null) where a group is empty: the median of no dimension is not a number
    return {"used_dims": int(used.sum()), "num_dims": int(len(usage)),
            "median_effect_used": float(np.median(effect[used])) if used.any() else None,
            "median_effect_unused": float(np.median(effect[~used])) if (~used).any() else None}
