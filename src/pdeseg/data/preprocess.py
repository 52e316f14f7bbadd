"""Intensity normalisation inside the brain mask, shared by the cache and by inference."""

from __future__ import annotations

import numpy as np


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any modality is non-zero (BraTS volumes are skull-stripped).

    Args:
        image: ``(C, *spatial)``.

    Returns:
        bool ``(*spatial)``.
    """
    return (image != 0).any(axis=0)


def normalize(image: np.ndarray, mask: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Normalise each modality using the statistics inside ``mask``; zero outside.

    ``zscore``: ``(x - mean) / std``; ``minmax``: clip to the 0.5 / 99.5 percentiles and
    scale to ``[0, 1]``. A modality that is constant in the mask becomes 0.
    ``scale255``: ``x / 255`` everywhere (8-bit images such as the LGG TIFFs to ``[0, 1]``;
    the mask is not used).

    Args:
        image: ``(C, *spatial)`` raw intensities.
        mask: bool ``(*spatial)``.
        method: ``zscore`` or ``minmax``.

    Returns:
        float32 ``(C, *spatial)``.
    """
    if method == "scale255":
        return (image / 255.0).astype(np.float32)
    if method not in ("zscore", "minmax"):
        raise ValueError(f"unknown normalisation {method!r}; use zscore, minmax or scale255")
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        if method == "zscore":
            std = values.std()
            if std > 0:
                out[c][mask] = (values - values.mean()) / std
        else:
            lo, hi = np.percentile(values, [0.5, 99.5])
            if hi > lo:
                out[c][mask] = (np.clip(values, lo, hi) - lo) / (hi - lo)
    return out
