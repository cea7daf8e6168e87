"""One process of the data-parallel tests (tests/inference/test_distributed.py), started by torchrun or alone.

    python tests/inference/distributed_worker.py {toy,classifier} OUT_PREFIX [--rows N] [--batch B] [--nan-row I]

Trains on seeded synthetic data and writes ``OUT_PREFIX.<rank>.pt`` (weights-only: the
final parameters and the history of losses). Not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_sdlgm.inference import distributed
from pyro_sdlgm.config import TrainConfig
from pyro_sdlgm.model.generative import data_plate
from pyro_sdlgm.inference.trainer import Trainer

FIXED_TEMPERATURES = dict(tau_sparsity_start=1.0, tau_sparsity_end=1.0, tau_support_start=1.0,
                          tau_support_end=1.0, kl_warmup_fraction=0.0)


class LinearGaussian(PyroModule):
    """A model without latent variables, so the ELBO is deterministic: ``x[:, 3:] ~ Normal(W x[:, :3] + b, 1)``."""

    def __init__(self):
        super().__init__()
        self.spec = SimpleNamespace(sparsity_inference="relaxed", objective="relaxed")
        self.net = torch.nn.Linear(3, 2)

    def forward(self, x, *, num_data=None, tau_sparsity=1.0, tau_support=1.0, kl_weight=1.0):
        with data_plate(x.shape[0], num_data, x.device):
            pyro.sample("obs", dist.Normal(self.net(x[:, :3]), 1.0).to_event(1), obs=x[:, 3:])


class NoLatents(PyroModule):
    def forward(self, x, **kwargs):
        return None


def toy(args) -> dict:
    torch.manual_seed(0)
    model, guide = LinearGaussian(), NoLatents()
    x = torch.randn(args.rows, 5, generator=torch.Generator().manual_seed(1))
    if args.nan_row is not None:
        x[args.nan_row, 4] = float("nan")
    config = TrainConfig(epochs=3, batch_size=args.batch, learning_rate=0.05, progress=False, device="cpu",
                         validation_fraction=0.0, patience=None, nan_policy=args.nan_policy, **FIXED_TEMPERATURES)
    history = Trainer(model, guide, config).fit(x, torch.randn(7, 5, generator=torch.Generator().manual_seed(2)))
    return {"state": model.state_dict(), "history": history}


def classifier(args) -> dict:
    from pyro_sdlgm import SDLGMClassifier

    rng = np.random.default_rng(0)
    num_labels, n = 12, args.rows
    Y = np.zeros((n, num_labels), dtype=np.float32)
    for row in range(n):
        Y[row, rng.choice(num_labels, size=rng.integers(1, 4), replace=False)] = 1
    X = Y @ rng.normal(size=(num_labels, 10)).astype(np.float32) + 0.1 * rng.normal(size=(n, 10)).astype(np.float32)
    clf = SDLGMClassifier(num_labels, 4, hidden=(16,))
    history = clf.fit(X, Y, epochs=3, batch_size=args.batch, device="cpu", progress=False, seed=3).history_
    state = {f"model.{k}": v for k, v in clf.model_.state_dict().items()}
    state.update({f"guide.{k}": v for k, v in clf.guide_.state_dict().items()})
    return {"state": state, "history": history}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=("toy", "classifier"))
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--nan-row", type=int)
    parser.add_argument("--nan-policy", default="stop")
    parser.add_argument("--no-validation", action="store_true", help="a NaN row gives a NaN loss, not a ValueError")
    args = parser.parse_args()
    pyro.enable_validation(not args.no_validation)
    with distributed.process_group("cpu") as replicas:
        with pyro.settings.context(module_local_params=True):
            result = toy(args) if args.task == "toy" else classifier(args)
        torch.save(result, f"{args.out}.{replicas.rank}.pt")


if __name__ == "__main__":
    main()
