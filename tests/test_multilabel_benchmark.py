"""Smoke test of experiments/multilabel_benchmark.py (Yeast, 300 rows, 1 epoch)."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import multilabel_benchmark  # noqa: E402


def test_benchmark_smoke(tmp_path):
    assert multilabel_benchmark.main(["--datasets", "yeast", "--smoke", "--out", str(tmp_path)]) == 0
    with (tmp_path / "multilabel_yeast_smoke.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows][0] == "SDLGM (predicted count)" and len(rows) == 4
    assert all(0.0 <= float(r["p@1"]) <= 1.0 for r in rows)
