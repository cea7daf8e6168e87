"""The sdlgm command line end to end on tiny data: train, evaluate, encode, and its errors."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse
from conftest import TINY, multilabel_run_config, write_xmc
from pyro_sdlgm.app.cli import main



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


def test_a_classifiers_bad_component_option_leaves_no_run_folder(tmp_path, capsys):
    config, _, _ = multilabel_run_config(tmp_path)
    run_dir = tmp_path / "bad"
    assert main(["train", "--config", str(config), "--run-dir", str(run_dir),
                 'classifier.slot_layout={name = "gumbel_topk", bogus = 1}']) == 2
    assert "bad options ['bogus'] for slot layout 'gumbel_topk'" in capsys.readouterr().err
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


def run_files(run_dir):
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def test_overwrite_leaves_no_file_of_the_earlier_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "training.checkpoint_every=1", "--run-dir", str(run_dir)]) == 0
    assert main(["inspect", str(run_dir), "--num-samples", "5"]) == 0
    (run_dir / "plots" / "old_extra_plot.png").write_bytes(b"png")  # a plot name this version no longer writes
    earlier = run_files(run_dir)
    assert {"posterior.nc", "inspection.json", "sparsity_summary.csv", "checkpoints/epoch_000002.pt"} <= earlier
    fresh = tmp_path / "fresh"
    overrides = [*TINY, "training.epochs=1"]
    assert main(["train", *overrides, "--run-dir", str(fresh)]) == 0
    assert main(["train", *overrides, "--run-dir", str(run_dir), "--overwrite"]) == 0
    assert run_files(run_dir) == run_files(fresh)  # nothing of the earlier run is left beside the new one
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_overwrite_refuses_a_folder_holding_files_no_run_writes(trained_run, tmp_path, capsys):
    folder = tmp_path / "mine"
    shutil.copytree(trained_run, folder)
    (folder / "notes.txt").write_text("my notes")
    before = run_files(folder)
    assert main(["train", *TINY, "--run-dir", str(folder), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert run_files(folder) == before and (folder / "notes.txt").read_text() == "my notes"


def test_help_imports_neither_torch_nor_pyro():
    code = ("import sys\nfrom pyro_sdlgm.app.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'pyro', 'sklearn', 'scipy') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


def test_threads_flag_is_recorded_as_training_num_threads(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--threads", "1", "--run-dir", str(run_dir)]) == 0
    assert "num_threads: 1" in (run_dir / "config.yaml").read_text()
    assert main(["evaluate", str(run_dir), "--threads", "1"]) == 0
    with pytest.raises(SystemExit):
        main(["evaluate", str(run_dir), "--threads", "0"])
    assert "--threads" in capsys.readouterr().err


def test_encode_writes_the_source_row_of_each_code(trained_run, tmp_path):
    from pyro_sdlgm import SDLGM
    from pyro_sdlgm.app.run_config import load_run_config
    from pyro_sdlgm.data.unsupervised import load_source, prepare_dataset

    out = tmp_path / "codes.npz"
    assert main(["encode", str(trained_run), "--out", str(out)]) == 0
    rows = np.load(tmp_path / "codes_rows.npy")
    codes = scipy.sparse.load_npz(out).toarray()
    assert rows.shape == (15,) and len(set(rows.tolist())) == 15
    config = load_run_config(trained_run / "config.yaml")
    source = prepare_dataset(dataclasses.replace(config.data, max_examples=None), "bernoulli")
    assert source.X.shape[0] == load_source("digits").X.shape[0] == 1797
    np.testing.assert_array_equal(SDLGM.load(trained_run / "model.pt").encode(source.X[rows]), codes)


def test_an_override_typo_is_blamed_on_the_command_line_not_the_file(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[training]\nepochs = 2\n')
    assert main(["train", "--config", str(config), "training.epoch=3", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'training.epoch'" in err and "command-line" in err and str(config) not in err
    config.write_text('[training]\nepoch = 2\n')  # the file's own typo names the file
    assert main(["train", "--config", str(config), "training.epochs=3", "--run-dir", str(tmp_path / "r")]) == 2
    assert str(config) in capsys.readouterr().err
