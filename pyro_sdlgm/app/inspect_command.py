"""``sdlgm inspect``: the posterior over sparsity of a run's data, written into its run folder
(netCDF, summary tables, the headline numbers as JSON, plots)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pyro_sdlgm.analysis import plots
from pyro_sdlgm.app.files import (
    CALIBRATION_FILE,
    EFFECTS_FILE,
    GROUPS_FILE,
    INSPECTION_FILE,
    PLOTS_DIR,
    POSTERIOR_FILE,
    PREFIX_FILE,
    SELF_CHECK_FILE,
    SUMMARY_FILE,
)
from pyro_sdlgm.app.runs import eval_data, open_run
from pyro_sdlgm.exceptions import DataError


def read_groups(groups: str | None, num_obs: int, default: np.ndarray | None) -> np.ndarray | None:
    """Group labels for ``sdlgm inspect``: ``"auto"`` (the data's own), ``"none"``, or a file.

    A file is a ``.npy`` array or a text file with one label per line; its length must
    equal the number of inspected observations.
    """
    from pyro_sdlgm.analysis.inspection import check_groups

    if groups in (None, "auto"):
        return default
    if groups == "none":
        return None
    path = Path(groups)
    if not path.is_file():
        raise DataError(f"--groups {groups!r}: no such file (or use 'auto' / 'none')")
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            raise DataError(f"--groups {groups!r}: cannot read the array ({type(err).__name__}: {err})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"--groups {groups!r}: not UTF-8 text (byte offset {err.start})") from None
        labels = np.array([line.strip() for line in text.splitlines() if line.strip()])
    return check_groups(labels, num_obs, f"groups file {groups!r}")


def inspect_run(run_dir: str | Path, source: str | None = None, groups: str | None = "auto", *,
                num_samples: int = 100, seed: int = 0, show: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write the posterior over sparsity of the run's test split (or of ``source``) into the run folder.

    Files: ``posterior.nc`` (ArviZ, netCDF), ``sparsity_summary.csv`` (one row per
    observation), ``sparsity_groups.csv`` (with groups), ``count_calibration.csv``
    (multi-label), ``prefix_counts.csv``, ``dimension_effects.csv`` and ``count_self_check.csv``
    (unsupervised),
    ``inspection.json`` (the headline numbers) and plots in ``plots/``.
    Groups: ``"auto"`` uses the data's classes (unsupervised) or the true label counts
    (multi-label). ``progress``: a progress bar over the posterior draws, then a line per
    stage (on stderr). Returns the headline numbers, the tables and the written paths.
    """
    from pyro_sdlgm.analysis import inspection
    from pyro_sdlgm.analysis.posterior import check_num_samples

    check_num_samples(num_samples)
    _, task, model = open_run(run_dir)
    run_dir = Path(run_dir)
    _, data = eval_data(task, source)
    idata, X, image_shape, default_groups = task.posterior(model, data, num_samples, seed, progress)
    labels = read_groups(groups, X.shape[0], default_groups)

    _stage(progress, f"writing {POSTERIOR_FILE} and the tables")
    posterior_path = run_dir / POSTERIOR_FILE
    posterior_path.unlink(missing_ok=True)  # netCDF writers may refuse to replace an open-able file
    idata.to_netcdf(str(posterior_path))
    summary = inspection.sparsity_summary(idata)
    summary.to_csv(run_dir / SUMMARY_FILE, index=False)
    written = [posterior_path, run_dir / SUMMARY_FILE]
    usage = inspection.dimension_usage(idata)
    result: dict[str, Any] = {"data": source or "test split", "num_examples": int(X.shape[0]),
                              "num_samples": num_samples, "seed": seed, **headline(summary, idata, usage)}
    for stale in (GROUPS_FILE, CALIBRATION_FILE, PREFIX_FILE, EFFECTS_FILE, SELF_CHECK_FILE):  # left by an earlier inspect
        (run_dir / stale).unlink(missing_ok=True)
    extras = task.inspect_extras(model, X, idata, run_dir)
    group_table = None
    if labels is not None:
        group_table = inspection.group_summary(idata, labels)
        group_table.to_csv(run_dir / GROUPS_FILE, index=False)
        written.append(run_dir / GROUPS_FILE)
        if len(group_table) >= 2:
            result["group_difference"] = inspection.group_difference(idata, labels)
    written += extras["files"]
    result.update(extras["result"])

    _stage(progress, "drawing the plots")
    written += _inspection_figures(model, X, summary, idata, usage, group_table, extras, image_shape, labels,
                                   task.unit, run_dir / PLOTS_DIR, show)
    (run_dir / INSPECTION_FILE).write_text(json.dumps(_finite_or_null(result), indent=2, allow_nan=False))
    written.append(run_dir / INSPECTION_FILE)
    result.update(files=[str(p) for p in written], groups=group_table)
    return result


def headline(summary, idata, usage) -> dict[str, Any]:
    """The headline numbers of ``inspection.json``: the modes, means, spread and entropy of the count
    posteriors, and the dead and always-on dimensions."""
    from pyro_sdlgm.analysis import inspection
    from pyro_sdlgm.analysis.posterior import group

    levels = group(idata, "marginals")["sparsity_probs"]["level"].values
    return {
        "mode_histogram": {int(level): int((summary["mode"] == level).sum()) for level in levels},
        "mean_L": float(summary["mean"].mean()),
        "sd_between": float(summary["mean"].std(ddof=0)),
        "mean_entropy": float(summary["entropy"].mean()),
        "max_entropy": float(np.log(len(levels))),
        "mean_interval_width": float((summary["upper"] - summary["lower"]).mean()),
        "mean_nnz": float(summary["mean_nnz"].mean()),
        "dead_dims": int(inspection.dead(usage).sum()),
        "always_on_dims": int(inspection.always_on(usage).sum()),
        "num_dims": int(len(usage)),
    }


def _stage(progress: bool, message: str) -> None:
    if progress:
        print(f"inspect: {message}", file=sys.stderr, flush=True)


def _finite_or_null(value):
    """``value`` with NaN and infinities replaced by None, so that it is valid JSON."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _inspection_figures(model, X, summary, idata, usage, group_table, extras: dict, image_shape, labels, unit: str,
                        plot_dir: Path, show: bool) -> list[Path]:
    """The inspect plots, saved as PNG (and shown on screen with ``show``)."""
    from pyro_sdlgm.analysis.posterior import group

    marginals = group(idata, "marginals")
    probs, levels = marginals["sparsity_probs"].values, marginals["sparsity_probs"]["level"].values
    diagnosis, bins, calibration = extras.get("diagnosis"), extras.get("bins"), extras.get("calibration")
    if show:
        from matplotlib import pyplot

        figure = pyplot.figure
    else:
        def figure():
            return None  # the plot functions create a Figure outside pyplot
    plot_dir.mkdir(parents=True, exist_ok=True)
    out = []

    def save(name, draw):
        path = plot_dir / name
        draw(path, figure())
        out.append(path)

    # observations spread over the range of E[L_i]: the sparsest, the densest and between
    order = np.argsort(summary["mean"].to_numpy(), kind="stable")
    chosen = order[np.unique(np.linspace(0, len(order) - 1, min(8, len(order))).astype(int))]
    titles = [f"#{summary['obs'][i]} E[L]={summary['mean'][i]:.1f}" + (f"\ngroup {labels[i]}" if labels is not None
                                                                        else "") for i in chosen]
    inputs = X[chosen] if image_shape is not None else None
    save("sparsity_examples.png", lambda p, f: plots.plot_sparsity_examples(probs[chosen], levels, titles, inputs,
                                                                            image_shape, p, f))
    if group_table is not None:
        save("sparsity_by_group.png", lambda p, f: plots.plot_group_sparsity(group_table, p, f))
    save(f"{unit}_usage.png", lambda p, f: plots.plot_dimension_usage(usage, p, f, unit=unit))
    if image_shape is not None:
        top = usage.sort_values("mean_inclusion", ascending=False, kind="stable").head(16)
        dims = top["dim"].to_numpy()
        # the mean value each dimension takes in the hard codes that use it (from the diagnosis's codes)
        values = diagnosis["dimension_value"][dims]
        effects = model.decode_dimensions(dims, values) - model.decode_dimensions(dims[:1], [0.0])
        save("dimension_images.png", lambda p, f: plots.plot_dimension_images(
            effects, dims, top["mean_inclusion"].to_numpy(), image_shape, p, f))
    if diagnosis is not None:
        save("prefix_counts.png", lambda p, f: plots.plot_prefix_diagnostics(
            model.sparsity_levels, diagnosis["prefix_recon"], diagnosis["prefix_slot_kl"], diagnosis["l_hat"],
            diagnosis["best_count"], p, f))
    if bins is not None:
        save("count_calibration.png", lambda p, f: plots.plot_count_calibration(bins, calibration, p, f))
    titles = {"codes": "counts of draws from the rows' codes", "prior": "counts of draws from the prior"}
    for source, (metrics, table) in (extras.get("self_check") or {}).items():
        suffix = "" if source == "codes" else f"_{source}"
        save(f"count_self_check{suffix}.png", lambda p, f, m=metrics, t=table, s=source: plots.plot_count_calibration(
            t, m, p, f, title=titles[s]))
    if show:
        pyplot.show()
    return out
