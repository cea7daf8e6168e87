"""The sdlgm command line end to end on tiny data: train, evaluate, encode, and its errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse
from conftest import multilabel_run_config, write_xmc
from pyro_sdlgm.cli import main

TINY = [
    "data.source=digits", "data.max_examples=150", "training.epochs=2", "training.progress=false",
    "model.latent_dim=12", "model.max_sparsity=3", "model.decoder_hidden=[16]", "model.guide.name=mlp_per_slot",
    "model.guide.hidden=[16]",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_train_writes_the_run_folder(trained_run, capsys):
    for name in ["config.yaml", "metrics.jsonl", "model.pt", "evaluation.json"]:
        assert (trained_run / name).stat().st_size > 0, name
    for name in ["training_curve.png", "reconstructions.png", "sparsity.png"]:
        assert (trained_run / "plots" / name).stat().st_size > 1000, name
    metrics = json.loads((trained_run / "evaluation.json").read_text())
    assert metrics["split"] == "test" and metrics["num_examples"] == 15 and metrics["max_nnz"] <= 3
    assert len((trained_run / "metrics.jsonl").read_text().splitlines()) == 2


def test_evaluate_and_encode(trained_run, tmp_path, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    assert "ELBO" in capsys.readouterr().out
    out = tmp_path / "codes.npz"
    assert main(["encode", str(trained_run), "--out", str(out), "--data", "digits"]) == 0
    codes = scipy.sparse.load_npz(out)
    assert codes.shape == (1797, 12) and np.diff(codes.tocsr().indptr).max() <= 3


def test_existing_run_folder_is_not_overwritten(trained_run, capsys):
    assert main(["train", *TINY, "--run-dir", str(trained_run)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_errors_are_reported_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "training.epoch=2", "--run-dir", str(tmp_path / "r")]) == 2
    assert "'training.epoch'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_module_entry_point(trained_run):
    result = subprocess.run([sys.executable, "-m", "pyro_sdlgm", "evaluate", str(trained_run), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["codes_over_cap"] == 0


def test_overrides_after_options_and_bad_option_types_leave_no_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "late"
    assert main(["train", "--run-dir", str(run_dir), *TINY, "model.sparsity_prior.name=truncated_poisson",
                 "model.sparsity_prior.rate='3'"]) == 2
    assert "truncated_poisson" in capsys.readouterr().err
    assert not run_dir.exists()


def test_encode_names_the_file_it_writes(trained_run, tmp_path, capsys):
    assert main(["encode", str(trained_run), "--out", str(tmp_path / "codes")]) == 0
    assert str(tmp_path / "codes.npz") in capsys.readouterr().out
    assert (tmp_path / "codes.npz").is_file()


def test_multilabel_run_train_evaluate_predict(tmp_path, capsys):
    config, X, _ = multilabel_run_config(tmp_path, run_dir=tmp_path / "run")
    assert main(["train", "--config", str(config)]) == 0
    assert "P@1" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert metrics["num_examples"] == 40 and 0 <= metrics["p@1"] <= 1
    assert main(["evaluate", str(tmp_path / "run")]) == 0
    assert "example-F1" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "run"), "--out", str(tmp_path / "pred.txt")]) == 0
    lines = (tmp_path / "pred.txt").read_text().splitlines()
    assert len(lines) == 40 and all(1 <= len(line.split()) <= 4 for line in lines)
    assert all(0 <= int(i) < 4 for line in lines for i in line.split())
    assert main(["encode", str(tmp_path / "run"), "--out", str(tmp_path / "c.npz")]) == 2
    assert "predict" in capsys.readouterr().err
    write_xmc(tmp_path / "wide.txt", X[:5], np.ones((5, 6), np.int8))  # 6 labels instead of 4
    assert main(["predict", str(tmp_path / "run"), "--data", str(tmp_path / "wide.txt"), "--out",
                 str(tmp_path / "p2.txt")]) == 2
    assert "6 labels" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "run"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
