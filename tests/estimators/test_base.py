"""The estimator base: one seeded hold-out for both classes, networks built once, one save/load
with ``map_location``, the public training step."""

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro_sdlgm import SDLGM, CheckpointError, NumericalError, SDLGMClassifier, TrainConfig, validation_split
from pyro_sdlgm.estimators import sdlgm as sdlgm_module
from pyro_sdlgm.inference.trainer import Trainer

from conftest import count_data

SMALL = dict(latent_dim=8, max_sparsity=3, decoder_hidden=(16,), guide={"name": "mlp_per_slot", "hidden": [16]})
FIT = dict(epochs=3, batch_size=32, progress=False, seed=3, validation_fraction=0.2)


def test_the_hold_out_is_validation_split_for_both_estimators(binary_data):
    fit_rows, val_rows = validation_split(len(binary_data), FIT["validation_fraction"], FIT["seed"])
    held_out = SDLGM(12, **SMALL).fit(binary_data, **FIT).history_
    explicit = SDLGM(12, **SMALL).fit(binary_data[fit_rows], validation_data=binary_data[val_rows], **FIT).history_
    assert [r["val_loss"] for r in held_out] == [r["val_loss"] for r in explicit]
    assert [r["train_loss"] for r in held_out] == [r["train_loss"] for r in explicit]

    X, Y, _ = count_data(200, np.random.default_rng(0))
    fit_rows, val_rows = validation_split(len(X), FIT["validation_fraction"], FIT["seed"])
    held_out = SDLGMClassifier(8, 4, hidden=[16]).fit(X, Y, **FIT).history_
    explicit = SDLGMClassifier(8, 4, hidden=[16]).fit(X[fit_rows], Y[fit_rows],
                                                      validation_data=(X[val_rows], Y[val_rows]), **FIT).history_
    assert [r["val_loss"] for r in held_out] == [r["val_loss"] for r in explicit]


def test_validation_split_is_seeded_and_disjoint():
    fit_rows, val_rows = validation_split(50, 0.2, 7)
    assert len(val_rows) == 10 and sorted(np.concatenate([fit_rows, val_rows]).tolist()) == list(range(50))
    assert np.array_equal(validation_split(50, 0.2, 7)[1], val_rows)
    assert not np.array_equal(validation_split(50, 0.2, 8)[1], val_rows)
    assert validation_split(50, 0.0, 7)[1] is None and validation_split(1, 0.5, 7)[1] is None


def test_sdlgm_builds_its_networks_once_per_fit(binary_data, monkeypatch):
    built = []
    real = sdlgm_module.build_model_and_guide

    def counting(config):
        built.append(torch.empty(0).device.type)  # "meta" inside the size checks
        return real(config)

    monkeypatch.setattr(sdlgm_module, "build_model_and_guide", counting)
    model = SDLGM(12, **SMALL)
    assert built == []  # construction stores the parameters only (scikit-learn's rule)
    model.fit(binary_data, epochs=1, progress=False)
    assert "meta" in built and built.count("cpu") == 1  # sizes checked first, then built once
    assert model.model_ is not None and built.count("cpu") == 1


@pytest.mark.parametrize("estimator", ["sdlgm", "classifier"])
def test_both_estimators_load_onto_a_map_location(tmp_path, binary_data, estimator):
    if estimator == "sdlgm":
        fitted = SDLGM(12, **SMALL)
        fitted.fit(binary_data, epochs=1, progress=False)
    else:
        X, Y, _ = count_data(100, np.random.default_rng(0))
        fitted = SDLGMClassifier(8, 4, hidden=[16])
        fitted.fit(X, Y, epochs=1, progress=False)
    fitted.save(tmp_path / "m.pt")
    loaded = type(fitted).load(tmp_path / "m.pt", map_location="cpu")
    assert loaded.is_fitted and loaded.device_ == torch.device("cpu")
    for a, b in zip(fitted.model_.state_dict().values(), loaded.model_.state_dict().values()):
        assert torch.equal(a, b)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="map_location='cuda' but CUDA is not available"):
            type(fitted).load(tmp_path / "m.pt", map_location="cuda")


def test_a_checkpoint_of_the_other_class_is_refused(tmp_path, binary_data):
    fitted = SDLGM(12, **SMALL)
    fitted.fit(binary_data, epochs=1, progress=False)
    fitted.save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="pyro_sdlgm.SDLGM"):
        SDLGMClassifier.load(tmp_path / "m.pt")


def test_the_public_step_updates_the_parameters_or_refuses(binary_data):
    model = SDLGM(12, **SMALL)
    trainer = Trainer(model.model_, model.guide_, TrainConfig(device="cpu"))
    batch = (torch.as_tensor(binary_data[:16]),)
    before = {k: v.clone() for k, v in model.guide_.state_dict().items()}
    loss = trainer.step(batch, num_data=len(binary_data))
    assert np.isfinite(loss) and loss > 0
    assert any(not torch.equal(before[k], v) for k, v in model.guide_.state_dict().items())
    after = {k: v.clone() for k, v in model.guide_.state_dict().items()}
    with pytest.raises(NumericalError, match="tau_sparsity"):
        trainer.step((torch.full((4, 12), float("nan")),))
    assert all(torch.equal(after[k], v) for k, v in model.guide_.state_dict().items())  # no update made
    with pytest.raises(NumericalError, match="non-finite loss"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pyro's "Encountered NaN: loss"
        trainer.step((torch.full((4, 12), float("nan")),), validate=False)  # the site diagnosis re-traces it
    assert len(pyro.get_param_store()) == 0  # the re-trace left Pyro's global parameter store alone
