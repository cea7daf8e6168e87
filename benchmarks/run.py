"""SDLGM performance and scale benchmark (issue #6): one command, results in ``benchmarks/results/``.

    .venv/bin/python -m benchmarks.run [--quick] [--device auto|cpu|cuda] [--out benchmarks/results]

Measures, for the unsupervised and the multi-label model: training examples per second, time
per step and peak memory; the ratio of the SDLGM step to a dense VAE (MLP for multi-label)
step and of the Pyro step to a hand-written PyTorch loss of the same model, both timed
interleaved in one process on the same data and network sizes; and scaling curves over
``K`` and ``L0`` with each configuration in a fresh process. Configurations whose memory, as
the library estimates it (:mod:`pyro_sdlgm.inference.resources`), exceeds ``--memory-cap-gb`` are not
run; a running one is stopped if its resident memory passes the hard limit. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
import torch
from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

logger = logging.getLogger("benchmarks")

GIB = 2**30
DEFAULT_CAP_GB = 12.0
TARGETS = {"sparse_overhead": 1.5, "pyro_overhead": 1.3, "memory_gb": 4.0}
TARGET_CELL = {"K": 100_000, "L0": 32, "batch": 256}
ALL_MODES = ("unsupervised:per_slot", "multilabel:set_bound", "multilabel:per_slot", "multilabel:shared",
             "multilabel:shortlist")


def settings(args) -> dict:
    """Sizes and step counts of a full or a ``--quick`` run."""
    if args.quick:
        s = dict(unsup_dim=64, ml_dim=50, num_data=256, head_K=32, head_L0=4, head_batch=16, grid_K=[16, 64],
                 grid_L0=[2, 4], grid_batch=32, warmup=1, grid_warmup=1, head_steps=3, head_seconds=5.0, rounds=2,
                 round_steps=2, compare_seconds=5.0, grid_steps=2, grid_min_steps=1, grid_seconds=5.0,
                 run_targets=False)
    else:
        s = dict(unsup_dim=784, ml_dim=1000, num_data=4096, head_K=200, head_L0=10, head_batch=128,
                 grid_K=[200, 2_000, 20_000, 100_000], grid_L0=[5, 20, 50], grid_batch=256, warmup=3, grid_warmup=1,
                 head_steps=40, head_seconds=20.0, rounds=10, round_steps=10, compare_seconds=90.0, grid_steps=15,
                 grid_min_steps=3, grid_seconds=15.0, run_targets=True)
    for key in ("grid_K", "grid_L0"):
        override = getattr(args, key)
        if override:
            s[key] = [int(v) for v in override.split(",")]
    s["density"] = 0.05
    return s


# ----------------------------------------------------------------------------- machine


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device, threads: int) -> dict:
    import numpy
    import pyro
    from benchmarks.worker import cpu_model, device_name

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available_to_process": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_total_gb": round((_meminfo("MemTotal") or 0) / GIB, 2),
        "ram_available_at_start_gb": round((_meminfo("MemAvailable") or 0) / GIB, 2),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
        "torch_threads": threads,
        "device": device.type,
        "device_name": device_name(device),
        "cuda_memory_gb": round(torch.cuda.get_device_properties(device).total_memory / GIB, 2)
        if device.type == "cuda" else None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_tracked_changes": None if status is None else bool(status),
    }


# ----------------------------------------------------------------------------- estimates


def library_estimate(job: dict) -> dict | None:
    """The library's training-memory estimate for the SDLGM of ``job`` (networks built on the meta
    device; the trainer's formula, without a validation pass), or None for the dense baselines."""
    import inspect

    from benchmarks.worker import UNSUPERVISED_GUIDES

    from pyro_sdlgm import SDLGMClassifier
    from pyro_sdlgm import ModelConfig
    from pyro_sdlgm.config import TrainConfig
    from pyro_sdlgm.inference.resources import guard_training_memory
    from pyro_sdlgm.estimators.sdlgm import build_model_and_guide

    config = TrainConfig(batch_size=job["batch"], memory_limit_gb=1e9, device="cpu", progress=False)
    extra = {}
    with torch.device("meta"):
        if job["task"] == "unsupervised":
            model, guide = build_model_and_guide(ModelConfig(input_dim=job["input_dim"], latent_dim=job["K"],
                                                             max_sparsity=job["L0"],
                                                             guide=UNSUPERVISED_GUIDES[job["mode"]]))
        else:
            options = dict(input_dim=job["input_dim"], per_slot=job["mode"] == "per_slot",
                           fit_objective="set_bound" if job["mode"] == "set_bound" else "elbo",
                           **({} if job["mode"] == "set_bound" else {"dropout": 0.0, "hidden": [256]}))
            if job["mode"] == "shortlist":
                options["num_candidates"] = job["candidates"]
                if "num_candidates" in inspect.signature(guard_training_memory).parameters:
                    extra["num_candidates"] = job["candidates"]
            elif job["mode"] == "set_bound":
                extra["num_candidates"] = 0  # as SDLGMClassifier.fit estimates it: no slot tensor
            clf = SDLGMClassifier(job["K"], job["L0"], include_zero=False, **options)
            model, guide = clf.model_, clf.guide_  # built on first use, on the meta device
        estimate = guard_training_memory(model, guide, config, job["num_data"], 0, **extra)
    return {"total_bytes": estimate.total, "parameters_bytes": estimate.parameters,
            "training_step_bytes": estimate.training_step}


