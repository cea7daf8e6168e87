"""Smoke test of experiments/multilabel_suite.py (Yeast, 300 rows, 1 epoch, every method, in-process)."""

import csv
import importlib.util
from pathlib import Path

import pytest


from experiments import multilabel_suite

UNIT_INTERVAL = ["p@1", "p@3", "p@5", "ndcg@3", "psp@3", "example_f1", "micro_f1", "macro_f1", "hamming_loss",
                 "subset_accuracy", "count_accuracy"]


def read(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_suite_smoke(tmp_path):
    assert multilabel_suite.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "multilabel_yeast_smoke.csv")
    expected = [m for m in multilabel_suite.METHODS
                if importlib.util.find_spec("napkinxc") is not None or not m.startswith("napkinxc")]
    assert sorted({r["method"] for r in rows}) == sorted(expected)
    seeds = {r["seed"] for r in rows}
    assert len(seeds) >= 2 and len(rows) == len(expected) * len(seeds)
    for row in rows:
        assert row["config"].endswith("multilabel_suite.toml [smoke]")
        for key in UNIT_INTERVAL:
            assert 0.0 <= float(row[key]) <= 1.0, (row["method"], key, row[key])
        assert float(row["count_mae"]) >= 0 and float(row["train_seconds"]) > 0
    oracle = [r for r in rows if r["method"] == "logistic_oracle"]
    assert all(r["oracle"] == "1" and float(r["count_accuracy"]) == 1.0 for r in oracle)
    assert all(r["decision"] == "top-4" for r in rows if r["method"].endswith("topk"))
    # the shortlist method trains on shortlists of min(4 x max_labels, K) = 14 labels (Yeast: K = 14)
    assert {"sdlgm_shared", "sdlgm_shortlist"} <= {r["method"] for r in rows}
    assert all(r["decision"] == "predicted count (trained on shortlists of 14)"
               for r in rows if r["method"] == "sdlgm_shortlist")
    summary = read(tmp_path / "multilabel_yeast_smoke_summary.csv")
    assert [s["method"] for s in summary] == expected
    logistic = [s for s in summary if s["method"].startswith("logistic")]
    assert all(float(s["p@1_std"]) == 0.0 for s in logistic)  # lbfgs is deterministic
    assert (tmp_path / "multilabel_yeast_smoke.png").stat().st_size > 0


def test_rerun_reproduces(tmp_path):
    args = ["--smoke", "--seeds", "1", "--methods", "sdlgm", "sdlgm_shortlist", "mlp_threshold"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert multilabel_suite.main(args + ["--out", str(first)]) == 0
    assert multilabel_suite.main(args + ["--out", str(second)]) == 0
    a, b = read(first / "multilabel_yeast_smoke.csv"), read(second / "multilabel_yeast_smoke.csv")
    timing = {"train_seconds", "train_peak_mb"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in b]


def test_sdlgm_variants_options():
    settings = multilabel_suite.settings_for({"bibtex": {"classifier": {"max_labels": 10, "hidden": [32]}},
                                              "sdlgm_shortlist": {"candidates_per_max_label": 4}}, "bibtex", False)
    assert multilabel_suite.sdlgm_options(settings, "sdlgm", 159) == {"max_labels": 10, "hidden": [32]}
    assert multilabel_suite.sdlgm_options(settings, "sdlgm_shared", 159)["per_slot"] is False
    shortlist = multilabel_suite.sdlgm_options(settings, "sdlgm_shortlist", 159)
    assert shortlist["per_slot"] is False and shortlist["num_candidates"] == 40
    assert multilabel_suite.sdlgm_options(settings, "sdlgm_shortlist", 25)["num_candidates"] == 25  # capped at K


def test_bad_paths_name_the_file(tmp_path):
    missing = tmp_path / "nothing.arff"
    with pytest.raises(SystemExit, match="nothing.arff"):
        multilabel_suite.main(["--arff", str(missing), "--labels", "3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no_bibtex_here"):
        multilabel_suite.main(["--datasets", "bibtex", "--bibtex", str(tmp_path / "no_bibtex_here"),
                               "--out", str(tmp_path)])
