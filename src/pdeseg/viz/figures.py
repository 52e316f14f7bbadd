"""Figures a person can look at: loss curves and segmentation panels (matplotlib).

Every figure is a :class:`matplotlib.figure.Figure` of its own, written with ``savefig``
(:func:`subplots`): no pyplot state and no GUI backend is used, and importing these
modules leaves the user's backend (a notebook's inline one, say) as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# background transparent, NCR red, ED green, ET yellow (the usual BraTS overlay colours)
CLASS_COLOURS = ListedColormap([(0, 0, 0, 0), (0.9, 0.1, 0.1, 0.8), (0.1, 0.8, 0.2, 0.6), (1.0, 0.9, 0.1, 0.9)])


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """A new figure and its grid of axes, as ``matplotlib.pyplot.subplots`` gives them, but
    a :class:`~matplotlib.figure.Figure` of its own: pyplot never sees it (nothing to close,
    no figure manager) and ``fig.savefig`` renders it without any backend being selected.

    Args:
        nrows, ncols: the grid; figsize: inches (width, height).
        options: ``Figure.subplots`` options (``squeeze``, ``sharex``, ``sharey``, ...).

    Returns:
        ``(figure, axes)``: one Axes, or an array of them (see ``squeeze``).
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **options)


def plot_loss_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Training and validation loss per epoch, one panel per model (paper 000, Fig. 4)."""
    n = len(histories)
    fig, axes = subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False, sharey=True)
    for ax, (name, hist) in zip(axes[0], histories.items()):
        epochs = [r["epoch"] for r in hist]
        ax.plot(epochs, [r["train_loss"] for r in hist], "o-", label="train")
        if any(r.get("val_loss") is not None for r in hist):
            ax.plot(epochs, [r.get("val_loss") for r in hist], "s-", label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("loss (CE + Dice)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


COLOUR_NAMES = ("", "red", "green", "yellow")


def plot_segmentation_panel(
    rows: list[dict[str, Any]],
    path: str | Path,
    class_names: tuple[str, ...] | list[str] = ("background", "necrotic core (NCR)", "oedema (ED)", "enhancing tumour (ET)"),
    rotate: bool = True,
) -> Path:
    """One row per case: an image channel, the truth and each model's prediction overlaid (Fig. 5).

    Args:
        rows: dicts with ``case`` (str), ``image`` ``(H, W)``, optionally ``channel`` (its
            name, default FLAIR), ``truth`` ``(H, W)`` classes and ``predictions``
            ``{model name: (H, W) classes}``.
        class_names: up to 4 class names for the colour legend.
        rotate: show ``rot90`` of the arrays (BraTS slices are stored x-major).
    """
    models = list(rows[0]["predictions"])
    ncol = 2 + len(models)
    fig, axes = subplots(len(rows), ncol, figsize=(2.6 * ncol, 2.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        turn = np.rot90 if rotate else np.asarray
        img = turn(row["image"])
        panels = [(row.get("channel", "FLAIR"), None), ("truth", row["truth"])] + [(m, row["predictions"][m]) for m in models]
        for c, (title, seg) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray")
            if seg is not None:
                ax.imshow(turn(seg), cmap=CLASS_COLOURS, vmin=0, vmax=3, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title)
        axes[r][0].set_ylabel(row["case"], fontsize=8)
    legend = "   ".join(f"{COLOUR_NAMES[i]}: {n}" for i, n in enumerate(class_names[:4]) if i)
    fig.text(0.5, 0.005, legend, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


#: Per-epoch panels of :func:`plot_epoch_metrics`: (history key suffix, axis label).
EPOCH_PANELS = (("loss", "loss"), ("accuracy", "pixel accuracy"), ("iou_mean_all", "mean IoU (all classes)"), ("dice_mean", "Dice"))


def plot_epoch_metrics(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss, pixel accuracy, mean IoU and Dice per epoch, train and validation (paper 003, Fig. 2).

    Args:
        history: the per-epoch rows of a run (``train_<metric>``, ``val_<metric>``).
    """
    fig, axes = subplots(1, len(EPOCH_PANELS), figsize=(4.2 * len(EPOCH_PANELS), 3.4), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, (key, label) in zip(axes[0], EPOCH_PANELS):
        for split, marker in (("train", "o-"), ("val", "s-")):
            values = [r.get(f"{split}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker, label="train" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_variant_curves(histories: dict[str, list[list[dict[str, Any]]]], path: str | Path, key: str = "val_dice_mean") -> Path:
    """``key`` per epoch for every variant, averaged over its seeds (a band shows min..max)."""
    fig, ax = subplots(figsize=(8, 4.5))
    for name, runs in histories.items():
        n = min(len(h) for h in runs)
        values = np.array([[r.get(key, np.nan) for r in h[:n]] for h in runs], dtype=float)
        epochs = np.arange(1, n + 1)
        line, = ax.plot(epochs, values.mean(axis=0), "o-", label=name, markersize=3)
        if len(runs) > 1:
            ax.fill_between(epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.12)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_class_masks(
    rows: list[dict[str, Any]], class_names: tuple[str, ...] | list[str], path: str | Path, rotate: bool = True
) -> Path:
    """Per case: the image, the manual mask, one binary mask per predicted class, and the
    predicted composite (paper 003, Fig. 3).

    Args:
        rows: dicts with ``case``, ``image`` ``(H, W)``, ``truth`` and ``prediction`` ``(H, W)`` classes.
        class_names: names of classes ``0..C-1``.
        rotate: show ``rot90`` of the arrays (BraTS slices are stored x-major).
    """
    fg = list(range(1, len(class_names)))
    ncol = 3 + len(fg)
    vmax = max(len(class_names) - 1, 1)
    cmap = CLASS_COLOURS if len(class_names) <= 4 else "tab10"
    fig, axes = subplots(len(rows), ncol, figsize=(2.5 * ncol, 2.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        panels = [("image", row["image"], "image"), ("manual mask", row["truth"], "classes")]
        panels += [(f"predicted {class_names[c]}", row["prediction"] == c, "binary") for c in fg]
        panels += [("predicted composite", row["prediction"], "classes")]
        for c, (title, img, kind) in enumerate(panels):
            ax = axes[r][c]
            shown = np.rot90(img) if rotate else np.asarray(img)
            if kind == "classes":
                ax.imshow(np.zeros(shown.shape), cmap="gray", vmin=0, vmax=1)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            elif kind == "binary":
                ax.imshow(shown.astype(float), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(shown, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r][0].set_ylabel(row["case"], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_against(panels: list[tuple[str, dict[str, tuple]]], x_label: str, path: str | Path, title: str = "",
                 log_x: bool = False) -> Path:
    """One panel per metric of a value against a condition (noise level, training fraction),
    one line per model with its confidence band.

    Args:
        panels: ``(y label, {model: (xs, means, lows, highs)})`` per panel; a band is drawn
            where ``lows`` / ``highs`` are finite (not for a single seed).
        log_x: logarithmic x axis (fractions), ticks at the values.
    """
    fig, axes = subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (label, curves) in zip(axes[0], panels):
        for name, (xs, means, lows, highs) in curves.items():
            line, = ax.plot(xs, means, "o-", label=name, markersize=4)
            ok = np.isfinite(lows) & np.isfinite(highs)
            if ok.any():
                ax.fill_between(xs[ok], lows[ok], highs[ok], color=line.get_color(), alpha=0.15)
        if log_x:
            ax.set_xscale("log")
            ticks = sorted({float(x) for curve in curves.values() for x in curve[0]})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
