"""What a trained cable block does to each modality (paper 000, Fig. 6), and its coefficients."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pdeseg.nn.pde.cable import CableBlock  # noqa: E402


@torch.no_grad()
def plot_cable_effect(block: CableBlock, image: np.ndarray, modalities: list[str], path: str | Path) -> Path:
    """Input, block output and their difference for each modality of one slice.

    Args:
        block: a (trained) cable block.
        image: ``(C, H, W)`` normalised slice.
        modalities: channel names.
    """
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
    y = block.float().eval()(x)[0].numpy()
    phys = block.physical()
    fig, axes = plt.subplots(len(modalities), 3, figsize=(8, 2.6 * len(modalities)), squeeze=False)
    for c, mod in enumerate(modalities):
        diff = y[c] - image[c]
        lim = float(np.abs(diff).max()) or 1.0
        for ax, arr, title, kw in (
            (axes[c][0], image[c], f"{mod} input", {"cmap": "gray"}),
            (axes[c][1], y[c], f"{mod} after block", {"cmap": "gray"}),
            (axes[c][2], diff, "output - input", {"cmap": "coolwarm", "vmin": -lim, "vmax": lim}),
        ):
            ax.imshow(np.rot90(arr), **kw)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c][0].set_ylabel(f"Phi={phys['phi'][c]:.2f} Psi={phys['psi'][c]:.2f}\ntau={phys['tau'][c]:.3f}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_cable_coefficients(values: dict[int, dict[str, list[float]]], modalities: list[str], path: str | Path) -> Path:
    """Learned Phi, Psi and tau per modality, one marker per seed.

    Args:
        values: ``{seed: {"phi": [...], "psi": [...], "tau": [...]}}``.
    """
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    xs = np.arange(len(modalities))
    for ax, key, label in zip(axes, ("phi", "psi", "tau"), ("Phi (horizontal)", "Psi (vertical)", "tau (decay)")):
        for i, (seed, v) in enumerate(sorted(values.items())):
            ax.plot(xs + 0.08 * (i - len(values) / 2), v[key], "o", label=f"seed {seed}")
        ax.set_xticks(xs, modalities)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
