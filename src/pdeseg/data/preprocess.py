"""Intensity normalisation, shared by the cache (training, scoring) and by prediction.

Methods (``data.normalization``):

* ``zscore``: per channel ``(x - mean) / sd`` over the non-zero voxels (skull-stripped MRI
  such as BraTS, whose background is exactly 0); 0 outside them.
* ``zscore_all``: per channel z-score over every voxel (MRI that is not skull-stripped).
* ``minmax``: per channel, clip to the 0.5 / 99.5 percentiles of the non-zero voxels and
  scale to ``[0, 1]``; 0 outside them.
* ``scale255``: ``x / 255`` (8-bit images such as the LGG TIFFs).
* ``ct``: clip to the window ``[lo, hi]`` (Hounsfield units), then z-score. With data-set
  statistics ``ct_stats = [mean, sd]`` (nnU-Net's rule, :func:`ct_statistics`: window = the
  0.5 / 99.5 percentiles of the training foreground, mean and sd of that foreground) every
  case gets the same affine map, so a Hounsfield value means the same everywhere; with a
  window alone each case is z-scored over its own voxels inside the window.

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


def normalize(image: np.ndarray, method: str = "zscore", ct_window: Sequence[float] | None = None,
              ct_stats: Sequence[float] | None = None) -> np.ndarray:
    """Normalise each channel of ``image`` (see the module docstring for the methods).

    Args:
        image: ``(C, *spatial)`` raw intensities.
        method: one of :data:`METHODS`.
        ct_window: ``[lo, hi]`` for ``ct``.
        ct_stats: ``[mean, sd]`` of the training foreground for ``ct`` (see the module docstring).

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
        if ct_stats is not None:
            mean, sd = float(ct_stats[0]), max(float(ct_stats[1]), 1e-8)
            return ((clipped - mean) / sd).astype(np.float32)
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


#: Foreground voxels sampled per case for the CT statistics (nnU-Net samples about as many).
CT_SAMPLES_PER_CASE = 10_000


def foreground_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                      n: int = CT_SAMPLES_PER_CASE) -> np.ndarray:
    """Up to ``n`` intensities of labelled voxels (``label > 0``) of every channel, drawn
    without replacement.

    Args:
        image: ``(C, *spatial)`` raw intensities; label: ``(*spatial)`` classes.

    Returns:
        ``(m,)`` float64 with ``m <= n * C``.
    """
    values = image[:, label > 0].astype(np.float64).ravel()
    if values.size > n:
        values = rng.choice(values, size=n, replace=False)
    return values


def ct_statistics(samples: np.ndarray) -> tuple[list[float], list[float]]:
    """nnU-Net's CT normalisation parameters from training-foreground intensities.

    Returns:
        ``(window [p0.5, p99.5], stats [mean, sd])`` of ``samples``.

    Raises:
        ValueError: no samples (no labelled voxel in the training cases), or a constant
            foreground.
    """
    if samples.size == 0:
        raise ValueError("the training cases have no labelled voxels to take CT statistics from")
    lo, hi = np.percentile(samples, [0.5, 99.5])
    if not hi > lo:
        raise ValueError(f"the training foreground has one intensity ({lo:g}); give data.ct_window explicitly")
    return [float(lo), float(hi)], [float(samples.mean()), float(samples.std())]
