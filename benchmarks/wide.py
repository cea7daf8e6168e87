"""Wide codes: the SDLGM step against a top-k autoencoder's at K from 200 to 100,000.

    .venv/bin/python -m benchmarks.wide [--K 200 4096 16384 100000] [--L0 32] [--batch 256]
                                        [--layouts gumbel_topk per_slot] [--out benchmarks/results/wide]

For each ``K`` (and ``L0``), with ``D = 784`` Bernoulli data, batch 256, the library's default
networks (encoder (512, 256), decoder (256, 512), binary codes) and the same sizes for the
top-k autoencoder (``experiments.unsupervised_baselines.TopKAutoencoder``, ``k = L0``, its
dense decoder):

- **time**: SDLGM (``Trainer.step``) and the autoencoder (an Adam step on its loss) in one
  process, in alternating rounds, so that both see the same machine; the median step of each;
- **memory**: the increase of peak RSS over a fresh process's level before building the
  networks, one process per variant (peak RSS only grows, so variants cannot share one);
- the memory guard's estimate for the SDLGM cell.

A cell whose guard estimate exceeds ``--cap-gb`` is not run (``per_slot`` at large ``K``).
Results: ``wide.csv`` and ``wide.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ["K", "L0", "batch", "layout", "sdlgm_step_s", "topk_step_s", "time_ratio", "sdlgm_peak_mb", "topk_peak_mb",
          "memory_ratio", "guard_estimate_mb"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(batch: int):
    import torch

    torch.manual_seed(0)
    return (torch.rand(batch, 784) > 0.5).float()


def _sdlgm_step(K: int, L0: int, batch: int, layout: str):
    from pyro_sdlgm import SDLGM
    from pyro_sdlgm.config import TrainConfig
    from pyro_sdlgm.inference.trainer import Trainer

    model = SDLGM(input_dim=784, latent_dim=K, max_sparsity=L0, likelihood="bernoulli", slot_layout=layout)
    trainer = Trainer(model.model_, model.guide_, TrainConfig(batch_size=batch, progress=False, memory_limit_gb="off"))
    x = _data(batch)
    schedule = dict(tau_sparsity=0.5, tau_support=0.5, kl_weight=1.0)
    return lambda: trainer.step((x,), num_data=4 * batch, schedule=schedule, validate=False)


def _topk_step(K: int, L0: int, batch: int):
    import torch

    from experiments.unsupervised_baselines import TopKAutoencoder

    module = TopKAutoencoder(784, K, L0)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    x = _data(batch)

    def step():
        optimizer.zero_grad()
        loss = module.loss(x, 0.5, 1.0).mean()
        loss.backward()
        optimizer.step()
    return step


def _timed(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def worker(args) -> dict:
    """One process: ``--measure memory-sdlgm | memory-topk | time``."""
    import torch

    torch.set_num_threads(args.threads)
    base = _peak_mb()
    if args.measure == "time":
        steps = {"sdlgm": _sdlgm_step(args.K, args.L0, args.batch, args.layout), "topk": _topk_step(args.K, args.L0, args.batch)}
        times = {name: [] for name in steps}
        for name, step in steps.items():
            _timed(step, 2)  # warm-up
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name] += _timed(step, args.steps)
        return {f"{name}_step_s": statistics.median(values) for name, values in times.items()}
    step = _sdlgm_step(args.K, args.L0, args.batch, args.layout) if args.measure == "memory-sdlgm" else \
        _topk_step(args.K, args.L0, args.batch)
    _timed(step, 3)
    return {"peak_mb": _peak_mb() - base}


def guard_estimate_mb(K: int, L0: int, batch: int, layout: str) -> float:
    from pyro_sdlgm import SDLGM
    from pyro_sdlgm.config import TrainConfig
    from pyro_sdlgm.inference.trainer import Trainer

    model = SDLGM(input_dim=784, latent_dim=K, max_sparsity=L0, likelihood="bernoulli", slot_layout=layout)
    config = TrainConfig(batch_size=batch, eval_batch_size=batch, memory_limit_gb=1e6)
    return Trainer(*model._meta_networks(), config).check_memory(4 * batch, 0).total / 2**20


def _run(measure: str, K: int, args, layout: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.wide", "--worker", measure, "--K", str(K), "--L0", str(args.L0),
               "--batch", str(args.batch), "--layouts", layout, "--threads", str(args.threads),
               "--rounds", str(args.rounds), "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=HERE.parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--K", nargs="+", type=int, default=[200, 4096, 16384, 100000])
    parser.add_argument("--L0", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--layouts", nargs="+", default=["gumbel_topk"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cap-gb", type=float, default=12.0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "wide")
    parser.add_argument("--worker", choices=["time", "memory-sdlgm", "memory-topk"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.K, args.layout = args.K[0], args.layouts[0]
        args.measure = args.worker
        print(json.dumps(worker(args)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for layout in args.layouts:
        for K in args.K:
            L0 = min(args.L0, K)
            estimate = guard_estimate_mb(K, L0, args.batch, layout)
            row = {"K": K, "L0": L0, "batch": args.batch, "layout": layout, "guard_estimate_mb": round(estimate)}
            if estimate > args.cap_gb * 1024:
                print(f"{layout} K={K}: not run, the guard estimates {estimate / 1024:.1f} GiB", flush=True)
                rows.append(row)
                continue
            row.update(_run("time", K, args, layout))
            row["sdlgm_peak_mb"] = round(_run("memory-sdlgm", K, args, layout)["peak_mb"])
            row["topk_peak_mb"] = round(_run("memory-topk", K, args, layout)["peak_mb"])
            row["time_ratio"] = round(row["sdlgm_step_s"] / row["topk_step_s"], 2)
            row["memory_ratio"] = round(row["sdlgm_peak_mb"] / max(row["topk_peak_mb"], 1), 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    with (args.out / "wide.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| layout | K | L0 | SDLGM step | top-k AE step | time ratio | SDLGM peak MB | top-k peak MB | memory ratio "
             "| guard estimate MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(f, "not run")) if not isinstance(r.get(f), float) else f"{r[f]:.3f}"
                                       for f in ["layout", "K", "L0", "sdlgm_step_s", "topk_step_s", "time_ratio",
                                                 "sdlgm_peak_mb", "topk_peak_mb", "memory_ratio",
                                                 "guard_estimate_mb"]) + " |")
    (args.out / "wide.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
