"""Unsupervised suite: SDLGM against a dense VAE, a spike-and-slab VAE and a top-k autoencoder.

    python -m experiments.unsupervised_suite                       # config: unsupervised_suite.toml
    python -m experiments.unsupervised_suite --datasets digits --seeds 0 1 2
    python -m experiments.unsupervised_suite --idx PATH/TO/fashion-mnist --datasets idx
    python -m experiments.unsupervised_suite --smoke               # tiny, for the tests

Every method gets the same encoder/decoder sizes, ``K``, batch size, learning rate,
schedules, epochs and early stopping, and the same fixed train/validation/test split. The
top-k autoencoder's ``k`` and the spike-and-slab prior's slab probability are set from
SDLGM's measured mean number of non-zeros on the same data set and seed, so that they are
compared at SDLGM's sparsity. Each run trains in a fresh process, which reports its wall
time and the increase of its resident memory during training (peak over the level at the start).

Writes to ``--out`` (default ``experiments/results``): ``unsupervised_<data>.csv`` (one row
per method and seed, naming the config file), ``unsupervised_<data>_summary.csv`` (mean and
standard deviation over seeds), ``unsupervised_<data>_sweep.csv`` and
``unsupervised_<data>_sweep.png`` (reconstruction against mean non-zeros over ``L0``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from experiments.suite_common import PeakMemory, mean_and_std, run_pool, write_csv

HERE = Path(__file__).resolve().parent

METHODS = ("sdlgm", "sdlgm_values", "sdlgm_previous", "sdlgm_enumerate", "sdlgm_fixed_L", "dense_vae", "spike_slab_vae",
           "topk_sae")
SWEEP_METHODS = ("sdlgm", "spike_slab_vae", "topk_sae")
METRICS = ["test_elbo", "recon", "mse", "mean_nnz", "max_nnz", "codes_over_L0", "unused_dim_fraction",
           "probe_accuracy", "count_entropy", "l_hat_equals_best", "epochs", "train_seconds", "train_peak_mb"]
COLUMNS = ["dataset", "method", "seed", "L0", "k_or_alpha", "config"] + METRICS

logger = logging.getLogger("unsupervised_suite")


def load_splits(dataset: str, settings: dict, idx_path: str | None):
    """``(train, val, test)`` as ``(X, y)`` pairs: fixed splits seeded by ``split_seed``."""
    from pyro_sdlgm.config import DataConfig
    from pyro_sdlgm.data.unsupervised import prepare_dataset, split_dataset

    source = idx_path if dataset == "idx" else dataset
    if source is None:
        raise SystemExit("--datasets idx needs --idx PATH (an IDX file or folder, e.g. Fashion-MNIST's)")
    config = DataConfig(source=source, test_fraction=settings["test_fraction"], split_seed=settings["split_seed"],
                        max_examples=settings.get("max_examples"))
    train, test = split_dataset(prepare_dataset(config, "bernoulli"), config.test_fraction, config.split_seed)
    order = np.random.default_rng(settings["split_seed"]).permutation(len(train.X))
    n_val = int(round(settings["validation_fraction"] * len(train.X)))
    val, fit = train.subset(np.sort(order[:n_val])), train.subset(np.sort(order[n_val:]))
    if fit.y is None:
        logger.warning("%s has no class labels: the linear probe is skipped", dataset)
    return (fit.X, fit.y), (val.X, val.y), (test.X, test.y)


def linear_probe(codes_train, y_train, codes_test, y_test) -> float:
    """Test accuracy of a logistic regression predicting the class from the codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if y_train is None:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(codes_train, y_train)
    return float(probe.score(codes_test, y_test))


def code_metrics(codes: np.ndarray, L0: int) -> dict:
    """The library's statistics of hard codes (:func:`pyro_sdlgm.analysis.evaluation.code_statistics`) the tables use."""
    import torch

    from pyro_sdlgm.analysis.evaluation import code_statistics

    stats = code_statistics(torch.from_numpy(np.ascontiguousarray(codes)), L0)
    return {"mean_nnz": stats["mean_nnz"], "max_nnz": stats["max_nnz"], "codes_over_L0": stats["codes_over_cap"],
            "unused_dim_fraction": stats["unused_dim_fraction"]}


