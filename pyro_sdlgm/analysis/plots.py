"""Figures written to a run folder (matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pyro_sdlgm.analysis import inspection


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_training_curve(history: list[dict], path: str | Path) -> Path:
    """Training and validation negative ELBO per example, by epoch (from 1), with the temperature
    and the epoch whose parameters training kept (the best validation epoch)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train (annealed objective)")
    if any("val_loss" in r for r in history):
        ax.plot([r["epoch"] for r in history if "val_loss" in r],
                [r["val_loss"] for r in history if "val_loss" in r], label="validation (final temperatures)")
    best = [r["epoch"] for r in history if r.get("best_epoch")]
    if best:
        ax.axvline(best[-1], color="C2", linestyle="--", linewidth=1, label=f"kept: epoch {best[-1]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per example")
    twin = ax.twinx()
    twin.plot(epochs, [r["tau_support"] for r in history], color="grey", linestyle=":",
              label="temperature of the support (right axis)")
    twin.set_ylabel("temperature", color="grey")
    handles, names = ax.get_legend_handles_labels()
    twin_handles, twin_names = twin.get_legend_handles_labels()
    ax.legend(handles + twin_handles, names + twin_names, loc="upper right", fontsize=8)
    ax.set_title("SDLGM training")
    return _save(fig, path)


