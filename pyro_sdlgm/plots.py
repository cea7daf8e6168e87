"""Figures written to a run folder (matplotlib's object API, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_training_curve(history: list[dict], path: str | Path) -> Path:
    """Training and validation negative ELBO per example, by epoch, with the temperature."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_loss"] for r in history], label="train (annealed objective)")
    if any("val_loss" in r for r in history):
        ax.plot([r["epoch"] for r in history if "val_loss" in r], [r["val_loss"] for r in history if "val_loss" in r],
                label="validation (final temperatures)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per example")
    ax.legend(loc="upper right")
    twin = ax.twinx()
    twin.plot(epochs, [r["tau_support"] for r in history], color="grey", linestyle=":", label="tau (support)")
    twin.set_ylabel("temperature", color="grey")
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
