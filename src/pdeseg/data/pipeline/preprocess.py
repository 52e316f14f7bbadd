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

Statistics and their application are apart, so that a whole image and the tiles of one too
large for memory are normalised by the same code: :func:`image_stats` takes what a method needs
over an image or a block of it (:class:`ImageStats`, one :class:`ChannelStats` per channel:
count, mean, squared deviations, and for ``minmax`` the values or a histogram of integer
values), :meth:`ImageStats.merge` / :func:`merge_stats` add blocks up, and
:func:`apply_normalization` applies a method with the whole image's statistics to the image
or to any block of it. :func:`normalize` is both steps on one whole image (its numbers are
NumPy's ``mean`` / ``std`` / ``percentile`` of the counted voxels, to the last bit);
:mod:`pdeseg.inference.tiling` merges the tiles' statistics first.

Cropping (``crop_nonzero``, as nnU-Net crops every case before training and inference): the
case is cut to the bounding box of its non-zero voxels (any channel) plus ``crop_margin``
voxels per side (:func:`nonzero_box`), after the normalisation statistics are taken on the
whole case, so a voxel inside the box gets the value it would get without the crop. Training
(the cache) and prediction cut the same box; prediction pastes its result back into the
input's grid with background outside the box (:class:`Prepared` keeps the box). An image
without zero background has the whole image as its box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

METHODS = ("zscore", "zscore_all", "minmax", "scale255", "ct")
#: A crop box: ``(start, stop)`` voxel indices per spatial axis, half-open.
Box = tuple[tuple[int, int], ...]


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero (the brain of a skull-stripped MRI).

    Args:
        image: ``(C, *spatial)``.

    Returns:
        bool ``(*spatial)``.
    """
    return (image != 0).any(axis=0)


def nonzero_box(mask: np.ndarray, margin: int = 0, label: np.ndarray | None = None) -> Box:
    """The bounding box of ``mask`` (and of ``label > 0``, so that no labelled voxel is ever cut
    off), widened by ``margin`` voxels per side and clipped to the array.

    Args:
        mask: bool ``(*spatial)``, e.g. :func:`nonzero_mask`.
        margin: voxels added on each side of every axis (>= 0).
        label: ``(*spatial)`` classes, or None.

    Returns:
        ``((start, stop), ...)`` per axis, half-open; the whole array when nothing is set.
    """
    keep = mask if label is None else (mask | (np.asarray(label) > 0))
    box = []
    for axis, n in enumerate(keep.shape):
        hit = np.flatnonzero(keep.any(axis=tuple(a for a in range(keep.ndim) if a != axis)))
        if hit.size == 0:
            return tuple((0, int(s)) for s in keep.shape)
        box.append((max(0, int(hit[0]) - margin), min(int(n), int(hit[-1]) + 1 + margin)))
    return tuple(box)


def box_slices(box: Box) -> tuple[slice, ...]:
    """``box`` as index slices of the spatial axes."""
    return tuple(slice(a, b) for a, b in box)


#: Integer pixels are counted in a histogram from this value (int16 images may be negative).
HIST_OFFSET = -32768
#: The percentiles ``minmax`` clips to.
MINMAX_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class ChannelStats:
    """Statistics of one channel over the voxels a normalisation counts, mergeable over the
    blocks (tiles) of an image: count, mean and the sum of squared deviations from it (merged
    by Chan et al.'s pairwise rule), and for percentiles either the values themselves (one
    block: exact, any dtype) or a histogram of integer values from :data:`HIST_OFFSET`
    (blocks of an integer image: exact after merging).

    A block's own statistics equal NumPy's ``values.mean()`` / ``values.std()`` /
    ``np.percentile(values, q)`` to the last bit, so a whole image is normalised exactly as
    before statistics could be merged.
    """

    count: int = 0
    mean: np.float64 = np.float64(0.0)
    m2: np.float64 = np.float64(0.0)
    values: np.ndarray | None = field(default=None, repr=False)
    histogram: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, values: np.ndarray, percentiles: str | None = None) -> ChannelStats:
        """The statistics of ``values`` (any shape); ``percentiles``: None, ``"values"`` (keep
        them) or ``"histogram"`` (count integer values)."""
        v = np.asarray(values).astype(np.float64).ravel()
        if v.size == 0:
            mean, m2 = np.float64(0.0), np.float64(0.0)
        else:
            mean = v.mean()
            m2 = np.square(v - mean).sum()  # as np.var sums it: sqrt(m2 / n) == v.std()
        kept = v if percentiles == "values" else None
        hist = None
        if percentiles == "histogram":
            hist = np.bincount(v.astype(np.int64) - HIST_OFFSET) if v.size else np.zeros(0, np.int64)
        return cls(int(v.size), mean, m2, kept, hist)

    def merge(self, other: ChannelStats) -> ChannelStats:
        """The statistics of both blocks' voxels together."""
        if not other.count:
            return self
        if not self.count:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = np.float64(self.mean + delta * (other.count / n))
        m2 = np.float64(self.m2 + other.m2 + delta * delta * (self.count * other.count / n))
        values = np.concatenate([self.values, other.values]) if self.values is not None and other.values is not None else None
        hist = None
        if self.histogram is not None and other.histogram is not None:
            hist = np.zeros(max(len(self.histogram), len(other.histogram)), np.int64)
            hist[: len(self.histogram)] += self.histogram
            hist[: len(other.histogram)] += other.histogram
        return ChannelStats(n, mean, m2, values, hist)

    @property
    def std(self) -> np.float64:
        return np.sqrt(self.m2 / self.count) if self.count else np.float64(0.0)

    def percentiles(self, qs: Sequence[float]) -> list:
        """``np.percentile`` (linear interpolation) of the counted values at each of ``qs``.

        Raises:
            ValueError: the statistics keep neither the values nor a histogram.
        """
        if self.values is not None:
            return list(np.percentile(self.values, list(qs)))
        if self.histogram is None:
            raise ValueError("these statistics keep no values or histogram to take percentiles from")
        return [_percentile_from_histogram(self.histogram, q) for q in qs]


def _percentile_from_histogram(hist: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of the values a histogram counts."""
    n = int(hist.sum())
    cum = np.cumsum(hist)
    pos = q / 100 * (n - 1)
    lo_i, hi_i = int(math.floor(pos)), int(math.ceil(pos))
    v_lo = int(np.searchsorted(cum, lo_i, side="right")) + HIST_OFFSET
    v_hi = int(np.searchsorted(cum, hi_i, side="right")) + HIST_OFFSET
    return v_lo + (v_hi - v_lo) * (pos - lo_i)


@dataclass(frozen=True)
class ImageStats:
    """The per-channel statistics a normalisation takes over an image (or over some of its
    blocks, :meth:`merge` adding the others).

    Attributes:
        channels: one :class:`ChannelStats` per channel, over the voxels the method counts.
        fallback: ``ct`` without data-set statistics: over every voxel, used when no voxel of
            the image lies in the window (empty otherwise).
    """

    channels: tuple[ChannelStats, ...]
    fallback: tuple[ChannelStats, ...] = ()

    def merge(self, other: ImageStats) -> ImageStats:
        join = lambda a, b: tuple(x.merge(y) for x, y in zip(a, b))  # noqa: E731
        return ImageStats(join(self.channels, other.channels), join(self.fallback, other.fallback))


def needs_stats(method: str, ct_stats: Sequence[float] | None = None) -> bool:
    """Whether ``method`` takes statistics over each image (``scale255`` and ``ct`` with
    data-set statistics do not)."""
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; use one of {', '.join(METHODS)}")
    return method in ("zscore", "zscore_all", "minmax") or (method == "ct" and ct_stats is None)


def _window(ct_window: Sequence[float] | None) -> tuple[float, float]:
    if ct_window is None:
        raise ValueError("normalization ct needs ct_window [lo, hi]")
    return float(ct_window[0]), float(ct_window[1])


def image_stats(image: np.ndarray, method: str = "zscore", ct_window: Sequence[float] | None = None,
                ct_stats: Sequence[float] | None = None, mergeable: bool = False) -> ImageStats | None:
    """The statistics ``method`` takes over ``image`` (see the module docstring for the voxels
    each counts), or None when it takes none (:func:`needs_stats`).

    Args:
        image: ``(C, *spatial)`` raw intensities (a whole image, or one block of it).
        method, ct_window, ct_stats: as for :func:`normalize`.
        mergeable: a block of an image whose statistics are merged (:meth:`ImageStats.merge`)
            before normalising: ``minmax`` counts integer values in a histogram (exact
            percentiles after merging, for integer images) instead of keeping them, and ``ct``
            also keeps the fallback over every voxel.

    Raises:
        ValueError: unknown method, or ``ct`` without a window.
    """
    if not needs_stats(method, ct_stats):
        return None
    pct = ("histogram" if mergeable else "values") if method == "minmax" else None
    if method == "ct":
        lo, hi = _window(ct_window)
        clipped = np.clip(image, lo, hi).astype(np.float32)
        mask = ((image >= lo) & (image <= hi)).any(axis=0)
        fallback = ()
        if mergeable or not mask.any():
            fallback = tuple(ChannelStats.of(clipped[c]) for c in range(image.shape[0]))
        return ImageStats(tuple(ChannelStats.of(clipped[c][mask]) for c in range(image.shape[0])), fallback)
    mask = np.ones(image.shape[1:], dtype=bool) if method == "zscore_all" else nonzero_mask(image)
    return ImageStats(tuple(ChannelStats.of(image[c][mask], pct) for c in range(image.shape[0])))


def merge_stats(blocks: Iterable[ImageStats | None]) -> ImageStats | None:
    """The statistics of the blocks' voxels together (None when the method takes none)."""
    merged = None
    for block in blocks:
        if block is not None:
            merged = block if merged is None else merged.merge(block)
    return merged


def apply_normalization(image: np.ndarray, method: str, stats: ImageStats | None,
                        ct_window: Sequence[float] | None = None, ct_stats: Sequence[float] | None = None) -> np.ndarray:
    """Normalise ``image`` (a whole image, or a block of one) with the statistics ``stats`` of
    the whole image (:func:`image_stats`, :func:`merge_stats`): the one place every method is
    applied, for whole images (:func:`normalize`) and tiles alike.

    Args:
        image: ``(C, *spatial)`` raw intensities.
        method, ct_window, ct_stats: as for :func:`normalize`.
        stats: the whole image's statistics (None for methods that take none).

    Returns:
        float32 ``(C, *spatial)``.

    Raises:
        ValueError: unknown method, ``ct`` without a window, or statistics missing.
    """
    if not needs_stats(method, ct_stats):
        if method == "scale255":
            return (image / 255.0).astype(np.float32)
        lo, hi = _window(ct_window)
        mean, sd = float(ct_stats[0]), max(float(ct_stats[1]), 1e-8)
        return ((np.clip(image, lo, hi).astype(np.float32) - mean) / sd).astype(np.float32)
    if stats is None:
        raise ValueError(f"normalization {method} needs the image's statistics (image_stats)")
    out = np.zeros(image.shape, dtype=np.float32)
    if method == "ct":  # z-score inside the window's statistics, the same affine map on every voxel
        lo, hi = _window(ct_window)
        clipped = np.clip(image, lo, hi).astype(np.float32)
        channels = stats.channels if stats.channels[0].count else stats.fallback
        for c, s in enumerate(channels):
            std = s.std
            if std > 0:
                out[c] = (clipped[c] - s.mean) / std
        return out
    mask = np.ones(image.shape[1:], dtype=bool) if method == "zscore_all" else nonzero_mask(image)
    if not mask.any():
        return out
    for c, s in enumerate(stats.channels):
        values = image[c][mask].astype(np.float64)
        if method == "minmax":
            if not s.count:
                continue
            lo, hi = s.percentiles(MINMAX_PERCENTILES)
            if hi > lo:
                out[c][mask] = (np.clip(values, lo, hi) - lo) / (hi - lo)
        else:
            std = s.std
            if std > 0:
                out[c][mask] = (values - s.mean) / std
    return out


def normalize(image: np.ndarray, method: str = "zscore", ct_window: Sequence[float] | None = None,
              ct_stats: Sequence[float] | None = None) -> np.ndarray:
    """Normalise each channel of a whole ``image`` (see the module docstring for the methods):
    its own statistics (:func:`image_stats`), then :func:`apply_normalization`, the step tiles
    share with statistics merged over the whole image.

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
    return apply_normalization(image, method, image_stats(image, method, ct_window, ct_stats), ct_window, ct_stats)


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


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Grid size after resampling ``shape`` voxels of ``spacing`` mm to ``target`` mm:
    ``round(shape * spacing / target)``, at least 1 per axis."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(array: np.ndarray, size: Sequence[int], kind: str = "image") -> np.ndarray:
    """Resample a ``(C, *spatial)`` array (``image``: trilinear/bilinear, float32) or a
    ``(*spatial)`` class map (``label``: nearest, uint8) to the grid ``size``.

    Corners of the grids are not aligned (each voxel is a cell of the field of view), so
    the field of view is kept whatever the sizes. Returns the input unchanged when the
    size already matches.
    """
    import torch
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    spatial = array.shape[1:] if kind == "image" else array.shape
    if tuple(spatial) == size:
        return array
    if kind == "label":
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))[None, None].float()
        return F.interpolate(t, size=size, mode="nearest-exact")[0, 0].to(torch.uint8).numpy()
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return F.interpolate(t, size=size, mode=mode, align_corners=False)[0].numpy()


@dataclass
class Prepared:
    """A case after :meth:`Preprocessing.prepare`.

    Attributes:
        image: float32 ``(C, *grid)`` normalised (cropped, resampled) image.
        label: uint8 ``(*grid)`` classes, or None.
        mask: bool ``(*grid)`` non-zero voxels.
        box: ``((start, stop), ...)`` of the crop in the input's voxels, or None (not cropped).
        shape: the input's spatial shape (what a prediction is pasted back into).
    """

    image: np.ndarray
    label: np.ndarray | None
    mask: np.ndarray
    box: Box | None
    shape: tuple[int, ...]


#: Normalisations whose value at a voxel does not depend on voxels outside the non-zero box
#: (statistics over the non-zero voxels, or none): the crop can come before them.
_BOX_LOCAL = ("zscore", "minmax", "scale255")


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a read case into the arrays a model sees, in one object shared
    by the cache (training, scoring) and prediction, so both do exactly the same.

    Attributes:
        modalities: the channels, in order.
        normalization: one of :data:`METHODS`; ``ct_window`` / ``ct_stats`` as for :func:`normalize`.
        target_spacing: resample every case to this voxel size (mm, one per spatial axis)
            after normalising, or None to keep each case's own grid.
        crop_nonzero: cut every case to its non-zero box (plus ``crop_margin`` voxels per
            side) before resampling (see the module docstring).
    """

    modalities: tuple[str, ...]
    normalization: str = "zscore"
    ct_window: tuple[float, ...] | None = None
    ct_stats: tuple[float, ...] | None = None
    target_spacing: tuple[float, ...] | None = None
    crop_nonzero: bool = False
    crop_margin: int = 0

    @classmethod
    def of(cls, spec_or_modalities) -> Preprocessing:
        """From a :class:`~pdeseg.config.TaskSpec`, a Preprocessing, or a list of modalities
        (default normalisation)."""
        if isinstance(spec_or_modalities, Preprocessing):
            return spec_or_modalities
        if isinstance(spec_or_modalities, (list, tuple)):
            return cls(tuple(spec_or_modalities))
        s = spec_or_modalities
        opt = lambda v: tuple(float(x) for x in v) if v is not None else None  # noqa: E731
        return cls(tuple(s.modalities), s.normalization, opt(s.ct_window), opt(s.ct_stats), opt(s.target_spacing),
                   bool(getattr(s, "crop_nonzero", False)), int(getattr(s, "crop_margin", 0)))

    def key(self) -> str:
        """The settings as text, for cache keys (a cropped entry's key names the crop; an uncropped
        one's is what it was before cropping existed)."""
        crop = f"|crop{self.crop_margin}" if self.crop_nonzero else ""
        return f"{self.modalities}|{self.normalization}|{self.ct_window}|{self.ct_stats}|{self.target_spacing}{crop}"

    def box(self, image: np.ndarray, label: np.ndarray | None = None) -> Box | None:
        """The crop box of a raw ``image (C, *spatial)`` (with its ``label``: never cut), or None
        when this preprocessing does not crop."""
        if not self.crop_nonzero:
            return None
        return nonzero_box(nonzero_mask(image), self.crop_margin, label)

    def grid(self, shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """``(shape, spacing)`` of a case of this ``shape`` and ``spacing`` after preprocessing."""
        if self.target_spacing is None:
            return tuple(int(s) for s in shape), tuple(float(s) for s in spacing)
        return resampled_shape(shape, spacing, self.target_spacing), tuple(self.target_spacing)

    def apply(self, image: np.ndarray, spacing: Sequence[float], label: np.ndarray | None = None,
              box: Box | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """:meth:`prepare` as ``(image float32 (C, *grid), label uint8 (*grid) or None, non-zero
        mask bool (*grid))``."""
        p = self.prepare(image, spacing, label, box)
        return p.image, p.label, p.mask

    def prepare(self, image: np.ndarray, spacing: Sequence[float], label: np.ndarray | None = None,
                box: Box | None = None) -> Prepared:
        """Normalise (statistics of the whole case, on its own grid), crop to the non-zero box
        (``crop_nonzero``), then resample to ``target_spacing``.

        Args:
            image: ``(C, *spatial)`` raw intensities; spacing: its voxel size.
            label: ``(*spatial)`` classes, or None (a label widens the box: none of it is cut).
            box: crop to this box instead of the image's own (with ``crop_nonzero``), e.g. a
                perturbed copy of a cached case.
        """
        shape = tuple(int(s) for s in image.shape[1:])
        if self.crop_nonzero and box is None:
            box = self.box(image, label)
        elif not self.crop_nonzero:
            box = None
        cut = box_slices(box) if box is not None else None
        mask = nonzero_mask(image) if cut is None or self.normalization not in _BOX_LOCAL else None
        if cut is not None and self.normalization in _BOX_LOCAL:  # same values as cropping after
            image = image[(slice(None), *cut)]
        out = normalize(image, self.normalization, self.ct_window, self.ct_stats)
        if cut is not None:
            if self.normalization in _BOX_LOCAL:
                mask = nonzero_mask(image)
            else:
                out, mask = out[(slice(None), *cut)], mask[cut]
            label = label[cut] if label is not None else None
        out = np.ascontiguousarray(out)
        size, _ = self.grid(out.shape[1:], spacing)
        if size != tuple(out.shape[1:]):
            out = resample(out, size)
            label = resample(label, size, "label") if label is not None else None
            mask = resample(mask.astype(np.uint8), size, "label").astype(bool)
        return Prepared(out, label, mask, box, shape)
