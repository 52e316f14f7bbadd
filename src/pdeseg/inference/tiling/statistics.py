"""Normalisation statistics summed over the tiles of a whole image (pass 1 of a tiled run),
so that every tile is normalised as the whole image would be."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


#: Methods whose statistics are taken over the image (the others need none).
_NEEDS_STATS = ("zscore", "zscore_all", "minmax", "ct")


@dataclass(frozen=True)
class Normalisation:
    """The normalisation of :mod:`pdeseg.data.pipeline.preprocess` with its per-image
    statistics fixed, so that every tile is normalised as the whole image would be.

    Attributes:
        method, ct_window, ct_stats: as in :class:`~pdeseg.data.pipeline.preprocess.Preprocessing`.
        mean, std: per channel (z-score methods); lo, hi: per channel (minmax).
    """

    method: str
    ct_window: tuple[float, ...] | None = None
    ct_stats: tuple[float, ...] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    lo: tuple[float, ...] = ()
    hi: tuple[float, ...] = ()

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` raw -> float32 normalised, pixel for pixel as
        :func:`pdeseg.data.pipeline.preprocess.normalize` normalises the whole image."""
        m = self.method
        if m == "scale255":
            return (image / 255.0).astype(np.float32)
        if m == "ct" and self.ct_stats is not None:
            lo, hi = self.ct_window
            mean, sd = float(self.ct_stats[0]), max(float(self.ct_stats[1]), 1e-8)
            return ((np.clip(image, lo, hi).astype(np.float32) - mean) / sd).astype(np.float32)
        out = np.zeros(image.shape, dtype=np.float32)
        if m == "ct":
            lo, hi = self.ct_window
            clipped = np.clip(image, lo, hi).astype(np.float32)
            for c in range(image.shape[0]):
                if self.std[c] > 0:
                    out[c] = (clipped[c] - self.mean[c]) / self.std[c]
            return out
        if m == "zscore_all":
            mask = np.ones(image.shape[1:], dtype=bool)
        else:
            mask = (image != 0).any(axis=0)
        for c in range(image.shape[0]):
            values = image[c][mask].astype(np.float64)
            if m == "minmax":
                if self.hi[c] > self.lo[c]:
                    out[c][mask] = (np.clip(values, self.lo[c], self.hi[c]) - self.lo[c]) / (self.hi[c] - self.lo[c])
            elif self.std[c] > 0:
                out[c][mask] = (values - self.mean[c]) / self.std[c]
        return out


def _stats_of_block(method: str, ct_window, block: np.ndarray) -> dict:
    """Sums (and for ``minmax`` a histogram of integer values) of one block ``(C, h, w)``."""
    if method == "ct":
        lo, hi = ct_window
        inside = ((block >= lo) & (block <= hi)).any(axis=0)
        block = np.clip(block, lo, hi)
        mask = inside
    elif method == "zscore_all":
        mask = None
    else:
        mask = (block != 0).any(axis=0)
    out = {"n": [], "s1": [], "s2": [], "hist": []}
    for c in range(block.shape[0]):
        v = (block[c] if mask is None else block[c][mask]).astype(np.float64).ravel()
        out["n"].append(int(v.size))
        out["s1"].append(float(v.sum()))
        out["s2"].append(float(np.square(v).sum()))
        if method == "minmax":
            out["hist"].append(np.bincount(v.astype(np.int64) - _HIST_OFFSET, minlength=0) if v.size else np.zeros(0, np.int64))
    out["any_inside"] = bool(mask.any()) if mask is not None else True
    return out


#: Integer pixels are counted in a histogram from this value (int16 images may be negative).
_HIST_OFFSET = -32768


def _percentile_from_histogram(hist: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of the values a histogram counts."""
    n = int(hist.sum())
    cum = np.cumsum(hist)
    pos = q / 100 * (n - 1)
    lo_i, hi_i = int(math.floor(pos)), int(math.ceil(pos))
    v_lo = int(np.searchsorted(cum, lo_i, side="right")) + _HIST_OFFSET
    v_hi = int(np.searchsorted(cum, hi_i, side="right")) + _HIST_OFFSET
    return v_lo + (v_hi - v_lo) * (pos - lo_i)


def _combine_stats(spec, blocks: list[dict]) -> Normalisation:
    method = spec.normalization
    window = tuple(spec.ct_window) if spec.ct_window is not None else None
    stats = tuple(spec.ct_stats) if spec.ct_stats is not None else None
    if method not in _NEEDS_STATS or (method == "ct" and stats is not None):
        return Normalisation(method, window, stats)
    channels = len(blocks[0]["n"])
    n = [sum(b["n"][c] for b in blocks) for c in range(channels)]
    s1 = [sum(b["s1"][c] for b in blocks) for c in range(channels)]
    s2 = [sum(b["s2"][c] for b in blocks) for c in range(channels)]
    mean = tuple(s1[c] / n[c] if n[c] else 0.0 for c in range(channels))
    std = tuple(math.sqrt(max(s2[c] / n[c] - mean[c] ** 2, 0.0)) if n[c] else 0.0 for c in range(channels))
    if method == "minmax":
        lo, hi = [], []
        for c in range(channels):
            hists = [b["hist"][c] for b in blocks]
            total = np.zeros(max(len(h) for h in hists), np.int64)
            for h in hists:
                total[: len(h)] += h
            if total.sum() == 0:
                lo.append(0.0)
                hi.append(0.0)
                continue
            lo.append(_percentile_from_histogram(total, 0.5))
            hi.append(_percentile_from_histogram(total, 99.5))
        return Normalisation(method, window, stats, mean, std, tuple(lo), tuple(hi))
    return Normalisation(method, window, stats, mean, std)
