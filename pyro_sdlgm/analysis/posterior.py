"""Posteriors over sparsity as ArviZ ``InferenceData``: draws, exact marginals, an adapter.

What :meth:`pyro_sdlgm.SDLGM.posterior` and :meth:`pyro_sdlgm.SDLGMClassifier.posterior`
return, for ``N`` observations and ``S = num_samples`` draws (one chain):

``posterior`` group (dims ``chain, draw, obs``)
    ``sparsity``: draws of ``L_i`` (int); ``nnz``: the number of non-zeros of the hard
    code of each draw (the distinct dimensions its slots ``1..L_i`` select; equal to
    ``L_i`` when slots are drawn without replacement).
``marginals`` group (no draw dims)
    ``sparsity_probs`` (``obs, level``): the exact amortized ``q(L_i = l | x_i)``;
    ``inclusion_probs`` (``obs, dim``): ``P(dimension k is in the support)``, the
    Monte-Carlo average over the same ``S`` draws (standard error at most
    ``0.5 / sqrt(S)``). With ``inclusion="ranked"`` (the default above
    :data:`~pyro_sdlgm.model.spec.WIDE_LATENT_DIM` dimensions, where ``(obs, dim)`` floats
    would take ``8 N K`` bytes) the same numbers are stored row by row, without the zeros:
    ``top_dims`` (``obs, rank``), the dimensions some draw of the row took, by decreasing
    inclusion probability (ties: the lower index first), padded with -1, and
    ``top_inclusion`` (``obs, rank``), their probabilities, padded with 0. ``rank`` is
    the largest number of such dimensions of a row (at most ``S L0``).
``posterior_predictive`` (``SDLGM`` only, on request)
    ``x`` (``chain, draw, obs, feature``): draws of the Pyro site ``obs`` given each
    posterior draw of the code; ``observed_data`` then holds ``x``, the data itself.
``observed_data`` (classifier, when labels are given)
    ``label_count`` (``obs``): the true number of labels.

Draws are made by :class:`pyro.infer.Predictive` on the guide's own sample sites
(the slots' Concrete samples are reduced to their argmax, which by the Gumbel-max trick
is an exact draw of the discrete slot at any temperature). ``az.from_pyro`` only
accepts MCMC, so the object is built with ``az.from_dict`` (:func:`to_inference_data`),
which works with ArviZ 0.x (an ``InferenceData``) and 1.x (an ``xarray.DataTree``).
ESS and R-hat mean nothing for independent variational draws: summarize with
``az.summary(idata, kind="stats")`` or :mod:`pyro_sdlgm.analysis.inspection`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from tqdm.auto import tqdm

from pyro_sdlgm._optional import optional_import
from pyro_sdlgm.exceptions import DataError
from pyro_sdlgm.model.spec import OBS_SITE, SPARSITY_SITE, ModelSpec

MARGINALS_GROUP = "marginals"
#: how the inclusion probabilities are stored: ``(obs, dim)``, or row by row without the zeros
Inclusion = Literal["auto", "dense", "ranked"]
INCLUSION_FORMS = get_args(Inclusion)
# memory for one chunk of stacked Predictive draws
CHUNK_BYTES = 256 * 2**20


def import_arviz():
    """``arviz``, imported without its 0.2x ``FutureWarning`` about the 1.0 refactor.

    The warning concerns ArviZ's own API; this module hides the difference (see
    :func:`to_inference_data`), so users need not see it on every call.
    """
    with warnings.catch_warnings():
        # the message starts with a newline: the pattern must allow leading whitespace
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        arviz = optional_import("arviz", "the posterior over sparsity as ArviZ data")

    return arviz


def arviz_major_version() -> int:
    return int(import_arviz().__version__.split(".")[0])


def resolve_inclusion(inclusion: Any, spec: ModelSpec) -> str:
    """``"dense"`` or ``"ranked"``; ``"auto"`` is ``"ranked"`` for a wide spec (:attr:`ModelSpec.wide`)."""
    if inclusion not in INCLUSION_FORMS:
        raise DataError(f"inclusion must be one of {list(INCLUSION_FORMS)}, got {inclusion!r}")
    if inclusion == "auto":
        return "ranked" if spec.wide else "dense"
    return inclusion


def ranked_inclusion(counts: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``counts (N, K)`` (draws holding each dimension) as ``(top_dims, top_inclusion)``, each ``(N, R)``.

    ``R`` is the largest number of non-zero counts of a row (at least 1); a row's dimensions come
    by decreasing count, ties by the lower index, padded with dimension -1 and probability 0.
    """
    width = max(1, int((counts > 0).sum(-1).max())) if counts.numel() else 1
    size = counts.shape[-1]
    # unique keys: a higher count first, then the lower index
    key = counts.long() * size - torch.arange(size, device=counts.device)
    order = key.topk(min(width, size), dim=-1).indices
    hits = counts.gather(-1, order)
    dims = torch.where(hits > 0, order, torch.full_like(order, -1))
    return dims.cpu(), (hits.double() / num_samples).cpu()


