import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pyro
import pytest


@pytest.fixture(autouse=True)
def clean_pyro_state():
    """Pyro's test habit: a clean param store, validation on, and seeded RNGs for every test."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def binary_data():
    """(120, 12) binary data drawn from 3 prototypes with bit flips; seeded."""
    rng = np.random.default_rng(0)
    prototypes = rng.random((3, 12)) > 0.5
    rows = prototypes[rng.integers(0, 3, 120)]
    flips = rng.random(rows.shape) < 0.05
    return (rows ^ flips).astype(np.float32)


FAST_FIT = dict(epochs=2, batch_size=32, progress=False, seed=0)
