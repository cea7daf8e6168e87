import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pyro
import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped on machines without one")
    config.addinivalue_line("markers", "multi_gpu: needs two CUDA devices (NCCL); skipped otherwise")


def pytest_collection_modifyitems(config, items):
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if "cuda" in item.keywords and gpus < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (this machine has none)"))
        if "multi_gpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs two CUDA devices (this machine has {gpus})"))


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


def write_xmc(path, X, Y):
    """Write ``X (N, D)``, ``Y (N, K)`` in the Extreme Classification Repository's text format."""
    lines = [f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}"]
    for x, y in zip(X, Y):
        labels = ",".join(str(i) for i in np.flatnonzero(y))
        features = " ".join(f"{j}:{v:.4f}" for j, v in enumerate(x) if v != 0)
        lines.append(f"{labels} {features}")
    path.write_text("\n".join(lines) + "\n")


def multilabel_run_config(folder, training: str = "epochs = 2\nprogress = false", run_dir=None):
    """A tiny multi-label run (XMC files: 120 train and 40 test rows, 6 features, 4 labels learnable
    from the features) in ``folder``; returns ``(config path, X, Y)``. ``training``: the body of its
    ``[training]`` table."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 6)).astype(np.float32)
    Y = (X[:, :4] > 0.3).astype(np.int8)
    Y[Y.sum(1) == 0, 0] = 1
    write_xmc(folder / "train.txt", X[:120], Y[:120])
    write_xmc(folder / "test.txt", X[120:], Y[120:])
    config = folder / "ml.toml"
    run_line = f"run_dir = {str(run_dir)!r}\n" if run_dir is not None else ""
    config.write_text(f"""task = "multilabel"
{run_line}[classifier]
max_labels = 4
hidden = [16]
[training]
{training}
[data]
format = "xmc"
train = {str(folder / "train.txt")!r}
test = {str(folder / "test.txt")!r}
""")
    return config, X, Y


# a tiny unsupervised run for the command line: digits, 150 rows, 2 epochs
TINY = [
    "data.source=digits", "data.max_examples=150", "training.epochs=2", "training.progress=false",
    "model.latent_dim=12", "model.max_sparsity=3", "model.decoder_hidden=[16]", "model.guide.name=mlp_per_slot",
    "model.guide.hidden=[16]",
]


def count_data(n, rng, K=8, D=20, L0=4):
    """Labels are the L_i highest of a fixed random projection of x, so the count is learnable from x:
    L_i is coded by the first feature (x_0 = L_i + noise)."""
    counts = rng.integers(1, L0 + 1, n)
    W = np.random.default_rng(99).normal(size=(D, K))
    X = rng.normal(size=(n, D)).astype(np.float32)
    X[:, 0] = counts + 0.1 * rng.normal(size=n)
    order = np.argsort(-(X @ W), axis=1)
    Y = np.zeros((n, K), np.int8)
    for i, c in enumerate(counts):
        Y[i, order[i, :c]] = 1
    return X, Y, counts


#: the classifier's ELBO mode with the options it was measured with (before the set bound)
ELBO_AS_MEASURED = dict(fit_objective="elbo", dropout=0.0, ranking="greedy", calibrate_count=False, decision="count")
