"""What a failed training step says: the faults the trainer detects, where they come from, and the
message a user reads.

A step fails on a non-finite loss, a non-finite gradient or distribution parameters that
Pyro's or torch's validation rejects. :class:`StepFault` carries the fault and the places found
(sample sites, parameters); the trainer then stops with a
:class:`~pyro_sdlgm.exceptions.NumericalError` or skips the batch (``nan_policy``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings

import pyro
import torch
from pyro import poutine

logger = logging.getLogger(__name__)


class StepFault(Exception):
    """A training step that made no update: ``fault`` (what went wrong) and ``where`` (the sample
    sites or parameters found responsible, possibly empty)."""

    def __init__(self, fault: str, where: list[str] | None = None):
        super().__init__(fault)
        self.fault = fault
        self.where = list(where or [])


@contextlib.contextmanager
def without_pyro_validation():
    """Pyro's validation off for a block, then Pyro's and torch's settings as they were.

    ``pyro.validation_enabled`` alone restores torch's default ``validate_args`` to Pyro's
    flag, which would switch torch's validation on where a user had turned only that off.
    """
    torch_default = torch.distributions.Distribution._validate_args
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(torch_default)


_SITE = re.compile(r"at site '([^']+)'")


def validation_failure(err: ValueError) -> list[str]:
    """What a ValueError of Pyro's or torch's validation (``... invalid values``) says of the sites."""
    where = [f"site {m!r} has invalid parameters or values" for m in dict.fromkeys(_SITE.findall(str(err)))]
    return where or ["Pyro's validation: " + str(err).splitlines()[0].rstrip(":")[:300]]


@torch.no_grad()
def diagnose_sites(model, guide, batch: tuple, kwargs: dict, num_data: int, devices: list) -> list[str]:
    """Sample sites whose values or log-densities are non-finite on ``batch``.

    Re-runs the guide and the model replayed on the guide's draws once (with the global
    RNG state restored afterwards, and Pyro's validation off) and checks each sample site.
    Best effort: a fault that does not recur on the rerun, or a failing rerun, gives an
    empty list. ``kwargs``: the step's keyword arguments (schedule values, batch extras);
    ``devices``: the CUDA devices whose RNG state to restore.
    """
    found: list[str] = []
    try:
        # without Pyro's validation, so that a site with invalid parameters is reached and
        # named by its non-finite values or log-density instead of stopping the re-trace
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings(), without_pyro_validation():
            warnings.simplefilter("ignore")
            guide_trace = poutine.trace(guide).get_trace(*batch, num_data=num_data, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *batch, num_data=num_data, **kwargs)
            for role, trace in (("guide", guide_trace), ("model", model_trace)):
                found += _faulty_sites(role, trace)
    except ValueError as err:  # a distribution built with validate_args=True rejected its parameters
        if "invalid values" not in str(err):
            logger.debug("could not re-trace the faulty batch: %s", err)
        else:
            found += validation_failure(err)
    except Exception as err:  # noqa: BLE001 - the diagnosis must never hide the original fault
        logger.debug("could not re-trace the faulty batch: %s", err)
    return found


def _faulty_sites(role: str, trace) -> list[str]:
    found = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        value = site["value"]
        if role == "guide" and torch.is_tensor(value) and not torch.isfinite(value).all():
            found.append(f"{role} site {name!r} has non-finite values")
            continue
        try:
            log_prob = site["fn"].log_prob(value)
        except ValueError:
            found.append(f"{role} site {name!r} has invalid distribution parameters")
            continue
        if not torch.isfinite(log_prob).all():
            found.append(f"{role} site {name!r} has a non-finite log-density")
    return found


def non_finite_parameters(named: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters holding a non-finite value."""
    return [name for name, p in named.items() if not bool(torch.isfinite(p.detach()).all())]


def first_bad_gradient(named: dict[str, torch.Tensor]) -> list[str]:
    """Where a non-finite gradient norm comes from: the first parameter with a non-finite gradient."""
    bad = [name for name, p in named.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return [(f"parameter {bad[0]!r} has the first non-finite gradient ({len(bad)} of "
             f"{len(named)} parameters have one)")] if bad else []


def fault_message(fault: StepFault, epoch: int | None, step: int | None, kwargs: dict,
                  last_checkpoint=None) -> str:
    """``fault`` with the epoch and step (when in a loop), the schedule values, the places found and
    the last good checkpoint."""
    when = f" at epoch {epoch}, step {step}" if epoch is not None else ""
    message = (f"{fault.fault}{when} (tau_sparsity={kwargs['tau_sparsity']:.4g}, "
               f"tau_support={kwargs['tau_support']:.4g}, kl_weight={kwargs['kl_weight']:.4g})")
    if fault.where:
        message += "; " + "; ".join(fault.where)
    if last_checkpoint is not None:
        message += f"; the last good checkpoint is {str(last_checkpoint)!r}"
    return message
