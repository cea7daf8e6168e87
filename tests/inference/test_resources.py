"""Memory guard: configurations that cannot fit are refused before allocation, with the estimate."""

import numpy as np
import pytest
import torch
from pyro_sdlgm import SDLGM, ConfigError, SDLGMClassifier
from pyro_sdlgm.exceptions import ResourceError
from pyro_sdlgm.inference.resources import (
    GIB,
    available_memory,
    count_parameters,
    estimate_training_memory,
)

from conftest import FAST_FIT


def test_estimate_formula():
    estimate = estimate_training_memory(1000, latent_dim=200, max_sparsity=10, batch_size=128, eval_batch_size=1024)
    assert estimate.parameters == 4 * 8 * 1000
    assert estimate.training_step == 4 * 26 * 128 * 10 * 200
    assert estimate.validation_pass == 4 * 10 * 1024 * 10 * 200
    assert estimate.total == estimate.parameters + estimate.validation_pass
    # activations grow linearly in the batch, the slots and K
    doubled = estimate_training_memory(1000, 400, 10, 128)
    assert doubled.training_step == 2 * estimate.training_step


def test_available_memory_is_reported():
    free, source = available_memory(torch.device("cpu"))
    assert free is None or free > 0
    assert isinstance(source, str)


def test_wide_configuration_is_refused_before_allocation():
    # K = 100,000 and L0 = 32 with shared slot logits (26 M parameters) in the per-slot layout: the
    # activations do not fit (slot_layout="auto", the default, takes gumbel_topk there, which does)
    model = SDLGM(784, latent_dim=100_000, max_sparsity=32, guide={"name": "mlp_shared_slots", "hidden": [8]},
                  decoder_hidden=[8], slot_layout="per_slot")
    X = np.zeros((600, 784), np.float32)
    with pytest.raises(ResourceError) as info:
        model.fit(X, memory_limit_gb=4, batch_size=256, epochs=1, progress=False)
    message = str(info.value)
    assert "GiB" in message and "batch_size=256" in message and "latent_dim=100000" in message
    assert "max_sparsity=32" in message and "memory_limit_gb" in message
    # the estimate in the message: 26 numbers per (row, slot, dimension) of a batch of 256 rows
    assert f"{4 * 26 * 256 * 32 * 100_000 / GIB:.2f} GiB for a training step" in message
    assert not model.is_fitted


def test_per_slot_parameters_are_counted_without_allocating_them():
    model = SDLGM(784, latent_dim=100_000, max_sparsity=32, guide={"name": "mlp_shared_slots", "hidden": [8]})
    with torch.device("meta"):
        from pyro_sdlgm import build_model_and_guide
        from pyro_sdlgm import ModelConfig

        wide = build_model_and_guide(ModelConfig(input_dim=784, latent_dim=100_000, max_sparsity=32,
                                                 guide="mlp_per_slot", binary=False))
    assert count_parameters(*wide) > 800_000_000  # the per-slot guide's 32 x 100,000 slot logits
    assert count_parameters(model.model_, model.guide_) < 60_000_000


def test_the_check_can_be_switched_off_or_given_a_limit(binary_data):
    model = SDLGM(12, 8, 3)
    with pytest.raises(ResourceError):
        model.fit(binary_data, memory_limit_gb=1e-6, **FAST_FIT)
    model.fit(binary_data, memory_limit_gb="off", **FAST_FIT)
    assert model.is_fitted
    with pytest.raises(ConfigError, match="memory_limit_gb"):
        model.fit(binary_data, memory_limit_gb=0, **FAST_FIT)


def test_classifier_is_guarded_too():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 5)).astype(np.float32), (rng.random((40, 6)) > 0.7).astype(np.int8)
    Y[Y.sum(1) == 0, 0] = 1
    with pytest.raises(ResourceError, match="latent_dim=6"):
        SDLGMClassifier(6, 6, hidden=[8]).fit(X, Y, memory_limit_gb=1e-6, **FAST_FIT)


def test_networks_that_cannot_fit_are_refused_before_they_are_built(monkeypatch):
    """The per-slot guide at K = 100,000, L0 = 32 has 900 M parameters (3.6 GB): with 1 GiB free
    building the networks is refused from sizes read on the meta device, before allocating anything."""
    import pyro_sdlgm.inference.resources as resources

    monkeypatch.setattr(resources, "available_memory", lambda device: (GIB, "a test's 1 GiB"))
    with pytest.raises(ResourceError, match=r"3\.\d\d GiB for their 900,\d{3},\d{3} parameters.*mlp_shared_slots"):
        SDLGM(784, latent_dim=100_000, max_sparsity=32, guide="mlp_per_slot", binary=False).model_
