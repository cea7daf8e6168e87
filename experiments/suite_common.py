"""What both experiment suites share: one fresh process per run, peak memory, CSV tables, summaries."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import resource
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class PeakMemory:
    """Peak resident memory above the level at entry (MB), sampled every 5 ms from ``/proc/self/statm``.

    ``ru_maxrss`` cannot be used: loading and parsing the data can set a higher all-time peak
    than training. Where ``/proc`` is missing (not Linux), ``peak_mb`` is NaN.
    """

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.peak_mb = float("nan")

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * resource.getpagesize()
        except OSError:
            return None

    def _watch(self):
        while not self._stop.wait(0.005):
            rss = self._rss()
            if rss is not None:
                self._peak = max(self._peak, rss)

    def __enter__(self):
        self._base = self._rss()
        self._peak = self._base or 0
        if self._base is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = (max(self._peak, self._rss() or 0) - self._base) / 2**20


def run_pool(run_one: Callable, jobs: list[dict], workers: int, describe: Callable[[object], str]) -> list:
    """``run_one(job)`` for every job, in job order: ``workers`` fresh spawned processes at a time,
    one per job (clean memory figures), or in this process with ``workers = 0`` (the smoke tests)."""
    from tqdm.auto import tqdm

    if workers == 0:
        return [run_one(job) for job in tqdm(jobs, desc="runs", unit="run")]
    results = []
    with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        for result in tqdm(pool.imap(run_one, jobs), total=len(jobs), desc="runs", unit="run"):
            logger.info("%s", describe(result))
            results.append(result)
    return results


def write_csv(rows: list[dict], path: Path, columns: list[str], float_format: str = ".6g") -> None:
    """Rows as CSV (floats formatted with ``float_format``), only the given columns, in their order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (format(v, float_format) if isinstance(v, float) else v) for k, v in row.items()})


def mean_and_std(group: list[dict], metrics: list[str]) -> dict[str, float]:
    """``<metric>_mean`` and ``<metric>_std`` (ddof=1; 0 for a single seed) over the rows of a group."""
    out = {}
    for key in metrics:
        values = np.array([float(r[key]) for r in group])
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
