"""Training: both inference modes improve the ELBO, every component combination trains,
schedules reach the model, early stopping restores the best epoch, faults are named."""

import itertools
import json

import pytest
import torch
from pyro_sdlgm import (
    GUIDES, SDLGM, SPARSITY_PRIORS, SUPPORT_PRIORS, VALUE_PRIORS, ConfigError, NumericalError, TrainConfig,
    validation_split,
)
from pyro_sdlgm.inference.schedules import ExponentialAnnealing, LinearWarmup, TrainingSchedule
from pyro_sdlgm.inference.trainer import Trainer

from conftest import FAST_FIT

SMALL = dict(latent_dim=8, max_sparsity=3, decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]})


@pytest.mark.parametrize("mode, objective", [("relaxed", "discrete_kl"), ("relaxed", "relaxed"), ("enumerate", "relaxed")])
def test_every_inference_mode_improves_the_elbo(binary_data, mode, objective):
    model = SDLGM(input_dim=12, sparsity_inference=mode, objective=objective, **SMALL)
    history = model.fit(binary_data, epochs=25, batch_size=32, learning_rate=1e-2, progress=False, seed=0).history_
    first, last = history[0]["val_loss"], min(r["val_loss"] for r in history[-5:])
    assert last < first - 1.0, (first, last)


BUILTIN_COMBINATIONS = list(itertools.product(
    SPARSITY_PRIORS.names(), SUPPORT_PRIORS.names(), VALUE_PRIORS.names(), GUIDES.names()
))


@pytest.mark.parametrize("sparsity_prior, support_prior, value_prior, guide", BUILTIN_COMBINATIONS)
def test_every_registered_combination_trains(binary_data, sparsity_prior, support_prior, value_prior, guide):
    model = SDLGM(input_dim=12, latent_dim=8, max_sparsity=3, decoder_hidden=(16,), sparsity_prior=sparsity_prior,
                  support_prior=support_prior, value_prior=value_prior, guide={"name": guide, "hidden": [16]})
    history = model.fit(binary_data, **FAST_FIT).history_
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)
    assert (model.encode(binary_data[:5]) != 0).sum(1).max() <= 3


def test_schedules():
    anneal = ExponentialAnnealing(1.0, 0.25, 10)
    assert anneal(0) == 1.0 and anneal(5) == pytest.approx(0.5) and anneal(10) == anneal(100) == pytest.approx(0.25)
    warm = LinearWarmup(4)
    assert [warm(t) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert LinearWarmup(0)(0) == 1.0
    cfg = TrainConfig(tau_sparsity_start=2.0, tau_sparsity_end=0.5, anneal_fraction=0.5, kl_warmup_fraction=0.25)
    schedule = TrainingSchedule.from_config(cfg, 100)
    assert schedule(0)["tau_sparsity"] == 2.0 and schedule(50)["tau_sparsity"] == pytest.approx(0.5)
    assert schedule(0)["kl_weight"] == pytest.approx(0.04) and schedule(30)["kl_weight"] == 1.0
    assert schedule.final() == {"tau_sparsity": 0.5, "tau_support": 0.5, "kl_weight": 1.0}


def test_trainer_passes_schedules_and_writes_metrics(binary_data, tmp_path):
    model = SDLGM(input_dim=12, **SMALL)
    history = model.fit(binary_data, epochs=6, batch_size=40, progress=False, tau_support_start=2.0,
                        tau_support_end=0.5, anneal_fraction=0.5, kl_warmup_fraction=0.5, run_dir=tmp_path).history_
    taus = [r["tau_support"] for r in history]
    assert taus[0] < 2.0 and taus == sorted(taus, reverse=True) and taus[-1] == pytest.approx(0.5)
    weights = [r["kl_weight"] for r in history]
    assert weights[0] < 1.0 and weights[-1] == 1.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    assert {"epoch", "train_loss", "val_loss", "tau_sparsity", "tau_support", "kl_weight", "seconds"} <= set(history[0])


def test_early_stopping_restores_the_best_epoch(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    history = model.fit(binary_data, epochs=200, batch_size=16, learning_rate=3e-2, patience=2, progress=False).history_
    assert len(history) < 200
    best_epochs = [r for r in history if r["best_epoch"]]
    best = best_epochs[-1]["val_loss"]
    # best epochs are only chosen once annealing and warm-up are over (the first half here)
    assert best_epochs[0]["tau_support"] == pytest.approx(0.5, abs=0.01) and best_epochs[0]["kl_weight"] == 1.0
    assert history[-1]["val_loss"] > best  # stopped after non-improving epochs
    # recompute the validation loss with the restored parameters: it is the best one
    cfg = model.train_config_
    _, val_rows = validation_split(len(binary_data), cfg.validation_fraction, cfg.seed)
    x_val = torch.as_tensor(binary_data)[torch.from_numpy(val_rows)]
    trainer = Trainer(model.model_, model.guide_, cfg)
    recomputed = trainer.mean_loss(x_val, TrainingSchedule.from_config(cfg, 1).final(), cfg.seed + 1)
    assert recomputed == pytest.approx(best, rel=1e-5)


def test_fit_is_reproducible(binary_data):
    runs = [SDLGM(input_dim=12, **SMALL).fit(binary_data, **FAST_FIT).history_ for _ in range(2)]
    assert [r["train_loss"] for r in runs[0]] == [r["train_loss"] for r in runs[1]]


def test_non_finite_loss_names_the_step(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    with torch.no_grad():
        model.model_.decoder.net[0].weight.fill_(float("nan"))
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=1, progress=False))
    # with validation on, Pyro also warns which site produced the NaN
    with pytest.warns(UserWarning) as warned, pytest.raises(NumericalError, match="epoch 1, step 0"):
        trainer.fit(torch.as_tensor(binary_data))
    assert any("NaN" in str(w.message) and "site 'obs'" in str(w.message) for w in warned)


@pytest.mark.cuda
def test_fit_and_encode_on_cuda(binary_data):
    model = SDLGM(input_dim=12, **SMALL)
    model.fit(binary_data, device="cuda", **FAST_FIT)
    assert model.device_.type == "cuda"
    assert (model.encode(binary_data) != 0).sum(1).max() <= 3


def test_early_stopping_is_announced_with_the_restored_epoch(binary_data, capsys):
    model = SDLGM(input_dim=12, **SMALL)
    history = model.fit(binary_data, epochs=200, batch_size=16, learning_rate=3e-2, patience=2, progress=True).history_
    err = capsys.readouterr().err
    restored = [r["epoch"] for r in history if r["best_epoch"]][-1]  # counted from 1, as the bar counts
    assert len(history) < 200 and restored < len(history)
    announcement = [line for line in err.replace("\r", "\n").splitlines() if "early stopping" in line]
    assert len(announcement) == 1
    assert f"epoch {len(history)}" in announcement[0] and f"epoch {restored}" in announcement[0]
    # the bar ends at the epoch training stopped at, not one before it
    assert f"{len(history)}/200" in err and f"{len(history) - 1}/200" not in err.split("early stopping")[-1]


def test_num_threads_applies_while_training_and_is_restored(binary_data):
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    seen = []
    model = SDLGM(input_dim=12, **SMALL)
    trainer = Trainer(model.model_, model.guide_, TrainConfig(epochs=1, batch_size=40, progress=False,
                                                             num_threads=target),
                      batch_kwargs=lambda batch: seen.append(torch.get_num_threads()) or {})
    trainer.fit(torch.as_tensor(binary_data))
    assert seen == [target] * 3
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="num_threads"):
        TrainConfig(num_threads=0).validate()
