"""Figures a person can look at: loss curves and segmentation panels (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

# background transparent, NCR red, ED green, ET yellow (the usual BraTS overlay colours)
CLASS_COLOURS = ListedColormap([(0, 0, 0, 0), (0.9, 0.1, 0.1, 0.8), (0.1, 0.8, 0.2, 0.6), (1.0, 0.9, 0.1, 0.9)])


def plot_loss_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Training and validation loss per epoch, one panel per model (paper 000, Fig. 4)."""
    n = len(histories)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False, sharey=True)
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
    plt.close(fig)
    return path


def plot_segmentation_panel(
    rows: list[dict[str, Any]],
    path: str | Path,
) -> Path:
    """One row per case: FLAIR, the truth and each model's prediction overlaid (Fig. 5).

    Args:
        rows: dicts with ``case`` (str), ``flair`` ``(H, W)`` image, ``truth`` ``(H, W)``
            classes and ``predictions`` ``{model name: (H, W) classes}``.
    """
    models = list(rows[0]["predictions"])
    ncol = 2 + len(models)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.6 * ncol, 2.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        img = np.rot90(row["flair"])
        panels = [("FLAIR", None), ("truth", row["truth"])] + [(m, row["predictions"][m]) for m in models]
        for c, (title, seg) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, cmap="gray")
            if seg is not None:
                ax.imshow(np.rot90(seg), cmap=CLASS_COLOURS, vmin=0, vmax=3, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title)
        axes[r][0].set_ylabel(row["case"], fontsize=8)
    fig.text(0.5, 0.005, "red: necrotic core (NCR)   green: oedema (ED)   yellow: enhancing tumour (ET)", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
