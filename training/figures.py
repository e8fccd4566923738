"""Figures from plain arrays (not from the training loop): loss curves, reconstruction panels, codebook use,
rate-distortion."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backend_bases import FigureCanvasBase

from models.files import write_atomically

FIGURE_FORMATS = tuple(sorted(FigureCanvasBase.get_supported_filetypes()))  # what a figure's file name may end in


def printable(name: str) -> str:
    """A file name as a title can show it: bytes that are not UTF-8 (which Linux allows in names, and Python holds
    as surrogates) as escapes. matplotlib refused such a title, and the run ended with a traceback after training."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def loss_curves_figure(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Per-epoch total / reconstruction / VQ loss (as in the original report) and validation SSIM."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_ssim) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "total"), ("recon_loss", "reconstruction"), ("vq_loss", "VQ (commitment)")):
        ax_loss.plot(epochs, [row[key] for row in history], marker="o", ms=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="Training losses")
    ax_loss.legend()
    ax_ssim.plot(epochs, [row["val_ssim"] for row in history], marker="o", ms=3, color="tab:green")
    ax_ssim.set(xlabel="epoch", ylabel="mean SSIM", title="Validation SSIM")
    ax_ssim.grid(alpha=0.3)
    return _save(fig, path)


def panels_figure(
    originals: Sequence[np.ndarray],
    reconstructions: Sequence[np.ndarray],
    ssims: Sequence[float],
    names: Sequence[str],
    path: Path,
    per_group: int = 2,
) -> Path:
    """Original vs reconstruction for the best, median and worst slices by SSIM (not hand-picked)."""
    order = np.argsort(ssims)
    middle = len(order) // 2
    groups = {
        "best": order[::-1][:per_group],
        "median": order[max(0, middle - per_group // 2) :][:per_group],
        "worst": order[:per_group],
    }
    picks = [(label, int(i)) for label, idx in groups.items() for i in idx]
    fig, axes = plt.subplots(2, len(picks), figsize=(2.4 * len(picks), 5.2), squeeze=False)
    for col, (label, i) in enumerate(picks):
        axes[0, col].imshow(originals[i], cmap="gray", vmin=0, vmax=1)
        axes[0, col].set_title(f"{label}\n{printable(names[i])}", fontsize=7)
        axes[1, col].imshow(reconstructions[i], cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"SSIM {ssims[i]:.3f}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].text(-0.1, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "reconstruction", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    return _save(fig, path)


def codebook_usage_figure(counts: np.ndarray, path: Path) -> Path:
    """How often each code is used, sorted, so collapse (a few codes doing all the work) is visible."""
    counts = np.asarray(counts)
    used = int((counts > 0).sum())
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0, color="tab:blue")
    ax.set(
        xlabel="code (sorted by use)",
        ylabel="uses",
        yscale="log",
        title=f"Codebook usage: {used} of {len(counts)} codes used ({used / len(counts):.0%})",
    )
    return _save(fig, path)


def rate_distortion_figure(
    points: Sequence[dict[str, Any]], curves: Mapping[str, Sequence[tuple[float, float]]], path: Path
) -> Path:
    """Mean SSIM vs bits per slice: our operating points (``label``, ``bits``, ``ssim``) and codec curves."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        xs, ys = zip(*sorted(curve), strict=True) if curve else ((), ())
        ax.plot(xs, ys, marker=".", label=name)
    for point in points:
        ax.scatter(point["bits"], point["ssim"], s=60, zorder=3, marker="*")
        ax.annotate(point["label"], (point["bits"], point["ssim"]), textcoords="offset points", xytext=(6, -10))
    ax.set(xlabel="bits per slice", ylabel="mean SSIM (OASIS test)", xscale="log", title="Rate-distortion")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    kind = path.suffix.lstrip(".") or plt.rcParams["savefig.format"]  # named: the partial file's name ends otherwise
    try:
        write_atomically(path, lambda partial: fig.savefig(partial, dpi=110, format=kind))
    finally:
        plt.close(fig)
    return path
