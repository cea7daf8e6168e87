"""Multi-label suite: SDLGMClassifier against one-vs-rest logistic regression, napkinXC and an MLP.

    python -m experiments.multilabel_suite                          # config: multilabel_suite.toml
    python -m experiments.multilabel_suite --datasets yeast --seeds 0 --jobs 1 --threads 1
    python -m experiments.multilabel_suite --datasets bibtex --bibtex PATH/TO/bibtex-folder
    python -m experiments.multilabel_suite --arff data.arff --labels 14 --train-rows 1500
    python -m experiments.multilabel_suite --xmc Bibtex/train.txt Bibtex/test.txt --name bibtex_xmc
    python -m experiments.multilabel_suite --smoke                  # tiny, in this process, for the tests

Methods (the ``method`` column):

- ``sdlgm``: SDLGMClassifier with the library's defaults and the config's ``classifier``
  section (the set bound, shared slots, dropout, inclusion ranking, calibrated count); its
  label sets are ``predict``'s (the F1-optimal sets) and its count ``predict_count``'s.
- ``sdlgm_count``: the same model's top-``L_hat`` labels (``decision="count"``).
- ``sdlgm_elbo``: the defaults before the set bound (the label-aware guide's ELBO, per-slot
  logits, hidden (256,), no dropout, greedy ranking, top-``L_hat`` labels, uncalibrated count), with the
  config's ``elbo`` section; the next three start from it.
- ``sdlgm_enumerate``: the same with ``sparsity_inference="enumerate", objective="relaxed"``.
- ``sdlgm_shared``: the same with ``per_slot=False`` (one slot logit vector shared by the
  slots), still over all ``K`` labels: the full-mode reference of the shortlist.
- ``sdlgm_shortlist``: ``per_slot=False`` and ``num_candidates = min(f * max_labels, K)``
  (the shortlist mode; ``f`` is ``[sdlgm_shortlist] candidates_per_max_label``, 4).
- ``logistic_topk`` / ``logistic_threshold`` / ``logistic_oracle``: one-vs-rest logistic
  regression (lbfgs, deterministic: the seed changes nothing) predicting its top-k labels
  with k the training mean count (rounded), its labels with probability above 0.5, and,
  for reference only (``oracle`` = 1), its top labels with each test row's true count.
- ``napkinxc_br`` / ``napkinxc_plt``: napkinXC binary relevance and probabilistic label
  tree (seeded), top-k; skipped with a warning when napkinXC is not installed.
- ``mlp_topk`` / ``mlp_threshold``: an MLP with SDLGM's hidden sizes and activation,
  sigmoid outputs and binary cross-entropy, trained by Adam with SDLGM's learning rate,
  batch size, epochs, patience and validation split; top-k as above, or one global
  threshold tuned on the validation split for example-F1.
- ``mlp_dropout_topk`` / ``mlp_dropout_threshold``: the same MLP with SDLGM's dropout rate.

SDLGM rows also report ``count_ece`` and ``count_nll``: the top-label ECE and the NLL of the
true count under the classifier's count distribution.

Each method trains in a fresh spawned process (``--jobs N`` at a time, ``--threads T``
threads each; ``--jobs 0``: in this process, without clean memory figures), which reports
the wall time of training (``train_seconds``) and the increase of the process's peak
resident memory during training (``train_peak_mb``, sampled from ``/proc``). The data
are loaded and split once, in this process, and handed to the runs as ``.npz`` files, so
that parsing a file adds nothing to a run's peak. PSP@k uses the training labels'
propensities.

Writes to ``--out`` (default ``experiments/results``): ``multilabel_<data>.csv`` (one row per
method and seed, naming the config file), ``multilabel_<data>_summary.csv`` (mean and
standard deviation, ddof=1, over seeds) and ``multilabel_<data>.png`` (P@1 and example-F1
per method, with error bars); ``_smoke`` is added to the names with ``--smoke``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from experiments.suite_common import PeakMemory, mean_and_std, run_pool, write_csv

HERE = Path(__file__).resolve().parent

DEFAULT_BIBTEX = HERE.parent.parent / "shared" / "data" / "bibtex"

METHODS = ("sdlgm", "sdlgm_count", "sdlgm_elbo", "sdlgm_enumerate", "sdlgm_shared", "sdlgm_shortlist",
           "logistic_topk", "logistic_threshold", "logistic_oracle", "napkinxc_br", "napkinxc_plt", "mlp_topk",
           "mlp_threshold", "mlp_dropout_topk", "mlp_dropout_threshold")
# one training gives the rows of several methods: the runs are per trainer
TRAINERS = {"sdlgm": ("sdlgm", "sdlgm_count"), "sdlgm_elbo": ("sdlgm_elbo",), "sdlgm_enumerate": ("sdlgm_enumerate",),
            "sdlgm_shared": ("sdlgm_shared",),
            "sdlgm_shortlist": ("sdlgm_shortlist",),
            "logistic": ("logistic_topk", "logistic_threshold", "logistic_oracle"),
            "napkinxc_br": ("napkinxc_br",), "napkinxc_plt": ("napkinxc_plt",), "mlp": ("mlp_topk", "mlp_threshold"),
            "mlp_dropout": ("mlp_dropout_topk", "mlp_dropout_threshold")}
REPORT = ["p@1", "p@3", "p@5", "ndcg@1", "ndcg@3", "ndcg@5", "psp@1", "psp@3", "psp@5", "example_f1", "micro_f1",
          "macro_f1", "hamming_loss", "subset_accuracy", "count_accuracy", "count_mae", "mean_predicted_labels",
          "count_ece", "count_nll"]
METRICS = REPORT + ["epochs", "train_seconds", "train_peak_mb"]
COLUMNS = ["dataset", "method", "seed", "oracle", "decision", "config"] + METRICS

logger = logging.getLogger("multilabel_suite")


# ----------------------------------------------------------------------------- data


def settings_for(config: dict, dataset: str, smoke: bool) -> dict:
    """The dataset's config section (or ``[default]``), with the ``[baselines]`` and, with
    ``smoke``, the ``[smoke]`` options applied."""
    section = copy.deepcopy(config.get(dataset, config.get("default", {})))
    section.setdefault("classifier", {})
    section.setdefault("fit", {})
    section["baselines"] = dict(config.get("baselines", {}))
    section["shortlist"] = dict(config.get("sdlgm_shortlist", {}))
    if smoke:
        smoke_settings = config.get("smoke", {})
        section["fit"]["epochs"] = smoke_settings.get("epochs", 1)
        if "logistic_max_iter" in smoke_settings:
            section["baselines"]["logistic_max_iter"] = smoke_settings["logistic_max_iter"]
    return section


def load_dataset(source: dict):
    """``(train, test)`` :class:`MultiLabelData` of a source: ``{"kind": "yeast" | "bibtex" |
    "arff" | "xmc", ...}`` with the paths, split with the dataset's settings."""
    from pyro_sdlgm.data.multilabel import load_arff, load_xmc, load_yeast

    kind, settings = source["kind"], source["settings"]
    if kind == "xmc":
        train, test = load_xmc(source["train"]), load_xmc(source["test"])
        if train.X.shape[1] != test.X.shape[1] or train.Y.shape[1] != test.Y.shape[1]:
            raise SystemExit(f"--xmc: {source['train']} has {train.X.shape[1]} features and {train.Y.shape[1]} labels "
                             f"but {source['test']} has {test.X.shape[1]} and {test.Y.shape[1]}")
        return train, test
    if kind == "yeast":
        data = load_yeast()
    elif kind == "bibtex":
        data = load_arff(source["path"] / "bibtex.arff", source["path"] / "bibtex.xml")
    else:
        data = load_arff(source["path"], source["labels"])
    if settings.get("train_rows") is not None:
        cut = int(settings["train_rows"])
        if not 1 <= cut < data.X.shape[0]:
            raise SystemExit(f"train_rows = {cut} but {data.name} has {data.X.shape[0]} rows")
        return data.rows(0, cut), data.rows(cut)
    order = np.random.default_rng(settings.get("split_seed", 0)).permutation(data.X.shape[0])
    n_test = round(settings.get("test_fraction", 0.3) * data.X.shape[0])
    return data.take(np.sort(order[n_test:])), data.take(np.sort(order[:n_test]))


