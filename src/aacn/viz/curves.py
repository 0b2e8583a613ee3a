"""Plots of run records: learning curves (per-epoch metrics) and accuracy against model size.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, so nothing here touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aacn.files import atomic_write

__all__ = ["plot_learning_curves", "plot_accuracy_vs_params", "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG, atomically (parent folders created), and return the path."""
    path = Path(path)
    FigureCanvasAgg(fig)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"), binary=True)
    return path


def plot_learning_curves(
    curves: Sequence[tuple[str, Sequence[Sequence[dict[str, Any]]]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Accuracy and loss per epoch, train (dashed) and validation (solid), one colour per row.

    Args:
        curves: ``(label, runs)`` pairs; each run is its list of ``metrics.jsonl`` rows (keys ``epoch``,
            ``train_acc``, ``val_acc``, ``train_loss``, ``val_loss``). Seeds of one label share its colour.
        path: PNG to write.
        title: figure title.
    """
    fig = Figure(figsize=(11, 4.2))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, (label, runs) in enumerate(curves):
        color = f"C{i % 10}"
        for j, rows in enumerate(runs):
            epochs = [r.get("epoch", n + 1) for n, r in enumerate(rows)]  # rows without "epoch": in order
            for ax, key in ((ax_acc, "acc"), (ax_loss, "loss")):
                for split, style in (("train", "--"), ("val", "-")):
                    ys = [r.get(f"{split}_{key}") for r in rows]
                    if any(y is None for y in ys) or not ys:
                        continue
                    name = f"{label} ({split})" if j == 0 else None
                    ax.plot(epochs, ys, style, color=color, label=name, marker="." if len(ys) < 15 else None,
                            alpha=1.0 if len(runs) == 1 else 0.7)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = ax_acc.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(handles)), fontsize="small",
                   bbox_to_anchor=(0.5, -0.02 - 0.04 * ((len(handles) - 1) // 4)))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(handles) - 1) // 4), 1, 1))
    return save_figure(fig, path)


def plot_accuracy_vs_params(
    points: Sequence[tuple[str, float, float, float | None]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    ylabel: str = "test accuracy (%)",
) -> Path:
    """Scatter of accuracy against parameter count, each point annotated with its label.

    Args:
        points: ``(label, params, accuracy_mean, accuracy_std or None)``.
        path: PNG to write.
    """
    fig = Figure(figsize=(7, 4.8))
    ax = fig.subplots()
    for label, params, acc, std in points:
        ax.errorbar([params / 1e6], [acc], yerr=None if std is None else [std], fmt="o", capsize=3)
        ax.annotate(label, (params / 1e6, acc), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set(xlabel="parameters (millions)", ylabel=ylabel, title=title or "Accuracy against model size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
