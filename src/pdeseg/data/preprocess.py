"""Intensity normalisation, shared by the cache (training, scoring) and by prediction.

Methods (``data.normalization``):

* ``zscore``: per channel ``(x - mean) / sd`` over the non-zero voxels (skull-stripped MRI
  such as BraTS, whose background is exactly 0); 0 outside them.
* ``zscore_all``: per channel z-score over every voxel (MRI that is not skull-stripped).
* ``minmax``: per channel, clip to the 0.5 / 99.5 percentiles of the non-zero voxels and
  scale to ``[0, 1]``; 0 outside them.
* ``scale255``: ``x / 255`` (8-bit images such as the LGG TIFFs).
* ``ct``: clip to the window ``[lo, hi]`` (Hounsfield units), then z-score over the voxels
  inside the window (air and bone outside the window no longer dominate the statistics).

A channel that is constant where it is measured becomes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METHODS = ("zscore", "zscore_all", "minmax", "scale255", "ct")


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero (the brain of a skull-stripped MRI).

    Args:
        image: ``(C, *spatial)``.

    Returns:
        bool ``(*spatial)``.
    """
    return (image != 0).any(axis=0)


def normalize(image: np.ndarray, method: str = "zscore", ct_window: Sequence[float] | None = None) -> np.ndarray:
    """Normalise each channel of ``image`` (see the module docstring for the methods).

    Args:
        image: ``(C, *spatial)`` raw intensities.
        method: one of :data:`METHODS`.
        ct_window: ``[lo, hi]`` for ``ct``.

    Returns:
        float32 ``(C, *spatial)``.

    Raises:
        ValueError: unknown method, or ``ct`` without a window.
    """
    if method == "scale255":
        return (image / 255.0).astype(np.float32)
    if method == "ct":
        if ct_window is None:
            raise ValueError("normalization ct needs ct_window [lo, hi]")
        lo, hi = float(ct_window[0]), float(ct_window[1])
        clipped = np.clip(image, lo, hi).astype(np.float32)
        inside = (image >= lo) & (image <= hi)
        return _zscore(clipped, inside.any(axis=0) if inside.any() else np.ones(image.shape[1:], bool), fill_outside=False)
    if method == "zscore_all":
        return _zscore(image, np.ones(image.shape[1:], dtype=bool))
    if method == "zscore":
        return _zscore(image, nonzero_mask(image))
    if method == "minmax":
        return _minmax(image, nonzero_mask(image))
    raise ValueError(f"unknown normalisation {method!r}; use one of {', '.join(METHODS)}")


def _zscore(image: np.ndarray, mask: np.ndarray, fill_outside: bool = True) -> np.ndarray:
    """Z-score with the statistics inside ``mask``; outside it 0 (``fill_outside``) or the same
    affine map."""
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        std = values.std()
        if std > 0:
            if fill_outside:
                out[c][mask] = (values - values.mean()) / std
            else:
                out[c] = (image[c] - values.mean()) / std
    return out


def _minmax(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi > lo:
            out[c][mask] = (np.clip(values, lo, hi) - lo) / (hi - lo)
    return out