def save_split(train, test, folder: Path) -> None:
    """The split as ``.npz`` files, read by the runs."""
    import scipy.sparse

    folder.mkdir(parents=True, exist_ok=True)
    for part, data in (("train", train), ("test", test)):
        scipy.sparse.save_npz(folder / f"X_{part}.npz", data.X.tocsr())
        scipy.sparse.save_npz(folder / f"Y_{part}.npz", data.Y.tocsr())


def read_split(folder: Path):
    """``(X_train, Y_train, X_test, Y_test)``: CSR matrices saved by :func:`save_split`."""
    import scipy.sparse

    return tuple(scipy.sparse.load_npz(Path(folder) / f"{m}_{p}.npz").tocsr()
                 for p in ("train", "test") for m in ("X", "Y"))


# ----------------------------------------------------------------------------- helpers


def top_k_sets(scores: np.ndarray, counts: np.ndarray):
    """0/1 CSR matrix of each row's ``counts[i]`` best-scored labels."""
    import scipy.sparse

    from pyro_sdlgm.analysis.metrics import top_k

    counts = np.asarray(counts, dtype=np.int64)
    ranked = top_k(scores, int(max(counts.max(), 1)))
    rows = np.repeat(np.arange(len(counts)), counts)
    cols = np.concatenate([ranked[i, :c] for i, c in enumerate(counts)]) if counts.sum() else np.zeros(0, int)
    return scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=scores.shape)


