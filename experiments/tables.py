"""Markdown tables (mean ± standard deviation over seeds) from the suites' summary CSV files.

    python -m experiments.tables experiments/results/unsupervised_mnist_summary.csv
    python -m experiments.tables experiments/results/multilabel_bibtex_summary.csv --columns p@1 example_f1

This is how the tables of experiments/README.md are made from the committed results.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

UNSUPERVISED = ["recon", "test_elbo", "mean_nnz", "max_nnz", "codes_over_L0", "unused_dim_fraction", "probe_accuracy",
                "count_entropy", "l_hat_equals_best",
                "epochs", "train_seconds", "train_peak_mb"]
MULTILABEL = ["p@1", "p@3", "ndcg@3", "psp@3", "example_f1", "micro_f1", "macro_f1", "count_accuracy", "count_mae",
              "count_ece",
              "train_seconds", "train_peak_mb"]


def cell(mean: str, std: str) -> str:
    m, s = float(mean), float(std)
    if math.isnan(m):
        return "n/a"
    digits = 3 if abs(m) < 10 else 1
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def table(path: Path, columns: list[str] | None = None) -> str:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    if columns is None:
        columns = UNSUPERVISED if "recon_mean" in rows[0] else MULTILABEL
    missing = [c for c in columns if f"{c}_mean" not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: no columns {missing}")
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        name = f"`{row['method']}`" + (" (oracle)" if row.get("oracle") == "1" else "")
        lines.append(f"| {name} | " + " | ".join(cell(row[f"{c}_mean"], row[f"{c}_std"]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", nargs="+", type=Path)
    parser.add_argument("--columns", nargs="+")
    args = parser.parse_args(argv)
    for path in args.summaries:
        print(f"{path.name}:\n\n{table(path, args.columns)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
