"""The SVI training loop: ELBO as an ``nn.Module``, a ``torch.optim`` optimizer, schedules, early stopping.

Route chosen (see the README): ``Trace_ELBO()(model, guide)`` (``TraceEnum_ELBO`` in
``enumerate`` mode) is an ``nn.Module`` whose parameters are the model's and the
guide's; it is trained with ``torch.optim.Adam`` under
``pyro.settings.context(module_local_params=True)``, so nothing lives in Pyro's global
parameter store and checkpoints are plain ``state_dict``s. The same model and guide
also work with the classic ``pyro.infer.SVI`` in Pyro's default (global) mode.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from .config import TrainConfig
from .exceptions import ConfigError, NumericalError
from .schedules import TrainingSchedule

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for CUDA without it raises ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def make_elbo(spec, num_particles: int = 1):
    """The ELBO estimator of a :class:`~pyro_sdlgm.spec.ModelSpec`.

    ``TraceEnum_ELBO`` (exact sum over ``L_i``) in ``enumerate`` mode;
    ``TraceMeanField_ELBO`` (analytic KL terms) for ``objective="discrete_kl"``;
    ``Trace_ELBO`` (Monte-Carlo KL with Concrete densities) for ``objective="relaxed"``.
    """
    if spec.sparsity_inference == "enumerate":
        return TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=1)
    if spec.objective == "discrete_kl":
        return TraceMeanField_ELBO(num_particles=num_particles)
    return Trace_ELBO(num_particles=num_particles)


def as_columns(data) -> tuple:
    """The model's data arguments as a tuple of row-aligned arrays (a single array becomes a 1-tuple)."""
    return tuple(data) if isinstance(data, (tuple, list)) else (data,)


def take_rows(columns: tuple, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Rows of each column as dense float32 tensors on ``device``.

    Columns are torch tensors, numpy arrays or scipy sparse matrices; a sparse column is
    densified one batch at a time, never whole.
    """
    batch = []
    index = rows.numpy()
    for column in columns:
        if isinstance(column, torch.Tensor):
            part = column[rows]
        elif hasattr(column, "tocsr"):  # scipy.sparse
            part = torch.from_numpy(column[index].toarray())
        else:
            part = torch.from_numpy(column[index])
        batch.append(part.to(device=device, dtype=torch.float32))
    return tuple(batch)


def iterate_minibatches(num_rows: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches covering every row once; the last batch may be smaller."""
    order = torch.randperm(num_rows, generator=generator)
    yield from order.split(batch_size)


class Trainer:
    """Fits an SDLGM model and guide by stochastic variational inference.

    Args:
        model, guide: the Pyro model and guide (``PyroModule``s with the SDLGM signature).
        config: training options.
    The ELBO estimator follows ``model.spec`` (see :func:`make_elbo`).
    """

    def __init__(self, model, guide, config: TrainConfig):
        self.model = model
        self.guide = guide
        self.config = config
        self.device = resolve_device(config.device)
        self.elbo = make_elbo(model.spec, config.num_particles)

    @torch.no_grad()
    def mean_loss(self, data, schedule_kwargs: dict, seed: int) -> float:
        """Negative ELBO per example over ``data`` with a fixed seed, leaving the global RNG untouched.

        ``data``: the model's data arguments, one array (``x``) or a tuple (``x, y``).
        """
        columns = as_columns(data)
        num_rows = columns[0].shape[0]
        devices = [self.device] if self.device.type == "cuda" else []
        total = 0.0
        with torch.random.fork_rng(devices=devices), pyro.settings.context(module_local_params=True):
            torch.manual_seed(seed)
            for rows in torch.arange(num_rows).split(self.config.eval_batch_size):
                batch = take_rows(columns, rows, self.device)
                # no num_data: the plate is unscaled, so this is the batch's sum
                total += self.elbo.loss(self.model, self.guide, *batch, **schedule_kwargs)
        return total / num_rows

    def fit(self, train, val=None, run_dir: str | Path | None = None):
        """Train; return the history, one dict of metrics per epoch.

        Args:
            train: the model's data arguments: ``x (N, D)``, or a tuple such as ``(x, y)``;
                each a tensor, numpy array or scipy sparse matrix (batches are densified and
                moved to the device one at a time).
            val: optional validation data of the same form, for early stopping.
            run_dir: if given, metrics are appended to ``run_dir/metrics.jsonl`` each epoch.

        On return the model and guide hold the parameters of the best validation epoch
        (or of the last epoch without validation data).
        """
        cfg = self.config
        train = as_columns(train)
        val = as_columns(val) if val is not None else None
        n = train[0].shape[0]
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        schedule = TrainingSchedule.from_config(cfg, cfg.epochs * steps_per_epoch)
        schedule_end = schedule.end_step()
        self.model.to(self.device)
        self.guide.to(self.device)
        metrics_path = Path(run_dir) / METRICS_FILE if run_dir is not None else None
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            metrics_path.write_text("")

        with pyro.settings.context(module_local_params=True):
            loss_fn = self.elbo(self.model, self.guide)
            optimizer = torch.optim.Adam(loss_fn.parameters(), lr=cfg.learning_rate)
            generator = torch.Generator().manual_seed(cfg.seed)
            history: list[dict] = []
            best_val, best_state, stale = math.inf, None, 0
            step = 0
            bar = tqdm(range(cfg.epochs), desc="SDLGM", unit="epoch", disable=not cfg.progress)
            for epoch in bar:
                started = time.perf_counter()
                self.model.train()
                self.guide.train()
                epoch_loss = 0.0
                for rows in iterate_minibatches(n, cfg.batch_size, generator):
                    batch = take_rows(train, rows, self.device)
                    kwargs = schedule(step)
                    loss = loss_fn(*batch, num_data=n, **kwargs) / n
                    if not torch.isfinite(loss.detach()):
                        raise NumericalError(
                            f"non-finite loss {loss.item()} at epoch {epoch}, step {step} "
                            f"(tau_sparsity={kwargs['tau_sparsity']:.4g}, tau_support={kwargs['tau_support']:.4g}); "
                            "try a lower learning rate or higher final temperatures"
                        )
                    optimizer.zero_grad()
                    loss.backward()
                    if cfg.grad_clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), cfg.grad_clip_norm)
                    optimizer.step()
                    epoch_loss += loss.item() * len(rows)
                    step += 1
                record = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": epoch_loss / n,
                    **{k: float(v) for k, v in schedule(step - 1).items()},
                }
                self.model.eval()
                self.guide.eval()
                if val is not None and val[0].shape[0] > 0:
                    record["val_loss"] = self.mean_loss(val, schedule.final(), cfg.seed + 1)
                    # before the schedules end, the trained objective is not the target one:
                    # neither keep a best state nor count patience then
                    improved = step >= schedule_end and record["val_loss"] < best_val
                    if improved:
                        best_val, stale = record["val_loss"], 0
                        best_state = (
                            copy.deepcopy(self.model.state_dict()),
                            copy.deepcopy(self.guide.state_dict()),
                        )
                    elif step >= schedule_end:
                        stale += 1
                    record["best_epoch"] = improved
                record["seconds"] = time.perf_counter() - started
                history.append(record)
                if metrics_path is not None:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                bar.set_postfix({k: f"{record[k]:.2f}" for k in ("train_loss", "val_loss") if k in record})
                logger.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
                if cfg.patience is not None and best_state is not None and stale >= cfg.patience:
                    logger.info("early stopping at epoch %d (best validation loss %.4f)", epoch, best_val)
                    break
            bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state[0])
            self.guide.load_state_dict(best_state[1])
        return history