def threshold_grid(baselines: dict) -> np.ndarray:
    start, stop, step = baselines.get("threshold_grid", [0.05, 0.95, 0.05])
    return np.round(np.arange(start, stop + step / 2, step), 6)


def tune_threshold(Y_val, probs: np.ndarray, grid: np.ndarray) -> float:
    """The global threshold of ``grid`` with the best example-F1 on ``(Y_val, probs)`` (ties: the lowest)."""
    from sklearn.metrics import f1_score

    truth = np.asarray(Y_val.todense() if hasattr(Y_val, "todense") else Y_val).astype(np.int8)
    values = [f1_score(truth, (probs > t).astype(np.int8), average="samples", zero_division=1) for t in grid]
    return float(grid[int(np.argmax(values))])


# ----------------------------------------------------------------------------- trainers
# each returns (predictions, fit_state): ``train`` runs between the memory/time marks,
# ``predict`` after them


ELBO_VARIANTS = ("sdlgm_elbo", "sdlgm_enumerate", "sdlgm_shared", "sdlgm_shortlist")
#: the classifier's defaults before the set bound: the ELBO variants start from these
ELBO_DEFAULTS = {"fit_objective": "elbo", "per_slot": True, "hidden": [256], "dropout": 0.0, "ranking": "greedy",
                 "decision": "count", "calibrate_count": False}


def sdlgm_options(settings: dict, variant: str, num_labels: int) -> dict:
    """``SDLGMClassifier`` arguments of an SDLGM method on ``num_labels`` labels: ``"sdlgm"`` (the
    config's ``classifier`` section over the library defaults) or an ELBO variant (``"sdlgm_elbo"``:
    the defaults before the set bound, with the ``elbo`` section; ``"sdlgm_enumerate"``,
    ``"sdlgm_shared"`` and ``"sdlgm_shortlist"`` change it as the module docstring says)."""
    options = dict(settings["classifier"])
    if variant in ELBO_VARIANTS:
        options.update(ELBO_DEFAULTS, **settings.get("elbo", {}))
    if options.get("max_labels") is not None:
        options["max_labels"] = min(int(options["max_labels"]), num_labels)
    if variant == "sdlgm_enumerate":
        options.update(sparsity_inference="enumerate", objective="relaxed")
    elif variant == "sdlgm_shared":
        options.update(per_slot=False)
    elif variant == "sdlgm_shortlist":
        factor = int(settings.get("shortlist", {}).get("candidates_per_max_label", 4))
        options.update(per_slot=False, num_candidates=min(factor * int(options.get("max_labels", 10)), num_labels))
    return options