def check_num_samples(num_samples: Any) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise DataError(f"num_samples must be a positive integer, got {num_samples!r}")
    return int(num_samples)


def to_inference_data(
    posterior: Mapping[str, np.ndarray],
    marginals: Mapping[str, np.ndarray],
    dims: Mapping[str, list[str]],
    coords: Mapping[str, Any],
    *,
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
    observed_data: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """Build the ArviZ object through ``az.from_dict``; the one place that knows ArviZ's version.

    Args:
        posterior, posterior_predictive: arrays ``(chain, draw, *dims[name])``.
        marginals, observed_data: arrays without draw dims, ``(*dims[name])``.
        dims, coords: ArviZ's ``dims`` (variable -> dimension names) and ``coords``.

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or ``xarray.DataTree`` (ArviZ 1.x), with the
        groups ``posterior``, ``marginals`` and the optional ones.
    """
    xr = optional_import("xarray", "the posterior over sparsity as ArviZ data")
    az = import_arviz()
    attrs = dict(attrs or {})
    marginal_set = xr.Dataset(
        {name: (dims[name], value) for name, value in marginals.items()},
        coords={d: coords[d] for name in marginals for d in dims[name] if d in coords},
        attrs=attrs,
    )
    groups = {"posterior": dict(posterior)}
    if posterior_predictive is not None:
        groups["posterior_predictive"] = dict(posterior_predictive)
    if observed_data is not None:
        groups["observed_data"] = dict(observed_data)
    if arviz_major_version() >= 1:
        # ArviZ 1.x: from_dict takes one dict of groups and returns an xarray DataTree
        # (its attrs are per group)
        tree = az.from_dict(groups, dims=dict(dims), coords=dict(coords), attrs={name: attrs for name in groups})
        tree[MARGINALS_GROUP] = xr.DataTree(marginal_set)
        return tree
    idata = az.from_dict(**groups, dims=dict(dims), coords=dict(coords), attrs=attrs)
    idata.add_groups({MARGINALS_GROUP: marginal_set})  # a custom group: not in ArviZ's schema
    return idata


def load_inference_data(path):
    """Read a file written by ``idata.to_netcdf(path)`` (either ArviZ version)."""
    az = import_arviz()
    if arviz_major_version() >= 1:
        import xarray as xr

        return xr.open_datatree(path)
    return az.from_netcdf(path)


def group(idata, name: str):
    """A group of ``idata`` as an ``xarray.Dataset`` (``InferenceData`` or ``DataTree``)."""
    node = idata[name]
    return node.to_dataset() if hasattr(node, "to_dataset") else node


# ----------------------------------------------------------------------------- draws


PICKS_SITE = "_slot_picks"  # a deterministic site: the dimension each slot takes, (N, L0)


def _chunk_size(num_rows: int, spec: ModelSpec, num_samples: int, extra: int, guide: bool) -> int:
    """Draws per :class:`Predictive` call such that the numbers it stacks stay within :data:`CHUNK_BYTES`.

    A draw stacks the count, the slots' picks and ``extra`` numbers per row (e.g. the observations
    ``D``); with a separate ``guide`` (posterior predictive), :class:`Predictive` also stacks every
    site of the guide, the slot sites included.
    """
    numbers = spec.num_levels + 2 * spec.max_sparsity + extra
    if guide:
        numbers += 2 * spec.support_step.draw_numbers(spec)
    return max(1, min(num_samples, CHUNK_BYTES // max(4 * num_rows * numbers, 1)))


def _with_picks(spec: ModelSpec, program: Callable) -> Callable:
    """``program`` that also records its slots' picks as the deterministic site :data:`PICKS_SITE`, so that
    :class:`Predictive` stacks ``(N, L0)`` indices per draw instead of the slot sites' values."""

    def run(*args, **kwargs):
        trace = poutine.trace(program).get_trace(*args, **kwargs)
        values = {name: trace.nodes[name]["value"] for name in spec.slot_sites}
        pyro.deterministic(PICKS_SITE, spec.slot_picks(values), event_dim=1)  # batch (N,), as the plate
        return trace.nodes["_RETURN"]["value"]

    return run


def _add_support(counts: torch.Tensor, picks: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Add each draw's support to ``counts (N, K)`` from its ``picks (S, N, L0)`` and ``used (S, N, L0)``
    slots; return the draws' non-zeros ``(S, N)``. A dimension picked twice in one draw counts once."""
    size = counts.shape[-1]
    ordered = torch.where(used, picks, size).sort(-1).values  # unused slots last, as the index K
    new = ordered < size
    new[..., 1:] &= ordered[..., 1:] != ordered[..., :-1]
    rows = torch.arange(picks.shape[-2], device=picks.device).unsqueeze(-1) * size
    flat = (rows + ordered)[new].cpu()
    counts.view(-1).index_add_(0, flat, torch.ones(flat.shape, dtype=counts.dtype))
    return new.sum(-1)


@torch.no_grad()
def draw_sparsity(spec: ModelSpec, num_samples: int, program: Callable, *args, guide: Callable | None = None,
                  num_rows: int, obs_dim: int | None = None, inclusion: str = "dense",
                  **kwargs) -> dict[str, torch.Tensor]:
    """Draws of ``L_i`` and of the hard support for one batch, with :class:`pyro.infer.Predictive`.

    Each draw's support is reduced to its slots' picks as it is made (:func:`_with_picks`), so
    memory is ``O(N K)`` for the counts, not ``O(S N K)``.

    Args:
        program: places the ``sparsity`` and ``slot_*`` sites (and ``obs`` with ``observe``),
            called with ``*args, **kwargs``; with ``guide``, those latent sites are drawn by
            the guide and ``program`` (the model) is replayed on them.
        num_rows: ``N``, the rows of the batch.
        obs_dim: ``D``: also return ``x`` ``(S, N, D)``, draws of the site ``obs``: pass the model
            under ``poutine.uncondition`` (else ``Predictive`` returns the data itself). Its
            draw ``s`` is generated from the code of draw ``s``.
        inclusion: ``"dense"`` or ``"ranked"`` (see the module docstring).

    Returns:
        ``sparsity`` ``(S, N)`` int64 levels, ``nnz`` ``(S, N)`` int64, ``inclusion``
        ``(N, K)`` float64 (the fraction of draws whose support holds each dimension) or, ranked,
        ``top_dims`` and ``top_inclusion`` ``(N, R)``, and ``x`` with ``obs_dim``. Draws are made
        in chunks whose stacked sites stay within :data:`CHUNK_BYTES`.
    """
    observe = obs_dim is not None
    sites = [SPARSITY_SITE, PICKS_SITE] + ([OBS_SITE] if observe else [])
    levels, nnz, observations = [], [], []
    counts = torch.zeros(num_rows, spec.latent_dim, dtype=torch.int32)
    chunk_size = _chunk_size(num_rows, spec, num_samples, extra=obs_dim or 0, guide=guide is not None)
    remaining = num_samples
    while remaining > 0:
        chunk = min(remaining, chunk_size)
        remaining -= chunk
        draws = Predictive(_with_picks(spec, program), guide=guide, num_samples=chunk, return_sites=sites,
                           parallel=False)(*args, **kwargs)
        value = draws[SPARSITY_SITE]
        # a relaxed site holds a log one-hot (S, N, levels); an enumerable one an index (S, N)
        if spec.sparsity_inference == "marginal":  # the site holds log q(L) itself: draw L from it
            index = torch.distributions.Categorical(logits=value).sample()
        else:
            index = value.argmax(-1) if value.is_floating_point() else value.long()
        level = index + spec.min_level
        picks = draws[PICKS_SITE]  # (S, N, L0)
        used = torch.arange(spec.max_sparsity, device=picks.device) < level.unsqueeze(-1)
        levels.append(level.cpu())
        nnz.append(_add_support(counts, picks, used).cpu())
        if observe:
            observations.append(draws[OBS_SITE].cpu())
    out = {"sparsity": torch.cat(levels), "nnz": torch.cat(nnz)}
    if inclusion == "ranked":
        out["top_dims"], out["top_inclusion"] = ranked_inclusion(counts, num_samples)
    else:
        out["inclusion"] = counts.double() / num_samples
    if observe:
        out["x"] = torch.cat(observations)
    return out


def batch_count(num_rows: int, batch_size) -> int | None:
    """``ceil(num_rows / batch_size)`` for a progress bar; None for a batch size the caller will refuse."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        return None
    return -(-num_rows // batch_size)


def sample_batches(spec: ModelSpec, batches, num_samples: int, seed: int, device: torch.device,
                   obs_dim: int | None = None, *, progress: bool = False,
                   num_batches: int | None = None,
                   inclusion: str = "dense") -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Run :func:`draw_sparsity` over batches under one seed; the global RNG is left as it was.

    ``batches`` yields ``(level_probs (n, levels), program, args, kwargs, guide)``.
    Returns the per-batch exact probabilities and draws, for :func:`sparsity_inference_data`.
    ``progress``: a progress bar over the ``num_batches`` batches (on stderr); ``inclusion``:
    ``"dense"`` or ``"ranked"`` (see :func:`resolve_inclusion`).
    """
    probs, draws = [], []
    bar = tqdm(batches, total=num_batches, desc="posterior draws", unit="batch", disable=not progress)
    with seeded(seed, device):
        for level_probs, program, args, kwargs, guide in bar:
            probs.append(level_probs.cpu())
            draws.append(draw_sparsity(spec, num_samples, program, *args, guide=guide,
                                       num_rows=level_probs.shape[0], obs_dim=obs_dim, inclusion=inclusion,
                                       **kwargs))
    return probs, draws


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Seed torch's RNG (all Pyro sampling uses it) and restore the global state afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def sparsity_inference_data(
    spec: ModelSpec,
    probs: list[torch.Tensor],
    draws: list[dict[str, torch.Tensor]],
    *,
    num_samples: int,
    seed: int,
    model_name: str,
    obs_names: Any = None,
    observed: Mapping[str, np.ndarray] | None = None,
    observed_dims: Mapping[str, list[str]] | None = None,
):
    """Assemble per-batch results (see :func:`sample_batches`) into the ArviZ object of this module."""
    sparsity_probs = torch.cat(probs).numpy().astype(np.float64)
    n = sparsity_probs.shape[0]
    if obs_names is None:
        obs_names = np.arange(n)
    obs_names = np.asarray(obs_names)
    if obs_names.shape != (n,):
        raise DataError(f"obs_names has shape {obs_names.shape}, expected ({n},)")
    sparsity = torch.cat([d["sparsity"] for d in draws], dim=1).numpy()
    nnz = torch.cat([d["nnz"] for d in draws], dim=1).numpy()
    dims = {"sparsity": ["obs"], "nnz": ["obs"], "sparsity_probs": ["obs", "level"]}
    coords = {"obs": obs_names, "level": spec.levels().numpy()}
    marginals = {"sparsity_probs": sparsity_probs}
    if "top_dims" in draws[0]:
        width = max(d["top_dims"].shape[1] for d in draws)
        marginals["top_dims"] = torch.cat([_pad(d["top_dims"], width, -1) for d in draws]).numpy()
        marginals["top_inclusion"] = torch.cat([_pad(d["top_inclusion"], width, 0.0) for d in draws]).numpy()
        dims.update(top_dims=["obs", "rank"], top_inclusion=["obs", "rank"])
        coords["rank"] = np.arange(width)
    else:
        marginals["inclusion_probs"] = torch.cat([d["inclusion"] for d in draws]).numpy()
        dims["inclusion_probs"] = ["obs", "dim"]
        coords["dim"] = np.arange(spec.latent_dim)
    posterior_predictive = None
    if "x" in draws[0]:
        # named "x", not after the Pyro site "obs": ArviZ 0.x drops a group whose variable
        # shares its name with a dimension (measured with 0.23.4)
        posterior_predictive = {"x": torch.cat([d["x"] for d in draws], dim=1).numpy()[None]}
        dims["x"] = ["obs", "feature"]
        coords["feature"] = np.arange(posterior_predictive["x"].shape[-1])
    dims.update(observed_dims or {})
    attrs = {
        "model": model_name,
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
        "num_samples": num_samples,
        "seed": seed,
        "max_sparsity": spec.max_sparsity,
        "latent_dim": spec.latent_dim,
        "slot_selection": spec.slot_selection,
        "inclusion": "ranked" if "top_dims" in marginals else "dense",
    }
    return to_inference_data(
        {"sparsity": sparsity[None], "nnz": nnz[None]},
        marginals,
        dims,
        coords,
        posterior_predictive=posterior_predictive,
        observed_data=observed,
        attrs=attrs,
    )


def _pad(values: torch.Tensor, width: int, fill) -> torch.Tensor:
    """``values (N, R)`` padded on the right with ``fill`` to ``(N, width)``."""
    return torch.nn.functional.pad(values, (0, width - values.shape[1]), value=fill)