def plot_reconstructions(x: np.ndarray, recon: np.ndarray, image_shape: tuple[int, int], path: str | Path,
                         counts: np.ndarray | None = None) -> Path:
    """Originals (top row) above reconstructions from hard codes (bottom row), titled with ``L_hat``."""
    n = x.shape[0]
    fig = Figure(figsize=(1.2 * n, 2.7))
    for i in range(n):
        for row, data in enumerate((x, recon)):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(data[i].reshape(image_shape), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if row == 1 and counts is not None:
                ax.set_title(f"L={counts[i]}", fontsize=8)
    fig.suptitle("data (top) and reconstructions from hard codes (bottom)")
    return _save(fig, path)


def plot_sparsity(levels: np.ndarray, nnz: np.ndarray, mean_posterior: np.ndarray, path: str | Path) -> Path:
    """Histogram of non-zeros of hard codes next to the average posterior ``q(L|x)``."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    bins = np.arange(0, levels.max() + 2) - 0.5
    ax.hist(nnz, bins=bins, density=True, alpha=0.6, label="non-zeros of hard codes")
    ax.plot(levels, mean_posterior, "o-", color="C3", label="mean q(L = l | x)")
    ax.set_xlabel("number of non-zeros / level l")
    ax.set_ylabel("fraction of observations")
    ax.set_xticks(np.arange(0, levels.max() + 1))
    ax.legend()
    ax.set_title("predicted sparsity")
    return _save(fig, path)


# ----------------------------------------------------------------------------- posteriors over sparsity
# Each function draws into ``fig`` (a new Figure by default; pass ``pyplot.figure()`` to show
# it on screen), saves it to ``path`` when given, and returns the figure.


def _figure(fig: Figure | None, size: tuple[float, float]) -> Figure:
    if fig is None:
        return Figure(figsize=size)
    fig.set_size_inches(*size)
    return fig


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        _save(fig, path)
    return fig


def plot_sparsity_examples(probs: np.ndarray, levels: np.ndarray, titles: list[str], inputs: np.ndarray | None = None,
                           image_shape: tuple[int, int] | None = None, path: str | Path | None = None,
                           fig: Figure | None = None) -> Figure:
    """``q(L | x_i)`` of a few observations (bars), each under its input when it is an image."""
    n = probs.shape[0]
    show_images = inputs is not None and image_shape is not None
    fig = _figure(fig, (1.9 * n, 4.2 if show_images else 2.4))
    rows = 2 if show_images else 1
    for i in range(n):
        if show_images:
            ax = fig.add_subplot(rows, n, i + 1)
            ax.imshow(inputs[i].reshape(image_shape), cmap="gray")
            ax.set_axis_off()
            ax.set_title(titles[i], fontsize=8)
        ax = fig.add_subplot(rows, n, (rows - 1) * n + i + 1)
        ax.bar(levels, probs[i], color="C0")
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.5, 1])
        ax.set_xticks(levels[:: max(1, len(levels) // 5)])
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.set_ylabel("q(L = l | x)", fontsize=8)
        else:  # one scale for the row, labelled once
            ax.tick_params(labelleft=False)
        if not show_images:
            ax.set_title(titles[i], fontsize=8)
        ax.set_xlabel("l", fontsize=8)
    fig.suptitle("posterior over sparsity of single observations")
    return _finish(fig, path)


def plot_group_sparsity(table, path: str | Path | None = None, fig: Figure | None = None) -> Figure:
    """Mean ``L_i`` per group with bars of one standard deviation (between observations and mixture)."""
    fig = _figure(fig, (max(4.5, 0.55 * len(table) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.bar(x, table["mean_L"], yerr=table["sd_L"], capsize=3, alpha=0.7, label="mean L (bar: sd of L)")
    ax.errorbar(x + 0.2, table["mean_L"], yerr=table["sd_between"], fmt="none", ecolor="C3", capsize=3,
                label="sd of E[L_i] across observations")
    ax.set_xticks(x)
    ax.set_xticklabels([str(g) for g in table["group"]])
    ax.set_xlabel("group")
    ax.set_ylabel("L (non-zeros)")
    ax.legend(fontsize=8)
    ax.set_title("sparsity per group")
    return _finish(fig, path)


def plot_dimension_usage(usage, path: str | Path | None = None, fig: Figure | None = None,
                         unit: str = "dimension") -> Figure:
    """Dimensions sorted by their mean inclusion probability; dead and always-on ones counted."""
    fig = _figure(fig, (7, 4))
    ax = fig.add_subplot()
    mean = np.sort(usage["mean_inclusion"].to_numpy())[::-1]
    used_by = usage["used_by"].to_numpy()
    dead = int(inspection.dead(usage).sum())
    always = int(inspection.always_on(usage).sum())
    ax.plot(np.arange(len(mean)), mean, color="C0", label="mean inclusion probability")
    ax.plot(np.arange(len(mean)), np.sort(used_by)[::-1], color="C1", linestyle="--",
            label="fraction of observations with inclusion >= 0.5")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel(f"{unit}s, sorted by usage")
    ax.set_ylabel("probability / fraction")
    ax.legend(fontsize=8)
    ax.set_title(f"{unit} usage: {dead} of {len(mean)} dead (mean inclusion < 0.001), {always} always on")
    return _finish(fig, path)


def plot_dimension_images(effects: np.ndarray, dims: np.ndarray, usage: np.ndarray, image_shape: tuple[int, int],
                          path: str | Path | None = None, fig: Figure | None = None) -> Figure:
    """What each of the most used dimensions adds to the empty code's output.

    ``effects (M, D)``: ``E[x | z = v_k e_k] - E[x | z = 0]`` per dimension. Each image has
    its own colour scale, symmetric around 0 (red: more, blue: less), so that dimensions
    whose effects differ in size stay visible; the title gives the scale and the usage.
    """
    n = len(dims)
    cols = min(n, 8)
    rows = int(np.ceil(n / cols))
    fig = _figure(fig, (1.3 * cols, 1.6 * rows + 0.5))
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        scale = float(np.abs(effects[i]).max()) or 1.0
        ax.imshow(effects[i].reshape(image_shape), cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_axis_off()
        ax.set_title(f"dim {dims[i]}, {usage[i]:.2f}\n\u00b1{scale:.2f}", fontsize=7)
    fig.suptitle("what one active dimension adds to the empty code's output\n"
                 "(title: dimension, mean inclusion probability, colour scale)", fontsize=9)
    return _finish(fig, path)


def plot_count_calibration(bins, metrics: dict, path: str | Path | None = None, fig: Figure | None = None, *,
                           title: str = "count calibration") -> Figure:
    """Reliability diagram of the predicted count: accuracy against confidence per bin (``bins`` and
    ``metrics`` of :func:`~pyro_sdlgm.analysis.inspection.calibration_of`); ``metrics`` with a
    ``spearman`` (:func:`~pyro_sdlgm.analysis.inspection.count_self_check`) puts it in the title."""
    fig = _figure(fig, (5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    centres = (bins["lower"] + bins["upper"]) / 2
    ax.bar(centres, bins["accuracy"], width=bins["upper"] - bins["lower"], alpha=0.6, edgecolor="C0",
           label="accuracy of the predicted count")
    ax.plot(bins["confidence"], bins["accuracy"], "o", color="C3", label="(mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence: q(predicted count | x)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    extra = f", Spearman {metrics['spearman']:.3f}" if "spearman" in metrics else ""
    ax.set_title(f"{title}: ECE {metrics['ece']:.3f}, accuracy {metrics['accuracy']:.3f}{extra}", fontsize=9)
    return _finish(fig, path)


def plot_prefix_diagnostics(levels: np.ndarray, recon: np.ndarray, slot_kl: np.ndarray, l_hat: np.ndarray,
                            best: np.ndarray, path: str | Path | None = None, fig: Figure | None = None) -> Figure:
    """Left: mean hard reconstruction ``R_l`` and ``R_l + KL_{1..l}`` by count ``l``. Right: how
    often each count is ``L_hat`` (the mode of ``q(L|x)``) and how often it is the count that
    minimises ``R_l + KL_{1..l}``."""
    fig = _figure(fig, (10, 4.6))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "fontsize": 8, "frameon": False}
    left.plot(levels, recon.mean(0), "o-", label="R_l: -log p(x | first l slots)")
    left.plot(levels, (recon + slot_kl).mean(0), "s--", label="R_l + KL of the first l slots")
    left.set_xlabel("count l")
    left.set_ylabel("nats per observation (mean)")
    left.set_xticks(levels)
    left.set_title("cost of the hard code by count", fontsize=9)
    left.legend(**below)
    width = 0.4
    left_edge = levels - width / 2
    right.bar(left_edge, [(l_hat == level).mean() for level in levels], width,
              label="predicted: the most likely count under q(L|x)")
    right.bar(left_edge + width, [(best == level).mean() for level in levels], width,
              label="supported: the count of lowest R_l + KL of the first l slots")
    right.set_xticks(levels)
    right.set_xlabel("count l")
    right.set_ylabel("fraction of observations")
    right.set_title("counts per observation", fontsize=9)
    right.legend(**below)
    agree = float((l_hat == best).mean())
    fig.suptitle(f"Does the predicted count match the count the data support? They agree for {100 * agree:.0f}% "
                 "of the observations")
    return _finish(fig, path)