def train_sdlgm(X, Y, settings: dict, seed: int, variant: str):
    from pyro_sdlgm.estimators.classifier import SDLGMClassifier

    options = sdlgm_options(settings, variant, Y.shape[1])
    fit = dict(settings["fit"], seed=seed, progress=False)
    fit.setdefault("device", "cpu")
    clf = SDLGMClassifier(Y.shape[1], **options)
    history = clf.fit(X, Y, **fit).history_
    return clf, len(history)


def count_calibration_metrics(clf, X_test, Y_test) -> dict:
    """Top-label ECE (10 bins) and mean NLL of the test rows' true counts under the classifier's
    count distribution (:func:`pyro_sdlgm.analysis.inspection.count_calibration`, as ``sdlgm inspect``)."""
    from pyro_sdlgm.analysis.inspection import count_calibration

    metrics, _ = count_calibration(clf.posterior(X_test, Y_test, num_samples=1))
    return {"count_ece": metrics["ece"], "count_nll": metrics["nll"]}


def predict_sdlgm(name: str, clf, X_test, Y_test) -> list[dict]:
    scores = clf.predict_scores(X_test)
    counts = clf.predict_count(X_test)
    decision = {"f1": "F1-optimal sets", "count": "predicted count"}[clf.params.get("decision", "count")]
    if clf.params.get("num_candidates") is not None:
        decision += f" (trained on shortlists of {clf.params['num_candidates']})"
    calibration = count_calibration_metrics(clf, X_test, Y_test)
    rows = [{"method": name, "decision": decision, "predicted": clf.predict(X_test), "scores": scores,
             "counts": counts, "extra": calibration}]
    if name == "sdlgm":  # the same model's top-L_hat labels
        rows.append({"method": "sdlgm_count", "decision": "predicted count", "predicted": top_k_sets(scores, counts),
                     "scores": scores, "counts": counts, "extra": calibration})
    return rows


