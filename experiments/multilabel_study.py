"""Multi-label study: one SDLGMClassifier training, several read-outs of the same x-only networks.

    python -m experiments.multilabel_study --data bibtex --seed 0 --name shared \
        --options '{"per_slot": false}' --fit '{"batch_size": 512}'

For each trained model it reports, on the test split:

- rankings: ``greedy`` (the classifier's own ranking: its ``ranking`` option) and ``inclusion`` (``P(k in S | x) = 1 - prod_l (1 - g_l p_lk)``);
- decisions: ``count`` (top-``L_hat`` with ``L_hat`` the count network's mode) under each
  ranking, and ``f1`` (the plug-in F1-optimal set of Dembczynski et al. 2011, from
  ``P(L = s | x)`` and ``P(k in S | L = s, x)``, with the count calibrated on the validation rows);
- the count's top-label ECE, accuracy and NLL as the classifier gives them (``_raw``: with its
  ``calibrate_count`` option) and after a further temperature scaling on the validation split
  (the rows ``fit`` held out; ``_cal``), and the constant count's accuracy.

One JSON line per run is appended to ``experiments/results/multilabel_study/<data>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from experiments.multilabel_suite import DEFAULT_BIBTEX, load_dataset, settings_for, top_k_sets

HERE = Path(__file__).resolve().parent

def ece(probs: np.ndarray, levels: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    confidence, predicted = probs.max(-1), levels[probs.argmax(-1)]
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.sum() * abs((predicted[rows] == truth[rows]).mean() - confidence[rows].mean())
    return float(total / len(truth))


def count_nll(logits: np.ndarray, levels: np.ndarray, truth: np.ndarray) -> float:
    index = np.clip(truth - levels[0], 0, len(levels) - 1)
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return float(-logp[np.arange(len(truth)), index].mean())


def fit_temperature(logits: np.ndarray, levels: np.ndarray, truth: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda t: count_nll(logits / np.exp(t), levels, truth), bounds=(-3, 3), method="bounded")
    return float(np.exp(result.x))


@torch.no_grad()
def readouts(clf, X) -> dict:
    """Per-row arrays of the x-only networks: count logits, greedy and inclusion scores, and
    ``P(k in S | L = s)`` for ``s = 1..L0`` on each row's top-``C`` inclusion labels."""
    from pyro_sdlgm.estimators.decisions import label_scores
    from pyro_sdlgm.model.support import slot_gates, soft_support

    spec = clf.spec
    out = {"count_logits": [], "greedy": [], "inclusion": [], "cond": [], "cond_labels": []}
    depth = min(spec.latent_dim, max(5 * spec.max_sparsity, 50))
    for params in clf.prior_params(X):
        n = params.slot_logits.shape[0]
        probs = params.slot_logits.softmax(-1).expand(n, spec.max_sparsity, -1)
        gates = slot_gates(params.sparsity_logits.softmax(-1), spec.min_level)
        inclusion = soft_support(gates, probs)
        labels = inclusion.topk(depth, dim=-1).indices
        p = probs.gather(-1, labels.unsqueeze(1).expand(-1, spec.max_sparsity, -1))  # (n, L0, C)
        cond = 1.0 - torch.cumprod(1.0 - p, dim=1)  # (n, L0, C): P(k in S | L = l + 1)
        out["count_logits"].append(params.sparsity_logits)
        out["greedy"].append(label_scores(params, spec, clf.params["ranking"]))
        out["inclusion"].append(inclusion)
        out["cond"].append(cond)
        out["cond_labels"].append(labels)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def f1_decision(count_probs: np.ndarray, levels: np.ndarray, cond: np.ndarray, labels: np.ndarray, num_labels: int):
    """Plug-in F1-optimal sets: for each size k, the top-k labels by
    ``Delta_ik = sum_s 2 P(L = s) P(i in S | L = s) / (s + k)``; the size with the largest expected F1."""
    n, L0, C = cond.shape
    start = 1 if levels[0] == 0 else 0
    joint = count_probs[:, start:, None] * cond  # (n, L0, C): P(L = s, i in S)
    s = levels[start:].astype(np.float64)
    best_value = count_probs[:, 0].copy() if start else np.full(n, -np.inf)  # k = 0: F1 = P(L = 0)
    best_set = [np.zeros(0, np.int64)] * n
    best_k = np.zeros(n, np.int64)
    for k in range(1, L0 + 1):
        delta = (joint * (2.0 / (s[None, :, None] + k))).sum(1)  # (n, C)
        top = np.argsort(-delta, axis=1, kind="stable")[:, :k]
        value = np.take_along_axis(delta, top, 1).sum(1)
        better = value > best_value
        best_value = np.where(better, value, best_value)
        best_k = np.where(better, k, best_k)
        for i in np.flatnonzero(better):
            best_set[i] = labels[i, top[i]]
    import scipy.sparse

    rows = np.repeat(np.arange(n), [len(b) for b in best_set])
    cols = np.concatenate(best_set) if rows.size else np.zeros(0, np.int64)
    return scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, num_labels)), best_k


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=("yeast", "bibtex"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", required=True)
    parser.add_argument("--options", default="{}", help="SDLGMClassifier arguments (JSON) over the suite's")
    parser.add_argument("--fit", default="{}", help="fit options (JSON) over the suite's")
    parser.add_argument("--plain", action="store_true", help="start from the library defaults, not the suite's")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "multilabel_study")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pyro_sdlgm import SDLGMClassifier, validation_split
    from pyro_sdlgm.analysis.metrics import inverse_propensities, multilabel_report

    config = tomllib.loads((HERE / "multilabel_suite.toml").read_text())
    settings = settings_for(config, args.data, False)
    source = {"kind": args.data, "settings": settings, "path": DEFAULT_BIBTEX}
    train, test = load_dataset(source)
    X, Y, X_test, Y_test = train.X.tocsr(), train.Y.tocsr(), test.X.tocsr(), test.Y.tocsr()
    if args.data == "yeast":  # standardized features (training statistics)
        dense = X.toarray()
        mu, sd = dense.mean(0), dense.std(0) + 1e-8
        import scipy.sparse
        X = scipy.sparse.csr_matrix((dense - mu) / sd)
        X_test = scipy.sparse.csr_matrix((X_test.toarray() - mu) / sd)
    options = {} if args.plain else dict(settings["classifier"])
    options.update(json.loads(args.options))
    fit = {} if args.plain else dict(settings["fit"])
    fit.update(json.loads(args.fit), seed=args.seed, progress=False, device="cpu")
    clf = SDLGMClassifier(Y.shape[1], **options)
    start = time.perf_counter()
    history = clf.fit(X, Y, **fit).history_
    seconds = time.perf_counter() - start
    _, val_rows = validation_split(X.shape[0], fit.get("validation_fraction", 0.1), args.seed)

    levels = clf.count_levels
    val = readouts(clf, X[val_rows])
    out = readouts(clf, X_test)
    truth = np.asarray(Y_test.sum(1)).ravel().astype(np.int64)
    truth_val = np.minimum(np.asarray(Y[val_rows].sum(1)).ravel().astype(np.int64), levels[-1])
    temperature = fit_temperature(val["count_logits"], levels, truth_val)
    logits = out["count_logits"]
    scaled = logits / temperature
    probs_raw = np.exp(logits - np.logaddexp.reduce(logits, -1, keepdims=True))
    probs_cal = np.exp(scaled - np.logaddexp.reduce(scaled, -1, keepdims=True))
    counts = levels[probs_raw.argmax(-1)]
    train_counts = np.asarray(Y.sum(1)).ravel().astype(np.int64)
    constant = np.bincount(train_counts).argmax()
    inv = inverse_propensities(Y)
    row = {"data": args.data, "name": args.name, "seed": args.seed, "options": options, "fit": json.loads(args.fit),
           "epochs": len(history), "train_seconds": round(seconds, 1), "temperature": temperature,
           "count_accuracy": float((counts == truth).mean()), "constant_count_accuracy": float((truth == constant).mean()),
           "ece_raw": ece(probs_raw, levels, truth), "ece_cal": ece(probs_cal, levels, truth),
           "nll_raw": count_nll(logits, levels, truth), "nll_cal": count_nll(scaled, levels, truth),
           "val_p@1": multilabel_report(Y[val_rows], top_k_sets(val["greedy"], levels[val["count_logits"].argmax(-1)]),
                                        val["greedy"])["p@1"]}
    for ranking in ("greedy", "inclusion"):
        scores = out[ranking]
        report = multilabel_report(Y_test, top_k_sets(scores, counts), scores, inv_propensities=inv)
        row.update({f"{ranking}_{m}": report[m] for m in ("p@1", "p@3", "p@5", "ndcg@3", "example_f1")})
    for name, probs in (("f1_raw", probs_raw), ("f1_cal", probs_cal)):
        predicted, sizes = f1_decision(probs, levels, out["cond"], out["cond_labels"], Y.shape[1])
        report = multilabel_report(Y_test, predicted, out["inclusion"], inv_propensities=inv)
        row[f"{name}_example_f1"] = report["example_f1"]
        row[f"{name}_mean_labels"] = float(sizes.mean())
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{args.data}.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
