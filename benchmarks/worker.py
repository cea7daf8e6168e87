"""One benchmark job, normally in a fresh process: ``python -m benchmarks.worker JOB.json RESULT.json``.

A job (a JSON object, built by ``run.py``) names the task (``unsupervised`` or
``multilabel``), the slot mode, the sizes, the device, the threads and the variants to time:

- ``sdlgm_pyro``: the library's training step itself, :meth:`pyro_sdlgm.inference.trainer.Trainer.step`
  (``make_elbo(spec)(model, guide)`` under ``pyro.settings.context(module_local_params=True)``,
  ``loss = loss_fn(*batch, num_data=n, **schedule) / n``, the trainer's checks, backward and
  an Adam step); Pyro's validation off, as the trainer runs every step but the first of each
  epoch (``TrainConfig.pyro_validation="epoch_start"``, the default);
- ``sdlgm_pyro_validated``: the same with Pyro's validation on (Pyro's default), as the trainer
  runs each epoch's first step, or every step with ``pyro_validation="always"``;
- ``sdlgm_pyro_joint``: the library step with ``slot_layout="joint"`` (the ``L0`` slots as one
  site, batched; the same distribution), validation off as in ``sdlgm_pyro``;
- ``sdlgm_torch_joint``: the hand-written loss of that layout (batched slots, no Pyro);
- ``sdlgm_torch``: the same step on the hand-written loss of :mod:`torch_reference`
  (same networks, same draws, same value);
- ``sdlgm_pyro_defaults``: the library step with every model option at its default;
  ``sdlgm_pyro_defaults_joint`` and ``sdlgm_pyro_defaults_topk`` the same with
  ``slot_layout="joint"`` or ``"gumbel_topk"``;
- ``dense_vae``: the unsupervised suite's Gaussian VAE with SDLGM's encoder/decoder sizes and K;
- ``dense_mlp``: an MLP ``D -> hidden -> K`` with binary cross-entropy (the multi-label
  counterpart without any latent structure; SDLGM's hidden sizes).

The other variants share one step function (:func:`train_step`: forward, the trainer's finiteness
checks and gradient norm, backward, ``Adam.step``, as ``Trainer.step`` takes them), so the ratios
compare the losses alone.
A ``measure`` job times one variant and reports its peak memory; a ``compare`` job times
several variants interleaved in rounds (so that load from other processes falls on all of
them alike) and reports the ratios of their median step times.
"""

from __future__ import annotations

import gc
import inspect
import json
import math
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyro
import scipy.sparse
import torch
from benchmarks import torch_reference

from pyro_sdlgm import SDLGMClassifier
from pyro_sdlgm import ModelConfig
from pyro_sdlgm.config import TrainConfig
from pyro_sdlgm.model.networks import mlp
from pyro_sdlgm.inference.schedules import final_schedule
from pyro_sdlgm.estimators.sdlgm import build_model_and_guide
from pyro_sdlgm.data.arrays import take_rows
from pyro_sdlgm.inference.trainer import Trainer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PYRO_VARIANTS = ("sdlgm_pyro", "sdlgm_pyro_validated", "sdlgm_pyro_joint", "sdlgm_pyro_defaults",
                 "sdlgm_pyro_defaults_joint", "sdlgm_pyro_defaults_topk")
#: the library's defaults with another slot layout
DEFAULT_LAYOUTS = {"sdlgm_pyro_defaults": "auto", "sdlgm_pyro_defaults_joint": "joint",
                   "sdlgm_pyro_defaults_topk": "gumbel_topk"}
JOINT_VARIANTS = ("sdlgm_pyro_joint", "sdlgm_torch_joint")
UNSUPERVISED_GUIDES = {"per_slot": "mlp_per_slot", "shared": "mlp_shared_slots"}

# ----------------------------------------------------------------------------- shortlist mode


def shortlist_available() -> bool:
    """Whether this checkout's :class:`SDLGMClassifier` takes ``num_candidates`` (the shortlist mode)."""
    return "num_candidates" in inspect.signature(SDLGMClassifier.__init__).parameters


#: names under which the classifier may expose the per-batch candidate function
SHORTLIST_HOOKS = ("_batch_kwargs", "batch_kwargs", "candidate_batch_kwargs", "shortlist_batch_kwargs")


