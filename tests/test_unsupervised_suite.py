"""Smoke test of experiments/unsupervised_suite.py (digits, 200 rows, 1 epoch, every method and the sweep)."""

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import unsupervised_suite  # noqa: E402


def read(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_suite_smoke(tmp_path):
    assert unsupervised_suite.main(["--smoke", "--datasets", "digits", "--seeds", "0", "--jobs", "0",
                                    "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "unsupervised_digits_smoke.csv")
    assert [r["method"] for r in rows] == list(unsupervised_suite.METHODS)
    assert all(r["config"] == "unsupervised_suite.toml" and r["seed"] == "0" for r in rows)
    by_method = {r["method"]: r for r in rows}
    for method in ("sdlgm", "sdlgm_enumerate", "sdlgm_fixed_L"):
        assert int(by_method[method]["max_nnz"]) <= 3 and by_method[method]["codes_over_L0"] == "0"
    # L_i fixed to L0: every code uses all 3 slots
    assert float(by_method["sdlgm_fixed_L"]["mean_nnz"]) == 3.0
    assert by_method["dense_vae"]["mean_nnz"] == "12.0000"
    k = int(by_method["topk_sae"]["k_or_alpha"].split("=")[1])
    assert float(by_method["topk_sae"]["max_nnz"]) <= k and by_method["topk_sae"]["test_elbo"] == "nan"
    assert all(0.0 <= float(r["probe_accuracy"]) <= 1.0 and float(r["recon"]) > 0 for r in rows)
    summary = read(tmp_path / "unsupervised_digits_smoke_summary.csv")
    assert len(summary) == len(unsupervised_suite.METHODS) and "recon_std" in summary[0]
    sweep = read(tmp_path / "unsupervised_digits_smoke_sweep.csv")
    assert {(r["method"], r["L0"]) for r in sweep} == {(m, L0) for m in unsupervised_suite.SWEEP_METHODS
                                                       for L0 in ("2", "3")}
    assert (tmp_path / "unsupervised_digits_smoke_sweep.png").stat().st_size > 5000


def test_tables_script_renders_the_summary(tmp_path, capsys):
    import tables

    assert unsupervised_suite.main(["--smoke", "--datasets", "digits", "--seeds", "0", "1", "--jobs", "0",
                                    "--methods", "sdlgm", "topk_sae", "--no-sweep", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert tables.main([str(tmp_path / "unsupervised_digits_smoke_summary.csv")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["sdlgm", "topk_sae"]
    assert " ± " in rows[0] and "| n/a |" in rows[1]  # the top-k autoencoder has no ELBO
