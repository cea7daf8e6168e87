"""Everything that trains or predicts, with ``device = "cuda"``.

Marked ``cuda`` (``multi_gpu`` for NCCL): conftest skips them, with the reason, on machines
without a GPU, which is where CI runs. Run them on a GPU machine with ``pytest -m "cuda or multi_gpu"``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAST_FIT, multilabel_run_config

from pyro_sdlgm import SDLGM, SDLGMClassifier
from pyro_sdlgm.app.cli import main as cli_main

SMALL = dict(latent_dim=8, max_sparsity=3, decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]})

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("mode", ["relaxed", "enumerate"])
def test_sdlgm_fit_encode_posterior_evaluate_on_cuda(binary_data, tmp_path, mode):
    model = SDLGM(input_dim=12, sparsity_inference=mode, objective="relaxed" if mode == "enumerate" else "discrete_kl",
                  **SMALL)
    model.fit(binary_data, device="cuda", **FAST_FIT)
    assert next(model.model_.parameters()).device.type == "cuda"
    codes = model.encode(binary_data)
    assert (codes != 0).sum(1).max() <= 3
    idata = model.posterior(binary_data[:10], num_samples=20)
    assert idata.posterior["sparsity"].shape == (1, 20, 10)
    assert np.isfinite(model.evaluate(binary_data)["elbo"])
    model.save(tmp_path / "m.pt")
    reloaded = SDLGM.load(tmp_path / "m.pt")  # onto the CPU by default
    np.testing.assert_allclose(reloaded.encode(binary_data), codes, atol=1e-5)


def test_sdlgm_resume_on_cuda_equals_an_uninterrupted_run(binary_data, tmp_path):
    options = dict(FAST_FIT, epochs=3, device="cuda", checkpoint_every=1)
    full = SDLGM(input_dim=12, **SMALL)
    full_history = full.fit(binary_data, run_dir=tmp_path / "full", **options).history_
    crashed = SDLGM(input_dim=12, **SMALL)
    crashed.fit(binary_data, run_dir=tmp_path / "part", **dict(options, epochs=3))
    (tmp_path / "part" / "checkpoints" / "epoch_000003.pt").unlink()
    resumed = SDLGM(input_dim=12, **SMALL)
    history = resumed.fit(binary_data, run_dir=tmp_path / "part", resume=True, **options).history_
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in full_history]


def test_classifier_fit_predict_on_cuda():
    rng = np.random.default_rng(0)
    Y = (rng.random((200, 10)) < 0.2).astype(np.float32)
    Y[Y.sum(1) == 0, 0] = 1
    X = Y @ rng.normal(size=(10, 8)).astype(np.float32)
    clf = SDLGMClassifier(10, 10, hidden=(32,))
    clf.fit(X, Y, device="cuda", **FAST_FIT)
    predicted = clf.predict(X)
    assert predicted.shape == (200, 10) and (np.asarray(predicted.sum(1)).ravel() <= 10).all()
    assert clf.posterior(X[:5], num_samples=10).posterior["sparsity"].shape == (1, 10, 5)


def test_cli_multilabel_run_on_cuda(tmp_path, capsys):
    config, _, _ = multilabel_run_config(tmp_path, training='epochs = 2\nprogress = false\ndevice = "cuda"',
                                         run_dir=tmp_path / "run")
    assert cli_main(["train", "--config", str(config)]) == 0
    assert "P@1" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "evaluation.json").read_text())["num_examples"] == 40


@pytest.mark.multi_gpu
def test_two_processes_on_two_gpus_with_nccl(tmp_path):
    from test_distributed import TINY_RUN, torchrun

    (tmp_path / "run.toml").write_text(TINY_RUN.replace('device = "cpu"', 'device = "cuda"'))
    done = torchrun("-m", "pyro_sdlgm", "train", "--config", "run.toml", "--run-dir", "two", cwd=tmp_path)
    assert "2 data-parallel processes" in done.stdout
    assert torch.load(tmp_path / "two" / "model.pt", weights_only=True)["format"] == "pyro_sdlgm.SDLGM"
