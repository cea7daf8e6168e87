"""Multi-label training at the size real tagging has, with the classifier's defaults.

    .venv/bin/python -m benchmarks.multilabel_scale [--rows 25000] [--features 5000] [--labels 500]
        [--max-count 32] [--out benchmarks/results]

Draws a seeded synthetic tagging data set (each label has its own words; a row's words come
from its labels and a background, as tf-idf features: scipy CSR), then, each in a fresh
process (torch's default threads unless ``--threads``): ``SDLGMClassifier(num_labels=K).fit(X, Y)`` with the defaults and the
MLP baseline of ``experiments/multilabel_suite.py`` (same hidden sizes, binary cross-entropy).
Reports wall time, the increase of peak resident memory during training, epochs and test P@1,
in ``multilabel_scale.json`` and ``multilabel_scale.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = {"seconds": 300.0, "peak_gb": 4.0}


def tagging_data(rows: int, features: int, labels: int, max_count: int, seed: int = 0, words_per_row: int = 40,
                 tagged_share: float = 0.25):
    """``(X, Y)``: tf-idf features ``(rows, features)`` and 0/1 labels ``(rows, labels)``, both CSR.

    Label popularity is Zipf-like; a row has ``1 + Poisson(2)`` labels, capped at ``max_count``
    (a few rows are given ``max_count`` labels so the cap is reached). Each label owns 20 words;
    a ``tagged_share`` of a row's words come from its labels' words, the rest uniformly from the
    vocabulary.
    """
    import scipy.sparse
    from sklearn.feature_extraction.text import TfidfTransformer

    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, labels + 1) ** 0.8
    popularity /= popularity.sum()
    own_words = rng.integers(0, features, size=(labels, 20))
    counts = np.minimum(1 + rng.poisson(2.0, rows), max_count)
    counts[rng.choice(rows, size=max(1, rows // 1000), replace=False)] = max_count
    label_rows, label_cols, word_rows, word_cols = [], [], [], []
    for i, c in enumerate(counts):
        chosen = rng.choice(labels, size=c, replace=False, p=popularity)
        label_rows += [i] * c
        label_cols += chosen.tolist()
        tagged = rng.random(words_per_row) < tagged_share
        words = np.where(tagged, own_words[rng.choice(chosen, words_per_row), rng.integers(0, 20, words_per_row)],
                         rng.integers(0, features, words_per_row))
        word_rows += [i] * words_per_row
        word_cols += words.tolist()
    Y = scipy.sparse.csr_matrix((np.ones(len(label_rows), np.float32), (label_rows, label_cols)),
                                shape=(rows, labels))
    Y.data[:] = 1.0
    counts_matrix = scipy.sparse.csr_matrix((np.ones(len(word_rows), np.float32), (word_rows, word_cols)),
                                            shape=(rows, features))
    X = TfidfTransformer().fit_transform(counts_matrix).astype(np.float32).tocsr()
    return X, Y


def _run(job: dict, queue) -> None:
    """One training in this (fresh) process; puts its measurements on ``queue``."""
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    from experiments.suite_common import PeakMemory

    from pyro_sdlgm import SDLGMClassifier
    from pyro_sdlgm.analysis.metrics import precision_at_k

    X, Y = tagging_data(job["rows"], job["features"], job["labels"], job["max_count"], job["seed"])
    cut = int(0.8 * X.shape[0])
    X_train, Y_train, X_test, Y_test = X[:cut], Y[:cut], X[cut:], Y[cut:]
    started = time.perf_counter()
    with PeakMemory() as meter:
        if job["method"] == "sdlgm":
            clf = SDLGMClassifier(Y.shape[1])
            epochs = len(clf.fit(X_train, Y_train, progress=False, seed=job["seed"], device="cpu").history_)
        else:
            from experiments.multilabel_suite import train_mlp

            settings = {"classifier": {}, "fit": {"device": "cpu"}}
            (network, _), epochs = train_mlp(X_train, Y_train, settings, job["seed"])
    seconds = time.perf_counter() - started
    if job["method"] == "sdlgm":
        top = clf.predict_top_labels(X_test, 1)
        extra = {"max_labels": clf.params["max_labels"], "count_accuracy": float(
            (clf.predict_count(X_test) == np.diff(Y_test.indptr)).mean())}
    else:
        from experiments.multilabel_suite import mlp_probabilities

        top = mlp_probabilities(network, X_test).argmax(1)[:, None]
        extra = {}
    scores = np.zeros(Y_test.shape, np.float32)
    scores[np.arange(len(top)), top[:, 0]] = 1.0
    queue.put({"method": job["method"], "seconds": seconds, "peak_gb": meter.peak_mb / 1024, "epochs": epochs,
               "p@1": precision_at_k(Y_test, scores, 1), **extra})


def measure(job: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(job, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def report(results: list[dict], args) -> str:
    threads = args.threads or "torch's default number of"
    lines = [f"# Multi-label training at scale ({args.rows:,} rows, {args.features:,} tf-idf features, "
             f"{args.labels} labels, up to {args.max_count} a row)", "",
             f"Command: `python -m benchmarks.multilabel_scale --rows {args.rows} --features {args.features} "
             f"--labels {args.labels} --max-count {args.max_count} --threads {args.threads}`; one fresh process per "
             f"row, {threads} threads; "
             f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} CPUs. Train on the "
             "first 80% of the rows, test on the rest.", "",
             "| method | train s | peak increase (GB) | epochs | test P@1 | target |", "|---|---:|---:|---:|---:|---|"]
    for r in results:
        target = ""
        if r["method"] == "sdlgm":
            met = r["seconds"] <= TARGETS["seconds"] and r["peak_gb"] <= TARGETS["peak_gb"]
            target = (f"{'met' if met else 'MISSED'}: <= {TARGETS['seconds']:.0f} s and <= "
                      f"{TARGETS['peak_gb']:g} GB")
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r['peak_gb']:.2f} | {r['epochs']} | {r['p@1']:.3f} | "
                     f"{target} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25_000)
    parser.add_argument("--features", type=int, default=5_000)
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--max-count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["sdlgm", "mlp"], choices=["sdlgm", "mlp"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    results = []
    for method in args.methods:
        job = dict(method=method, rows=args.rows, features=args.features, labels=args.labels,
                   max_count=args.max_count, seed=args.seed, threads=args.threads)
        results.append(measure(job))
        print(json.dumps(results[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multilabel_scale.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                                                "results": results}, indent=2))
    (args.out / "multilabel_scale.md").write_text(report(results, args))
    print(report(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