def train_logistic(X, Y, settings: dict, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    # int64 labels: with the loaders' int8 labels, this baseline scored P@1 0.006 on Bibtex
    # (cause not pinned down; int64 gives the expected 0.631)
    labels = Y.toarray().astype(np.int64)
    kept = labels.sum(0) > 0  # a label never seen in training cannot be fitted: it scores 0
    b = settings["baselines"]
    model = OneVsRestClassifier(LogisticRegression(max_iter=b.get("logistic_max_iter", 1000),
                                                   C=b.get("logistic_C", 1.0), random_state=seed), n_jobs=1)
    model.fit(X, labels[:, kept])
    return (model, kept), None


def predict_logistic(fitted, X_test, Y_test, k: int) -> list[dict]:
    model, kept = fitted
    scores = np.zeros((X_test.shape[0], len(kept)))
    scores[:, kept] = model.predict_proba(X_test)
    true_counts = np.asarray(Y_test.sum(1)).ravel().astype(np.int64)
    return [{"method": "logistic_topk", "decision": f"top-{k}", "predicted": top_k_sets(scores, np.full(len(scores), k)),
                 "scores": scores, "counts": None},
            {"method": "logistic_threshold", "decision": "p > 0.5", "predicted": (scores > 0.5).astype(np.int8),
                 "scores": scores, "counts": None},
            {"method": "logistic_oracle", "decision": "true count (oracle)", "predicted": top_k_sets(scores, true_counts),
                 "scores": scores, "counts": None, "oracle": 1}]


def train_napkinxc(X, Y, seed: int, threads: int, kind: str, folder: str):
    from napkinxc.models import BR, PLT

    model = (PLT(folder, seed=seed, threads=threads) if kind == "plt"
             else BR(folder, seed=seed, threads=threads))
    model.fit(X, [list(map(int, row.indices)) for row in Y])
    return model, None


def predict_napkinxc(name: str, model, X_test, num_labels: int, k: int) -> list[dict]:
    scores = np.zeros((X_test.shape[0], num_labels))
    for i, pairs in enumerate(model.predict_proba(X_test, top_k=num_labels)):
        for label, probability in pairs:
            scores[i, label] = probability
    return [{"method": name, "decision": f"top-{k}", "predicted": top_k_sets(scores, np.full(len(scores), k)),
                 "scores": scores, "counts": None}]


def train_mlp(X, Y, settings: dict, seed: int, dropout: bool = False):
    """An MLP ``D -> hidden -> K`` (SDLGM's hidden sizes and activation; with ``dropout``, also
    SDLGM's dropout rate) with binary cross-entropy, trained by Adam with SDLGM's options; early
    stopping on SDLGM's validation split keeps the best epoch. Returns ``((network, val_rows), epochs)``."""
    import torch

    from pyro_sdlgm import validation_split
    from pyro_sdlgm import ClassifierConfig
    from pyro_sdlgm.config import TrainConfig, from_dict
    from pyro_sdlgm.model.networks import mlp
    from pyro_sdlgm.data.arrays import take_rows

    defaults = ClassifierConfig()
    hidden = list(settings["classifier"].get("hidden", defaults.hidden))
    activation = settings["classifier"].get("activation", defaults.activation)
    cfg = from_dict(TrainConfig, dict(settings["fit"], seed=seed), where=" (fit settings)")
    device = torch.device("cpu" if cfg.device == "auto" else cfg.device)
    fit_rows, val_rows = validation_split(X.shape[0], cfg.validation_fraction, seed)
    X_fit, Y_fit = X[fit_rows], Y[fit_rows]
    torch.manual_seed(seed)
    rate = settings["classifier"].get("dropout", defaults.dropout) if dropout else 0.0
    network = mlp(X.shape[1], hidden, Y.shape[1], activation, rate).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")

    def mean_loss(Xs, Ys) -> float:
        network.eval()
        total = 0.0
        with torch.no_grad():
            for rows in torch.arange(Xs.shape[0]).split(cfg.eval_batch_size):
                x, y = take_rows((Xs, Ys), rows, device)
                total += float(loss_fn(network(x), y).sum())
        return total / Xs.shape[0]

    best, best_state, stale, epochs = np.inf, None, 0, 0
    for epoch in range(cfg.epochs):
        network.train()
        for rows in torch.randperm(X_fit.shape[0], generator=generator).split(cfg.batch_size):
            x, y = take_rows((X_fit, Y_fit), rows, device)
            loss = loss_fn(network(x), y).sum(-1).mean()  # per-row log-likelihood, as SDLGM's loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs = epoch + 1
        if val_rows is None:
            continue
        val = mean_loss(X[val_rows], Y[val_rows])
        if val < best:
            best, best_state, stale = val, copy.deepcopy(network.state_dict()), 0
        else:
            stale += 1
            if cfg.patience is not None and stale >= cfg.patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return (network, val_rows), epochs


def mlp_probabilities(network, X) -> np.ndarray:
    import torch

    from pyro_sdlgm.data.arrays import take_rows

    device = next(network.parameters()).device
    with torch.no_grad():
        return torch.cat([torch.sigmoid(network(take_rows((X,), rows, device)[0])).cpu()
                          for rows in torch.arange(X.shape[0]).split(1024)]).numpy().astype(np.float64)


def predict_mlp(fitted, X, Y, X_test, k: int, grid: np.ndarray, name: str = "mlp") -> list[dict]:
    network, val_rows = fitted
    if val_rows is None:
        logger.warning("no validation split: the MLP's threshold is tuned on the training rows")
        val_rows = np.arange(X.shape[0])
    threshold = tune_threshold(Y[val_rows], mlp_probabilities(network, X[val_rows]), grid)
    scores = mlp_probabilities(network, X_test)
    return [{"method": f"{name}_topk", "decision": f"top-{k}", "predicted": top_k_sets(scores, np.full(len(scores), k)),
                 "scores": scores, "counts": None},
            {"method": f"{name}_threshold", "decision": f"p > {threshold:g} (tuned)",
                 "predicted": (scores > threshold).astype(np.int8), "scores": scores, "counts": None}]


# ----------------------------------------------------------------------------- one run


def run_one(job: dict) -> list[dict]:
    """Train one trainer on one data set with one seed and evaluate its methods (a fresh process
    unless ``--jobs 0``); returns one row per method in ``job["methods"]``."""
    import torch
    from threadpoolctl import threadpool_limits

    import pyro_sdlgm.estimators.classifier  # noqa: F401  (imports before the memory mark)
    from pyro_sdlgm.analysis.metrics import inverse_propensities, multilabel_report

    trainer, seed, settings, threads = job["trainer"], job["seed"], job["settings"], job["threads"]
    X, Y, X_test, Y_test = read_split(job["split"])
    k = max(1, round(float(np.asarray(Y.sum(1)).mean())))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads), tempfile.TemporaryDirectory() as folder:
            if trainer.startswith("napkinxc"):
                import napkinxc.models  # noqa: F401
            started = time.perf_counter()
            with PeakMemory() as meter:
                if trainer.startswith("sdlgm"):
                    fitted, epochs = train_sdlgm(X, Y, settings, seed, trainer)
                elif trainer == "logistic":
                    fitted, epochs = train_logistic(X, Y, settings, seed)
                elif trainer.startswith("napkinxc"):
                    fitted, epochs = train_napkinxc(X, Y, seed, threads, trainer.split("_")[1], folder)
                else:
                    fitted, epochs = train_mlp(X, Y, settings, seed, dropout=trainer == "mlp_dropout")
            seconds = time.perf_counter() - started
            peak_mb = meter.peak_mb
            if trainer.startswith("sdlgm"):
                predictions = predict_sdlgm(trainer, fitted, X_test, Y_test)
            elif trainer == "logistic":
                predictions = predict_logistic(fitted, X_test, Y_test, k)
            elif trainer.startswith("napkinxc"):
                predictions = predict_napkinxc(trainer, fitted, X_test, Y.shape[1], k)
            else:
                predictions = predict_mlp(fitted, X, Y, X_test, k, threshold_grid(settings["baselines"]),
                                          "mlp_dropout" if trainer == "mlp_dropout" else "mlp")
    finally:
        torch.set_num_threads(previous_threads)
    inv = inverse_propensities(Y)
    rows = []
    for p in predictions:
        if p["method"] not in job["methods"]:
            continue
        report = multilabel_report(Y_test, p["predicted"], p["scores"], predicted_counts=p["counts"],
                                   inv_propensities=inv)
        rows.append({"dataset": job["dataset"], "method": p["method"], "seed": seed, "oracle": p.get("oracle", 0),
                     "decision": p["decision"], "config": job["config"], **report,
                     **p.get("extra", {"count_ece": float("nan"), "count_nll": float("nan")}),
                     "epochs": float("nan") if epochs is None else epochs,
                     "train_seconds": seconds, "train_peak_mb": peak_mb})
    return rows