def run_one(job: dict) -> dict:
    """Train and evaluate one method on one data set with one seed (in a fresh process)."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(job["threads"])
    try:
        return _run(job)
    finally:
        torch.set_num_threads(previous_threads)  # in-process runs (--jobs 0) leave the caller as it was


def _run(job: dict) -> dict:
    import torch

    from experiments import unsupervised_baselines as B
    from pyro_sdlgm import SDLGM

    s = job["settings"]
    (x_fit, y_fit), (x_val, _), (x_test, y_test) = load_splits(job["dataset"], s, job["idx"])
    method, seed, L0, K = job["method"], job["seed"], job["L0"], s["latent_dim"]
    train_options = dict(epochs=s["epochs"], batch_size=s["batch_size"], learning_rate=s["learning_rate"],
                         seed=seed, patience=s["patience"], progress=False)
    meter = PeakMemory()
    started = time.perf_counter()
    result = {"dataset": job["dataset"], "method": method, "seed": seed, "L0": L0, "config": job["config"],
              "k_or_alpha": ""}
    if method.startswith("sdlgm"):
        # the library's defaults, with the suite's network sizes (binary codes for these binary images)
        options = dict(decoder_hidden=s["decoder_hidden"], guide={"name": "mlp_magnitude_slots", "hidden": s["encoder_hidden"]})
        options.update(job.get("sdlgm_options") or {})  # --sdlgm-options: a variant of every SDLGM method
        if method == "sdlgm_values":
            options.update(binary=False)
        if method == "sdlgm_previous":  # the defaults before the magnitude guide, the refined count and binary="auto"
            options.update(guide={"name": "mlp_per_slot", "hidden": s["encoder_hidden"]}, count_estimate="amortized",
                           binary=False)
        if method == "sdlgm_enumerate":
            options.update(sparsity_inference="enumerate", objective="relaxed")
        if method == "sdlgm_fixed_L":
            options.update(sparsity_prior="fixed_at_max",
                           guide={"name": "mlp_magnitude_slots_fixed_sparsity", "hidden": s["encoder_hidden"]})
        model = SDLGM(x_fit.shape[1], K, L0, **options)
        with meter:  # --sdlgm-fit-options: training options of every SDLGM method
            history = model.fit(x_fit, validation_data=x_val, **{**train_options, **(job.get("sdlgm_fit_options") or {})}).history_
        seconds = time.perf_counter() - started
        metrics = model.evaluate(x_test)
        codes_fit, codes_test = model.encode(x_fit), model.encode(x_test)
        posterior = np.clip(model.sparsity_posterior(x_test), 1e-12, 1.0)
        result.update(test_elbo=metrics["elbo"], recon=metrics["recon"], mse=metrics["mse"],
                      count_entropy=float(-(posterior * np.log(posterior)).sum(1).mean()),
                      l_hat_equals_best=model.diagnose(x_test)["summary"]["l_hat_equals_best"])
    else:
        torch.manual_seed(seed)
        sizes = dict(encoder_hidden=s["encoder_hidden"], decoder_hidden=s["decoder_hidden"])
        if method == "dense_vae":
            module = B.DenseVAE(x_fit.shape[1], K, **sizes)
        elif method == "spike_slab_vae":
            alpha = min(max(job["target_nnz"] / K, 1e-4), 0.5)
            module = B.SpikeSlabVAE(x_fit.shape[1], K, alpha, **sizes)
            result["k_or_alpha"] = f"alpha={alpha:.4f}"
        else:
            k = max(1, int(round(job["target_nnz"])))
            module = B.TopKAutoencoder(x_fit.shape[1], K, k, **sizes)
            result["k_or_alpha"] = f"k={k}"
        t_fit, t_val, t_test = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x_fit, x_val, x_test))
        with meter:
            history = B.train_autoencoder(module, t_fit, t_val, epochs=s["epochs"], batch_size=s["batch_size"],
                                          learning_rate=s["learning_rate"], seed=seed, patience=s["patience"])
        seconds = time.perf_counter() - started
        with torch.no_grad():
            z_test = module.encode(t_test)
            logits = module.decoder(z_test)
            recon = float(B.bernoulli_nll(logits, t_test).mean())
            mse = float(((torch.sigmoid(logits) - t_test) ** 2).sum(-1).mean())
        codes_fit, codes_test = module.encode(t_fit).numpy(), z_test.numpy()
        result.update(test_elbo=B.test_elbo(module, t_test) if module.has_elbo else float("nan"), recon=recon, mse=mse,
                      count_entropy=float("nan"), l_hat_equals_best=float("nan"))
    result.update(code_metrics(codes_test, L0), probe_accuracy=linear_probe(codes_fit, y_fit, codes_test, y_test),
                  epochs=len(history), train_seconds=seconds, train_peak_mb=meter.peak_mb)
    return result


def describe(result: dict) -> str:
    return str({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()})


def run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """Every job's result, in job order (see :func:`suite_common.run_pool`)."""
    return run_pool(run_one, jobs, workers, describe)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation (ddof=1) over seeds per method."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        out.append({"dataset": group[0]["dataset"], "method": method, "seeds": " ".join(str(r["seed"]) for r in group),
                    "config": group[0]["config"], "L0": group[0]["L0"], **mean_and_std(group, METRICS)})
    return out


