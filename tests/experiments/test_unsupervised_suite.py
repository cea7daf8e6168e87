"""Smoke test of experiments/unsupervised_suite.py (digits, 200 rows, 1 epoch, every method and the sweep)."""

import csv
import mmap

import numpy as np


from experiments import unsupervised_suite


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
    for method in ("sdlgm", "sdlgm_values", "sdlgm_previous", "sdlgm_enumerate", "sdlgm_fixed_L"):
        assert int(by_method[method]["max_nnz"]) <= 3 and by_method[method]["codes_over_L0"] == "0"
    # L_i fixed to L0: every code uses all 3 slots
    assert float(by_method["sdlgm_fixed_L"]["mean_nnz"]) == 3.0
    # binary codes (the default for these binary images) are 0/1; sdlgm_values keeps values
    assert by_method["sdlgm"]["mse"] != by_method["sdlgm_values"]["mse"]
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
    from experiments import tables

    assert unsupervised_suite.main(["--smoke", "--datasets", "digits", "--seeds", "0", "1", "--jobs", "0",
                                    "--methods", "sdlgm", "topk_sae", "--no-sweep", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert tables.main([str(tmp_path / "unsupervised_digits_smoke_summary.csv")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["sdlgm", "topk_sae"]
    assert " ± " in rows[0] and "| n/a |" in rows[1]  # the top-k autoencoder has no ELBO


def write_idx(path, array):
    """An IDX file (big-endian header: two zero bytes, type 0x08 = uint8, the dimension count, sizes)."""
    import struct

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_suite_runs_on_a_user_idx_folder(tmp_path):
    """``--datasets idx --idx FOLDER``: any IDX images (here sklearn's digits written as IDX), with labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", (digits.images * 16).clip(0, 255))
    write_idx(folder / "train-labels-idx1-ubyte", digits.target)
    assert unsupervised_suite.main(["--smoke", "--datasets", "idx", "--idx", str(folder), "--seeds", "0", "--jobs",
                                    "0", "--methods", "sdlgm", "dense_vae", "--no-sweep", "--out", str(tmp_path)]) == 0
    rows = read(tmp_path / "unsupervised_idx_smoke.csv")
    assert [r["method"] for r in rows] == ["sdlgm", "dense_vae"]
    assert all(0.0 <= float(r["probe_accuracy"]) <= 1.0 for r in rows)  # the labels file was read


def test_rerun_reproduces_every_metric(tmp_path):
    args = ["--smoke", "--datasets", "digits", "--seeds", "0", "--jobs", "0", "--methods", "sdlgm", "topk_sae",
            "spike_slab_vae", "--no-sweep"]
    assert unsupervised_suite.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert unsupervised_suite.main([*args, "--out", str(tmp_path / "b")]) == 0
    volatile = {"train_seconds", "train_peak_mb"}
    first, second = (read(tmp_path / run / "unsupervised_digits_smoke.csv") for run in ("a", "b"))
    assert [{k: v for k, v in r.items() if k not in volatile} for r in first] == \
        [{k: v for k, v in r.items() if k not in volatile} for r in second]


def test_matched_baselines_need_sdlgm(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        unsupervised_suite.main(["--smoke", "--datasets", "digits", "--methods", "topk_sae", "--jobs", "0",
                                 "--out", str(tmp_path)])
    assert "include sdlgm in --methods" in capsys.readouterr().err


def test_peak_memory_sees_an_allocation():
    from experiments.suite_common import PeakMemory

    # A fresh anonymous mapping: a heap allocation could reuse pages the process already holds
    # (earlier tests' freed memory), which would leave the resident size unchanged.
    block = mmap.mmap(-1, 60 * 2**20)
    with PeakMemory() as meter:
        np.frombuffer(block, dtype=np.uint8)[:: mmap.PAGESIZE] = 1  # touch every page: 60 MB resident
    block.close()
    assert 50 <= meter.peak_mb < 200