def describe(rows: list[dict]) -> str:
    return "; ".join(f"{r['dataset']} {r['method']} seed {r['seed']}: P@1 {r['p@1']:.3f}, example-F1 "
                     f"{r['example_f1']:.3f}, {r['train_seconds']:.1f} s, {r['train_peak_mb']:.0f} MB" for r in rows)


def run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """Every job's rows, in job order (see :func:`suite_common.run_pool`)."""
    return [row for rows in run_pool(run_one, jobs, workers, describe) for row in rows]


# ----------------------------------------------------------------------------- outputs


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation (ddof=1; 0 for a single seed) over seeds, per data set and method."""
    out = []
    for dataset, method in dict.fromkeys((r["dataset"], r["method"]) for r in rows):
        group = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
        out.append({"dataset": dataset, "method": method, "oracle": group[0]["oracle"],
                    "decision": "; ".join(dict.fromkeys(r["decision"] for r in group)),
                    "seeds": " ".join(str(r["seed"]) for r in group), "config": group[0]["config"],
                    **mean_and_std(group, METRICS)})
    return out


def plot_summary(summary: list[dict], path: Path, title: str) -> None:
    """P@1 and example-F1 per method, mean with standard-deviation error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.8 * len(summary) + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    for offset, key, label in ((-0.2, "p@1", "P@1"), (0.2, "example_f1", "example-F1")):
        ax.bar(x + offset, [s[f"{key}_mean"] for s in summary], 0.4, yerr=[s[f"{key}_std"] for s in summary],
               capsize=3, label=label)
    ax.set_xticks(x, [s["method"] + (" (oracle)" if int(s["oracle"]) else "") for s in summary], rotation=35,
                  ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def print_summary(dataset: str, summary: list[dict]) -> None:
    print(f"\n{dataset}")
    print(f"{'method':<20} {'P@1':>15} {'example-F1':>15} {'count acc.':>15} {'train s':>12} {'peak MB':>10}")
    for s in summary:
        cells = [f"{s[f'{k}_mean']:.3f} ± {s[f'{k}_std']:.3f}" for k in ("p@1", "example_f1", "count_accuracy")]
        print(f"{s['method']:<20} {cells[0]:>15} {cells[1]:>15} {cells[2]:>15} "
              f"{s['train_seconds_mean']:>12.1f} {s['train_peak_mb_mean']:>10.0f}")


# ----------------------------------------------------------------------------- main


def sources(args, config: dict) -> list[dict]:
    """The data sets to run, each ``{"name", "kind", paths...}``; bad paths end the program naming the file."""
    user = []
    if args.arff is not None:
        if not args.arff.is_file():
            raise SystemExit(f"--arff: no such file {args.arff}")
        if args.labels is None:
            raise SystemExit("--arff needs --labels: the number of label attributes (the last ones) or the label XML")
        labels = int(args.labels) if args.labels.isdigit() else Path(args.labels)
        if isinstance(labels, Path) and not labels.is_file():
            raise SystemExit(f"--labels: no such file {labels}")
        user.append({"name": args.name or args.arff.stem, "kind": "arff", "path": args.arff, "labels": labels})
    if args.xmc is not None:
        for path in args.xmc:
            if not path.is_file():
                raise SystemExit(f"--xmc: no such file {path}")
        user.append({"name": args.name or args.xmc[0].resolve().parent.name, "kind": "xmc",
                     "train": args.xmc[0], "test": args.xmc[1]})
    if args.smoke:
        names = ["yeast"]
    else:
        names = args.datasets or ([] if user else config["datasets"])
    out = []
    for name in names:
        if name == "bibtex":
            if not (args.bibtex / "bibtex.arff").is_file() or not (args.bibtex / "bibtex.xml").is_file():
                message = f"bibtex: no bibtex.arff and bibtex.xml in {args.bibtex} (give the folder with --bibtex)"
                if args.datasets or args.bibtex != DEFAULT_BIBTEX:
                    raise SystemExit(message)
                logger.warning("skipping %s", message)
                continue
            out.append({"name": "bibtex", "kind": "bibtex", "path": args.bibtex})
        else:
            out.append({"name": name, "kind": name})
    return out + user


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "multilabel_suite.toml")
    parser.add_argument("--datasets", nargs="+", choices=["yeast", "bibtex"],
                        help="default: the config's (none when --arff or --xmc is given)")
    parser.add_argument("--bibtex", type=Path, default=DEFAULT_BIBTEX, help="folder with bibtex.arff and bibtex.xml")
    parser.add_argument("--arff", type=Path, help="a MULAN ARFF file to run as well")
    parser.add_argument("--labels", help="with --arff: the number of label attributes (the last ones) or the label XML")
    parser.add_argument("--train-rows", type=int, help="with --arff: the first N rows train, the rest test "
                        "(default: a seeded split holding out [default] test_fraction)")
    parser.add_argument("--xmc", type=Path, nargs=2, metavar=("TRAIN", "TEST"),
                        help="Extreme Classification Repository train and test files to run as well")
    parser.add_argument("--name", help="the name of the --arff/--xmc data in the outputs (and its config section)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the config's")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel, each in a fresh process with --threads threads (0: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS/napkinXC threads per run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--smoke", action="store_true", help="Yeast, few rows, 1 epoch, in this process: for the tests")
    args = parser.parse_args(argv)
    if args.arff is not None and args.xmc is not None and args.name:
        parser.error("--name names one data set: give --arff or --xmc, not both")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # this script's progress; the library's per-epoch records stay quiet
    if not args.config.is_file():
        raise SystemExit(f"--config: no such file {args.config}")
    config = tomllib.loads(args.config.read_text())
    smoke = config.get("smoke", {})
    seeds = args.seeds or (smoke.get("seeds", [0]) if args.smoke else config["seeds"])
    methods = args.methods or list(METHODS)
    workers = 0 if args.smoke else args.jobs
    try:
        config_name = str(args.config.resolve().relative_to(HERE.parent))
    except ValueError:
        config_name = str(args.config)
    if args.smoke:
        config_name += " [smoke]"
    try:
        import napkinxc  # noqa: F401
    except ImportError:
        skipped = [m for m in methods if m.startswith("napkinxc")]
        if skipped:
            logger.warning("napkinxc is not installed: skipping %s", ", ".join(skipped))
        methods = [m for m in methods if not m.startswith("napkinxc")]
    suffix = "_smoke" if args.smoke else ""
    with tempfile.TemporaryDirectory(prefix="multilabel_suite_") as cache:
        for source in sources(args, config):
            name = source["name"]
            settings = settings_for(config, name, args.smoke)
            if source["kind"] == "arff" and args.train_rows is not None:
                settings["train_rows"] = args.train_rows
            source["settings"] = settings
            train, test = load_dataset(source)
            if args.smoke:
                train, test = train.rows(0, smoke.get("train_rows", 300)), test.rows(0, smoke.get("test_rows", 100))
            logger.info("%s: %d train / %d test rows, %d features, %d labels (%.2f per training row)", name,
                        train.X.shape[0], test.X.shape[0], train.X.shape[1], train.Y.shape[1],
                        train.label_counts.mean())
            split = Path(cache) / name
            save_split(train, test, split)
            jobs = [{"dataset": name, "trainer": trainer, "methods": [m for m in produced if m in methods], "seed": seed,
                         "settings": settings, "split": str(split), "config": config_name, "threads": args.threads}
                    for trainer, produced in TRAINERS.items() if any(m in methods for m in produced)
                    for seed in seeds]
            rows = run_jobs(jobs, workers)
            rows.sort(key=lambda r: (METHODS.index(r["method"]), r["seed"]))
            write_csv(rows, args.out / f"multilabel_{name}{suffix}.csv", COLUMNS)
            summary = summarize(rows)
            write_csv(summary, args.out / f"multilabel_{name}{suffix}_summary.csv", list(summary[0]))
            plot_summary(summary, args.out / f"multilabel_{name}{suffix}.png",
                         f"{name}: {train.X.shape[0]} train / {test.X.shape[0]} test rows, seeds {seeds}")
            print_summary(name, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