def shortlist_batch_kwargs(clf, model, guide, num_data: int):
    """The function ``batch -> {"candidates": (N, C) LongTensor}`` the classifier passes to the Trainer.

    Looks for it on the classifier under the names in :data:`SHORTLIST_HOOKS`: either the function
    itself (called with the batch) or a factory returning it (called with no argument).
    Raises ``LookupError`` when none is found.
    """
    for name in SHORTLIST_HOOKS:
        attr = getattr(clf, name, None)
        if not callable(attr):
            continue
        try:
            positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            required = [p for p in inspect.signature(attr).parameters.values()
                        if p.default is inspect.Parameter.empty and p.kind in positional]
        except (TypeError, ValueError):
            required = [None]
        return attr() if not required else attr
    raise LookupError("SDLGMClassifier takes num_candidates, but no candidate function was found under "
                      f"{', '.join(SHORTLIST_HOOKS)}; update benchmarks/worker.py:shortlist_batch_kwargs")


def shortlist_size(max_labels: int, per_slot: int, minimum: int) -> int:
    """Candidates per row in shortlist mode: ``max(per_slot * L0, minimum)``."""
    return max(per_slot * max_labels, minimum)


# ----------------------------------------------------------------------------- data


def unsupervised_data(num_rows: int, input_dim: int, seed: int) -> torch.Tensor:
    """Binary data of MNIST's shape: 20 random prototypes (20% ones) with 5% bit flips."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((20, input_dim)) < 0.2
    rows = prototypes[rng.integers(0, 20, num_rows)]
    flips = rng.random(rows.shape) < 0.05
    return torch.from_numpy((rows ^ flips).astype(np.float32))


def multilabel_data(num_rows: int, input_dim: int, num_labels: int, max_labels: int, density: float, seed: int):
    """Sparse features ``(N, D)`` (``density`` non-zeros, positive values) and labels ``(N, K)``
    with ``1..L0`` distinct labels per row, uniformly; both CSR float32."""
    rng = np.random.default_rng(seed)
    X = scipy.sparse.random(num_rows, input_dim, density=density, format="csr", dtype=np.float32,
                            random_state=rng, data_rvs=lambda n: rng.random(n).astype(np.float32) + 0.1)
    counts = rng.integers(1, max_labels + 1, num_rows)
    indices = [np.sort(rng.choice(num_labels, size=c, replace=False)) for c in counts]
    indptr = np.concatenate([[0], np.cumsum(counts)])
    Y = scipy.sparse.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(indices), indptr),
                                shape=(num_rows, num_labels))
    return X, Y


# ----------------------------------------------------------------------------- memory


def current_rss() -> int:
    """Resident memory of this process now (bytes), from ``/proc/self/statm``; 0 if unavailable."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def peak_rss() -> int:
    """Peak resident memory of this process so far (bytes; ``ru_maxrss`` is in KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ----------------------------------------------------------------------------- variants


class Variant:
    """A loss closure ``batch -> scalar`` over ``params``, or (``step``) a whole training step
    ``batch -> float`` that owns its optimizer (the library's)."""

    def __init__(self, name: str, loss, params, step=None):
        self.name = name
        self.loss = loss
        self.params = [p for p in params if p.requires_grad]
        self.step = step


def _unique_parameters(*modules):
    return list({id(p): p for m in modules for p in m.parameters()}.values())


def _pyro_variant(name, model, guide, num_data, schedule, device, batch_kwargs=None):
    """The library's step: :meth:`Trainer.step` with Pyro's validation off, as the trainer runs every
    step but each epoch's first (on for ``sdlgm_pyro_validated``)."""
    trainer = Trainer(model, guide, TrainConfig(device=str(device), learning_rate=1e-3), batch_kwargs=batch_kwargs)
    validate = name == "sdlgm_pyro_validated"

    def step(batch):
        return trainer.step(batch, num_data=num_data, schedule=schedule, validate=validate)

    return Variant(name, None, _unique_parameters(model, guide), step=step)


def build_variant(job: dict, name: str, device: torch.device) -> Variant:
    """Build the networks of variant ``name`` for ``job`` (seeded) on ``device``."""
    torch.manual_seed(job["seed"])
    pyro.set_rng_seed(job["seed"])
    n, schedule = job["num_data"], final_schedule()
    K, L0, D = job["K"], job["L0"], job["input_dim"]
    if job["task"] == "unsupervised":
        if name == "dense_vae":
            from experiments.unsupervised_baselines import DenseVAE

            cfg = ModelConfig()
            vae = DenseVAE(D, K, encoder_hidden=(512, 256), decoder_hidden=cfg.decoder_hidden).to(device)
            return Variant(name, lambda batch: vae.loss(batch[0], schedule["tau_sparsity"], schedule["kl_weight"]).sum()
                           * (n / batch[0].shape[0]) / n, vae.parameters())
        if name in DEFAULT_LAYOUTS:  # the library's defaults (guide, binary codes for the Bernoulli likelihood)
            config = ModelConfig(input_dim=D, latent_dim=K, max_sparsity=L0, slot_layout=DEFAULT_LAYOUTS[name])
        else:
            config = ModelConfig(input_dim=D, latent_dim=K, max_sparsity=L0, guide=UNSUPERVISED_GUIDES[job["mode"]],
                                 slot_layout="joint" if name in JOINT_VARIANTS else "per_slot")
        model, guide = build_model_and_guide(config)
        model.to(device), guide.to(device)
        if name in PYRO_VARIANTS:
            return _pyro_variant(name, model, guide, n, schedule, device)
        if name in ("sdlgm_torch", "sdlgm_torch_joint"):
            return Variant(name, lambda batch: torch_reference.unsupervised_loss(model, guide, *batch, num_data=n,
                                                                                 **schedule) / n,
                           _unique_parameters(model, guide))
        raise ValueError(f"unknown unsupervised variant {name!r}")
    # multi-label
    # mode "set_bound": the classifier's default objective; the other modes are its ELBO
    options = dict(input_dim=D, per_slot=job["mode"] == "per_slot",
                   slot_layout="joint" if name in JOINT_VARIANTS else "per_slot",
                   fit_objective="set_bound" if job["mode"] == "set_bound" else "elbo")
    if job["mode"] != "set_bound":  # the ELBO modes as they were measured before (and as torch_reference computes)
        options.update(dropout=0.0, hidden=[256])
    if job["mode"] == "shortlist":
        options["num_candidates"] = job["candidates"]
    clf = SDLGMClassifier(K, L0, include_zero=False, **options)
    if name == "dense_mlp":
        network = mlp(D, list(clf.params["hidden"]), K, clf.params["activation"]).to(device)
        bce = torch.nn.BCEWithLogitsLoss(reduction="none")
        return Variant(name, lambda batch: bce(network(batch[0]), batch[1]).sum() * (n / batch[0].shape[0]) / n,
                       network.parameters())
    model, guide = clf.model_, clf.guide_  # built on first use: the sizes are given
    model.to(device), guide.to(device)
    if name in PYRO_VARIANTS:
        batch_kwargs = shortlist_batch_kwargs(clf, model, guide, n) if job["mode"] == "shortlist" else None
        return _pyro_variant(name, model, guide, n, schedule, device, batch_kwargs)
    if name in ("sdlgm_torch", "sdlgm_torch_joint"):
        if job["mode"] in ("shortlist", "set_bound"):
            raise NotImplementedError(f"no PyTorch reference for the {job['mode']} mode")
        return Variant(name, lambda batch: torch_reference.multilabel_loss(model, guide, *batch, num_data=n,
                                                                           **schedule) / n,
                       _unique_parameters(model, guide))
    raise ValueError(f"unknown multi-label variant {name!r}")


# ----------------------------------------------------------------------------- timing


def train_step(variant: Variant, optimizer, batch) -> float:
    """One training step: the variant's own (the library's :meth:`Trainer.step`), or the same
    sequence on its loss (``grad_clip_norm=None``)."""
    if variant.step is not None:
        return variant.step(batch)
    loss = variant.loss(batch)
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(f"non-finite loss {loss.item()} in {variant.name}")
    optimizer.zero_grad()
    loss.backward()
    grads = [p.grad for p in variant.params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if not bool(torch.isfinite(norm)):
        raise FloatingPointError(f"non-finite gradient in {variant.name}")
    optimizer.step()
    return loss.item()


class Batches:
    """Shuffled minibatches of the data columns, densified and moved to the device as the Trainer does."""

    def __init__(self, columns: tuple, batch_size: int, device: torch.device, seed: int):
        self.columns, self.batch_size, self.device = columns, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self._order = iter(())

    def next(self) -> tuple:
        rows = next(self._order, None)
        if rows is None or len(rows) < self.batch_size:
            order = torch.randperm(self.columns[0].shape[0], generator=self.generator)
            self._order = iter(order.split(self.batch_size))
            rows = next(self._order)
        return take_rows(self.columns, rows, self.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(variant: Variant, optimizer, batches: Batches, steps: int, max_seconds: float, device,
                min_steps: int = 1) -> list[float]:
    """Seconds of each of up to ``steps`` steps; stops early once ``min_steps`` are done and
    ``max_seconds`` have passed."""
    times = []
    started = time.perf_counter()
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        batch = batches.next()  # taking the batch (densified, on the device) is part of the trainer's step
        train_step(variant, optimizer, batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= min_steps and time.perf_counter() - started > max_seconds:
            break
    return times


def summarize_times(times: list[float], batch_size: int) -> dict:
    median = float(np.median(times))
    return {
        "steps": len(times),
        "median_step_s": median,
        "mean_step_s": float(np.mean(times)),
        "min_step_s": float(np.min(times)),
        "max_step_s": float(np.max(times)),
        "examples_per_s": batch_size / median,
    }


# ----------------------------------------------------------------------------- jobs


def make_columns(job: dict) -> tuple:
    if job["task"] == "unsupervised":
        return (unsupervised_data(job["num_data"], job["input_dim"], job["seed"]),)
    return multilabel_data(job["num_data"], job["input_dim"], job["K"], job["L0"], job["density"], job["seed"])


def run_job(job: dict) -> dict:
    """Run one job and return its result (a JSON-able dict)."""
    device = torch.device(job["device"])
    torch.set_num_threads(job["threads"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available")
    out = {"job": job, "torch_threads": torch.get_num_threads(), "device_name": device_name(device),
           "pyro_validation_default": bool(pyro.infer.util.is_validation_enabled())}
    columns = make_columns(job)
    batches = Batches(columns, job["batch"], device, job["seed"])
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    rss_before = current_rss()
    variants = {name: build_variant(job, name, device) for name in job["variants"]}
    optimizers = {name: None if v.step else torch.optim.Adam(v.params, lr=1e-3) for name, v in variants.items()}
    out["parameters"] = {name: sum(p.numel() for p in v.params) for name, v in variants.items()}
    for name, variant in variants.items():  # warm-up (also allocates Adam's state)
        timed_steps(variant, optimizers[name], batches, job["warmup"], math.inf, device)
    times = {name: [] for name in variants}
    if job["kind"] == "measure":
        (name,) = variants
        times[name] = timed_steps(variants[name], optimizers[name], batches, job["steps"], job["max_seconds"], device,
                                  job.get("min_steps", 1))
    else:  # compare: rounds of `steps` steps per variant, the order alternating between rounds
        order = list(variants)
        round_ratios = []
        deadline = time.perf_counter() + job["max_seconds"]
        for index in range(job["rounds"]):
            medians = {}
            for name in (order if index % 2 == 0 else order[::-1]):
                part = timed_steps(variants[name], optimizers[name], batches, job["steps"], math.inf, device)
                times[name] += part
                medians[name] = float(np.median(part))
            round_ratios.append({name: medians[name] / medians[order[0]] for name in order})
            if time.perf_counter() > deadline and index >= 1:
                break
        out["round_ratios"] = round_ratios
    out["variants"] = {name: summarize_times(t, job["batch"]) for name, t in times.items()}
    if job["kind"] == "measure":
        peak = peak_rss()
        out["memory"] = {"rss_before_networks_bytes": rss_before, "peak_rss_bytes": peak,
                         "peak_rss_increase_bytes": max(peak - rss_before, 0)}
        if device.type == "cuda":
            out["memory"]["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            out["memory"]["cuda_peak_increase_bytes"] = torch.cuda.max_memory_allocated(device) - cuda_before
    out["status"] = "ok"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model() or platform.processor() or "cpu"


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    try:
        result = run_job(job)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which records the cell as failed
        result = {"job": job, "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()[-4000:]}
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