def plot_sweep(rows: list[dict], dense: list[dict], path: Path, dataset: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method in SWEEP_METHODS:
        points = sorted((r["mean_nnz"], r["recon"], r["L0"]) for r in rows if r["method"] == method)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=method)
            for x, y, L0 in points:
                ax.annotate(f"L0={L0}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    for r in dense:
        ax.axhline(r["recon"], color="grey", linestyle=":", label=f"dense VAE (all {int(r['mean_nnz'])} dims)")
    ax.set_xscale("log")
    ax.set_xlabel("mean non-zeros per test code")
    ax.set_ylabel("reconstruction from hard codes (nats per example)")
    ax.set_title(f"{dataset}: reconstruction against sparsity")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "unsupervised_suite.toml"))
    parser.add_argument("--datasets", nargs="+", help="mnist, digits, idx (default: the config's)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the config's")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    parser.add_argument("--idx", help="IDX file or folder for --datasets idx")
    parser.add_argument("--no-sweep", action="store_true", help="skip the L0 sweep")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel, each in a fresh process with --threads threads (0: in this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--smoke", action="store_true", help="tiny data and 1 epoch, for the tests")
    parser.add_argument("--sdlgm-fit-options", type=json.loads, default=None, metavar="JSON",
                        help='training options of every SDLGM method, e.g. \'{"revive_every": 10}\'')
    parser.add_argument("--sdlgm-options", type=json.loads, default=None, metavar="JSON",
                        help='SDLGM options that replace the suite\'s, e.g. \'{"guide": {"name": '
                             '"mlp_magnitude_slots", "hidden": [512, 256]}}\' (write to another --out)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config_path = Path(args.config)
    config = tomllib.loads(config_path.read_text())
    settings = dict(config["settings"])
    if args.smoke:
        settings.update(config.get("smoke", {}))
    datasets = args.datasets or config["datasets"]
    seeds = args.seeds or config["seeds"]
    methods = args.methods or list(METHODS)
    name = config_path.name
    suffix = "_smoke" if args.smoke else ""
    out = Path(args.out)

    def job(dataset, method, seed, L0, target=None):
        return dict(dataset=dataset, method=method, seed=seed, L0=L0, target_nnz=target, settings=settings,
                    idx=args.idx, config=name, threads=args.threads, sdlgm_options=args.sdlgm_options,
                    sdlgm_fit_options=args.sdlgm_fit_options)

    for dataset in datasets:
        L0 = settings["max_sparsity"]
        first = run_jobs([job(dataset, "sdlgm", seed, L0) for seed in seeds], args.jobs) if "sdlgm" in methods else []
        target = {r["seed"]: r["mean_nnz"] for r in first}
        matched = [m for m in methods if m in ("spike_slab_vae", "topk_sae")]
        if matched and "sdlgm" not in methods:
            parser.error(f"{', '.join(matched)} take their sparsity from SDLGM's measured mean non-zeros on the same "
                         "data and seed: include sdlgm in --methods")
        rest = [job(dataset, m, seed, L0, target.get(seed)) for m in methods if m != "sdlgm" for seed in seeds]
        rows = first + run_jobs(rest, args.jobs)
        write_csv(rows, out / f"unsupervised_{dataset}{suffix}.csv", COLUMNS, ".4f")
        summary = summarize(rows)
        write_csv(summary, out / f"unsupervised_{dataset}{suffix}_summary.csv", list(summary[0]), ".4f")
        for s in summary:
            print(f"{dataset:7s} {s['method']:16s} recon {s['recon_mean']:7.2f} ± {s['recon_std']:.2f}  "
                  f"ELBO {s['test_elbo_mean']:8.2f}  nnz {s['mean_nnz_mean']:6.2f} (max {s['max_nnz_mean']:.0f}, "
                  f"over L0 {s['codes_over_L0_mean']:.0f})  unused {s['unused_dim_fraction_mean']:.2f}  "
                  f"probe {s['probe_accuracy_mean']:.3f}  {s['train_seconds_mean']:.0f} s  "
                  f"{s['train_peak_mb_mean']:.0f} MB")
        if args.no_sweep:
            continue
        sweep_rows = [r for r in first if r["seed"] == seeds[0]]
        sweep_rows += run_jobs([job(dataset, "sdlgm", seeds[0], value) for value in settings["sweep_L0"]
                                if value != L0], args.jobs)
        targets = {r["L0"]: r["mean_nnz"] for r in sweep_rows}
        others = [m for m in SWEEP_METHODS if m != "sdlgm" and m in methods]
        sweep_rows += [r for r in rows if r["method"] in others and r["seed"] == seeds[0]]  # at L0 already
        sweep_rows += run_jobs([job(dataset, m, seeds[0], value, targets[value]) for m in others
                                for value in settings["sweep_L0"] if value != L0], args.jobs)
        write_csv(sweep_rows, out / f"unsupervised_{dataset}{suffix}_sweep.csv", COLUMNS, ".4f")
        plot_sweep(sweep_rows, [r for r in rows if r["method"] == "dense_vae" and r["seed"] == seeds[0]],
                   out / f"unsupervised_{dataset}{suffix}_sweep.png", dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
