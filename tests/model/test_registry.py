"""Declarative components: built-ins by name, user registration by decorator, clear errors."""

import pytest
import torch
from pyro_sdlgm import (
    GUIDES,
    SDLGM,
    SPARSITY_PRIORS,
    ConfigError,
    ModelSpec,
    SparsityPrior,
    UnknownComponentError,
    register_sparsity_prior,
)
from pyro_sdlgm.model.registry import Registry

from conftest import FAST_FIT

SPEC = ModelSpec(input_dim=4, latent_dim=10, max_sparsity=5)


def test_builtin_sparsity_priors_are_normalized_distributions():
    for name in ["uniform", "truncated_geometric", "truncated_poisson", "learned"]:
        probs = SPARSITY_PRIORS.build(name, SPEC).probs()
        assert probs.shape == (5,)
        assert torch.allclose(probs.sum(), torch.tensor(1.0))


def test_prior_options_shape_the_distribution():
    geometric = SPARSITY_PRIORS.build({"name": "truncated_geometric", "p": 0.5}, SPEC).probs()
    assert torch.allclose(geometric[1:] / geometric[:-1], torch.full((4,), 0.5))
    poisson = SPARSITY_PRIORS.build({"name": "truncated_poisson", "rate": 3.0}, SPEC).probs()
    assert int(poisson.argmax()) + 1 == 3 or int(poisson.argmax()) + 1 == 2  # Poisson(3) modes at 2 and 3


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownComponentError, match="unknown sparsity prior 'poisson'.*truncated_poisson"):
        SPARSITY_PRIORS.build("poisson", SPEC)
    with pytest.raises(UnknownComponentError, match="mlp_per_slot"):
        SDLGM(input_dim=4, latent_dim=10, max_sparsity=5, guide="transformer").config


def test_bad_option_names_the_option():
    with pytest.raises(ConfigError, match="rate"):
        SPARSITY_PRIORS.build({"name": "truncated_poisson", "lambda": 2.0}, SPEC)
    with pytest.raises(ConfigError, match="rate must be positive"):
        SPARSITY_PRIORS.build({"name": "truncated_poisson", "rate": -1.0}, SPEC)
    with pytest.raises(ConfigError, match="'name'"):
        SPARSITY_PRIORS.build({"rate": 2.0}, SPEC)


def test_duplicate_registration_is_refused():
    registry = Registry("thing")
    registry.register("a")(lambda spec: 1)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("a")(lambda spec: 2)
    registry.register("a", overwrite=True)(lambda spec: 3)
    assert registry.build("a", None) == 3


def test_user_registered_prior_is_used_by_name(binary_data):
    name = "test_two_point"
    if name not in SPARSITY_PRIORS:

        @register_sparsity_prior(name)
        class TwoPoint(SparsityPrior):
            """All mass on the levels 1 and L0."""

            def __init__(self, spec, weight: float = 0.5):
                super().__init__(spec)
                self.weight = weight

            def logits(self):
                logits = torch.full_like(self.levels, -30.0)
                logits[0], logits[-1] = 0.0, 0.0
                return logits

    model = SDLGM(input_dim=12, latent_dim=6, max_sparsity=3, sparsity_prior={"name": name, "weight": 0.3})
    assert type(model.model_.sparsity_prior).__name__ == "TwoPoint"
    history = model.fit(binary_data, **FAST_FIT).history_
    assert len(history) == 2 and all(map(lambda r: r["train_loss"] == r["train_loss"], history))


def test_guides_registry_has_both_builtins():
    assert {"mlp_per_slot", "mlp_shared_slots"} <= set(GUIDES.names())