# ----------------------------------------------------------------------------- running jobs


class Runner:
    """Runs jobs in fresh processes (or in this one with ``in_process``), one at a time."""

    def __init__(self, folder: Path, in_process: bool, hard_limit_bytes: int, min_available_bytes: int):
        self.folder = folder
        self.in_process = in_process
        self.hard_limit = hard_limit_bytes
        self.min_available = min_available_bytes
        self.count = 0

    def __call__(self, job: dict, timeout_s: float) -> dict:
        self.count += 1
        if self.in_process:
            from benchmarks import worker

            try:
                result = worker.run_job(job)
            except Exception as err:  # noqa: BLE001
                result = {"job": job, "status": "failed", "error": f"{type(err).__name__}: {err}"}
            result["in_process"] = True
            return result
        return self._subprocess(job, timeout_s)

    def _subprocess(self, job: dict, timeout_s: float) -> dict:
        job_path = self.folder / f"job_{self.count:03d}.json"
        result_path = self.folder / f"result_{self.count:03d}.json"
        log_path = self.folder / f"log_{self.count:03d}.txt"
        job_path.write_text(json.dumps(job))
        threads = str(job["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        started = time.perf_counter()
        stopped = None
        with log_path.open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", str(job_path), str(result_path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            try:
                stopped, watched_peak = self._watch(proc, started, timeout_s)
            finally:
                if proc.poll() is None:  # interrupted: never leave the child running
                    proc.kill()
                    proc.wait()
        if stopped:
            logger.warning("%s: %s", describe(job), stopped)
            return {"job": job, "status": "stopped", "error": stopped, "watched_peak_rss_bytes": watched_peak}
        if not result_path.exists():
            tail = log_path.read_text()[-2000:]
            return {"job": job, "status": "failed", "error": f"exit code {proc.returncode}: {tail}"}
        result = json.loads(result_path.read_text())
        result["wall_s"] = time.perf_counter() - started
        result["watched_peak_rss_bytes"] = watched_peak
        return result

    def _watch(self, proc, started: float, timeout_s: float) -> tuple[str | None, int]:
        """Poll the child until it exits; kill it (by its handle) past the memory or time limits.

        Returns ``(why it was stopped or None, the highest resident memory seen)``."""
        watched_peak = 0
        while proc.poll() is None:
            time.sleep(0.1)
            rss = _process_rss(proc.pid)
            watched_peak = max(watched_peak, rss)
            available = _meminfo("MemAvailable")
            stopped = None
            if rss > self.hard_limit:
                stopped = (f"stopped: resident memory {rss / GIB:.2f} GB passed the hard limit "
                           f"{self.hard_limit / GIB:.2f} GB")
            elif available is not None and available < self.min_available:
                stopped = (f"stopped: the machine's available memory fell to {available / GIB:.2f} GB "
                           f"(process at {rss / GIB:.2f} GB)")
            elif time.perf_counter() - started > timeout_s:
                stopped = f"stopped: ran past {timeout_s:.0f} s"
            if stopped:
                proc.kill()
                proc.wait()
                return stopped, watched_peak
        return None, watched_peak


def _process_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def describe(job: dict) -> str:
    return (f"{job['task']}:{job['mode']} K={job['K']} L0={job['L0']} B={job['batch']} "
            f"{job['kind']} {'/'.join(job['variants'])}")


# ----------------------------------------------------------------------------- the plan


def plan(args, s: dict, device: torch.device, threads: int) -> list[dict]:
    """Every job of the run, tagged with its ``section`` (headline, compare, grid, target)."""
    from benchmarks.worker import shortlist_size

    jobs = []

    def job(section, task, mode, K, L0, batch, kind, variants, **extra):
        j = dict(section=section, task=task, mode=mode, K=K, L0=L0, batch=batch, kind=kind, variants=list(variants),
                 input_dim=s["unsup_dim"] if task == "unsupervised" else s["ml_dim"], num_data=s["num_data"],
                 density=s["density"], seed=args.seed, device=str(device), threads=threads, warmup=s["warmup"])
        if mode == "shortlist":
            j["candidates"] = min(K, shortlist_size(L0, args.candidates_per_slot, args.min_candidates))
        j.update(extra)
        jobs.append(j)

    head = dict(K=s["head_K"], L0=s["head_L0"], batch=s["head_batch"])
    measure = dict(steps=s["head_steps"], max_seconds=s["head_seconds"], min_steps=3)
    compare = dict(rounds=s["rounds"], steps=s["round_steps"], max_seconds=s["compare_seconds"])
    for task, dense in (("unsupervised", "dense_vae"), ("multilabel", "dense_mlp")):
        defaults = ["sdlgm_pyro_defaults"] if task == "unsupervised" else []
        for variant in ["sdlgm_pyro", "sdlgm_pyro_joint", "sdlgm_torch", dense] + defaults:
            job("headline", task, "per_slot", **head, kind="measure", variants=[variant], **measure)
        job("compare", task, "per_slot", **head, kind="compare",
            variants=["sdlgm_pyro", "sdlgm_torch", dense, "sdlgm_pyro_validated", "sdlgm_pyro_joint",
                      "sdlgm_torch_joint"] + defaults, **compare)
    # the classifier's default objective (the set bound) against the MLP of the same size
    job("headline", "multilabel", "set_bound", **head, kind="measure", variants=["sdlgm_pyro"], **measure)
    job("compare", "multilabel", "set_bound", **head, kind="compare", variants=["sdlgm_pyro", "dense_mlp"], **compare)
    grid = dict(steps=s["grid_steps"], max_seconds=s["grid_seconds"], min_steps=s["grid_min_steps"],
                warmup=s["grid_warmup"])
    for spec in args.modes.split(","):
        task, mode = spec.split(":")
        for K in s["grid_K"]:
            for L0 in s["grid_L0"]:
                if L0 <= K:
                    job("grid", task, mode, K, L0, s["grid_batch"], kind="measure", variants=["sdlgm_pyro"], **grid)
        job("target", task, mode, **TARGET_CELL, kind="measure", variants=["sdlgm_pyro"], **grid,
            estimate_only=not s["run_targets"])
    return jobs


def execute(jobs: list[dict], runner: Runner, cap_bytes: int) -> list[dict]:
    """Run the jobs in order; a job whose SDLGM the library estimates above ``cap_bytes`` is not run."""
    from benchmarks.worker import shortlist_available

    has_shortlist = shortlist_available()
    results = []
    bar = tqdm(jobs, desc="benchmark", unit="job")
    for job in bar:
        bar.set_postfix_str(f"{job['section']} {job['task']}:{job['mode']} K={job['K']} L0={job['L0']}")
        if job["mode"] == "shortlist" and not has_shortlist:
            results.append({"job": job, "status": "not available",
                            "error": "SDLGMClassifier in this checkout has no num_candidates (shortlist mode)"})
            continue
        estimate = None
        if any(v.startswith("sdlgm") for v in job["variants"]):
            try:
                estimate = library_estimate(job)
            except Exception as err:  # noqa: BLE001 - recorded; the job is not run
                results.append({"job": job, "status": "failed", "error": f"estimate: {type(err).__name__}: {err}"})
                continue
        if estimate is not None and estimate["total_bytes"] > cap_bytes:
            results.append({"job": job, "status": "not run", "estimate": estimate,
                            "error": f"not run: estimated {estimate['total_bytes'] / GIB:.1f} GB "
                                     f"> cap {cap_bytes / GIB:.1f} GB"})
            logger.info("%s: not run (estimated %.1f GB)", describe(job), estimate["total_bytes"] / GIB)
            continue
        if job.get("estimate_only"):
            results.append({"job": job, "status": "not run", "estimate": estimate,
                            "error": "not run: --quick (estimate only)"})
            continue
        timeout = 600 + 6 * job["max_seconds"] + (20 * job.get("rounds", 0) * job["steps"])
        result = runner(job, timeout)
        result["estimate"] = estimate
        if result["status"] == "ok":
            timing = ", ".join(f"{n} {v['median_step_s'] * 1e3:.1f} ms" for n, v in result["variants"].items())
            logger.info("%s: %s", describe(job), timing)
        else:
            logger.warning("%s: %s", describe(job), result.get("error", "")[:500])
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps (a smoke run)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the results")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per measurement (default: the CPUs available to this process)")
    parser.add_argument("--memory-cap-gb", type=float, default=None,
                        help=f"skip configurations the library estimates above this (default {DEFAULT_CAP_GB:g} GB "
                             "on CPU, but at most 70%% of the RAM; 85%% of the GPU's memory on cuda)")
    parser.add_argument("--hard-limit-gb", type=float, default=None,
                        help="stop a measurement whose resident memory passes this (default: 1.25 x the cap)")
    parser.add_argument("--min-available-gb", type=float, default=1.0,
                        help="stop a measurement when the machine's available memory falls below this")
    parser.add_argument("--modes", default=",".join(ALL_MODES), help="task:mode pairs of the scaling grid")
    parser.add_argument("--grid-K", dest="grid_K", default=None, help="comma-separated K values (override)")
    parser.add_argument("--grid-L0", dest="grid_L0", default=None, help="comma-separated L0 values (override)")
    parser.add_argument("--candidates-per-slot", type=int, default=4,
                        help="shortlist mode: C = max(this x L0, --min-candidates), at most K")
    parser.add_argument("--min-candidates", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true",
                        help="run the measurements in this process (fast; peak-memory figures are then not clean)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # a SIGTERM unwinds like Ctrl-C, so that a running measurement is stopped with the benchmark
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    started = time.perf_counter()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available on this machine")
    else:
        device = torch.device(args.device)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if args.memory_cap_gb is not None:
        cap = args.memory_cap_gb * GIB
    elif device.type == "cuda":
        cap = 0.85 * torch.cuda.get_device_properties(device).total_memory
    else:
        cap = min(DEFAULT_CAP_GB * GIB, 0.7 * (_meminfo("MemTotal") or DEFAULT_CAP_GB * GIB / 0.7))
    hard_limit = (args.hard_limit_gb * GIB) if args.hard_limit_gb else 1.25 * cap
    if device.type == "cuda":  # the cap is about the GPU; host memory keeps its own limit
        hard_limit = args.hard_limit_gb * GIB if args.hard_limit_gb else 0.8 * (_meminfo("MemTotal") or 16 * GIB)
    s = settings(args)
    machine = machine_info(device, threads)
    logger.info("machine: %s", machine)
    jobs = plan(args, s, device, threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdlgm_bench_") as folder:
        runner = Runner(Path(folder), args.in_process, int(hard_limit), int(args.min_available_gb * GIB))
        results = execute(jobs, runner, int(cap))
    machine["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    run = {
        "command": " ".join(["python", "-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "in_process": args.in_process,
        "settings": s,
        "memory_cap_gb": cap / GIB,
        "hard_limit_gb": hard_limit / GIB,
        "targets": TARGETS,
        "target_cell": TARGET_CELL,
        "candidates_rule": f"C = min(K, max({args.candidates_per_slot} x L0, {args.min_candidates}))",
        "wall_seconds": None,
    }
    run["wall_seconds"] = time.perf_counter() - started
    summary = report.write_all(args.out, machine, run, results)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
