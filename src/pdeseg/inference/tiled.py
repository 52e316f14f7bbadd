"""Segmenting 2D images larger than memory, tile by tile, in one process or on a Dask cluster.

The image is read and the result written one tile at a time (a window reader over an
OME-TIFF / OME-Zarr, see :mod:`pdeseg.data.readers.ome`, or any array-like), so memory holds
the model and the tiles in flight, whatever the image's size. Four passes, each a set of
independent tasks over tiles (run in a loop here, or as ``dask.distributed`` tasks on any
scheduler: a ``LocalCluster`` or a cluster's address):

1. **statistics**: the normalisation the model was trained with is per image (z-score,
   percentiles), so its statistics are summed over the whole image first (exactly, in
   float64; percentiles exactly from a histogram for integer pixels);
2. **prediction**: each tile's *core* (``tile x tile``) is segmented in a window with a
   ``halo`` of context on every side. Cores and windows lie on the grid the network pools on
   over the whole image (the image zero-padded to the network's size multiple, split before
   and after as :func:`pdeseg.nn.padding.pad_to_multiple` does), so the network sees in each
   window exactly what it sees there in the whole image, less what lies beyond the halo.
   Cells are found in the whole window (so a cell cut by a core border is whole there), and
   the window's labels within ``band`` pixels of the core are kept in a scratch store;
3. **reconciliation**: two neighbouring tiles (8-neighbourhood) both labelled the strip of
   ``2 band`` pixels along their seam; a cell of one and a cell of the other are the same cell
   when their overlap there exceeds half of the smaller one's area there. Those pairs are
   joined (union-find) and every cell with pixels in a core gets one id, ``1..N`` in raster
   order of tiles, unique over the image;
4. **relabelling**: each core's labels are mapped to those ids and written, one chunk per tile.

Away from the seams the result equals whole-image prediction; within a few pixels of a seam
a cell can differ when the two windows disagree (a pixel whose class flips, two cells joined
in one window and split in the other). ``benchmarks/bench_tiled.py`` counts those cells.

Semantic models (no cells) skip passes 3 and 4: each core's classes are written directly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Default core size of a tile (pixels, each side) and context around it.
DEFAULT_TILE = 1024
DEFAULT_HALO = 64
#: Half-width of the strip along a seam in which two tiles' cells are matched.
DEFAULT_BAND = 16
#: Seconds to wait for a ``dask_address`` scheduler before giving up.
CONNECT_TIMEOUT_S = 10
#: Tile sizes must be multiples of this (TIFF tiles; the pooling grid of the networks here).
TILE_MULTIPLE = 16


# --------------------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TileGrid:
    """Tiles of an ``height x width`` image on the network's pooling grid.

    The image sits in a virtual canvas padded to a multiple of ``multiple`` (``before`` pixels
    above and left, as the network pads a whole image); tile cores are ``tile`` canvas pixels
    apart from the canvas origin, windows add ``halo`` on each side, both cut to the canvas.
    All coordinates returned are image coordinates (windows may start below 0 or end past the
    image: those pixels are the network's zero padding).

    Raises:
        ConfigError: a tile that is not a positive multiple of :data:`TILE_MULTIPLE` and of
            ``multiple``, a halo that is not a multiple of ``multiple`` or is smaller than
            ``band``, or a negative band.
    """

    height: int
    width: int
    tile: int = DEFAULT_TILE
    halo: int = DEFAULT_HALO
    band: int = DEFAULT_BAND
    multiple: int = 16

    def __post_init__(self) -> None:
        m = self.multiple
        step = math.lcm(TILE_MULTIPLE, m)
        for name in ("tile", "halo", "band"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"{name} must be a whole number of pixels, got {v!r}")
        if self.tile < step or self.tile % step:
            raise ConfigError(f"tile must be a positive multiple of {step} pixels (the network pools by {m}; TIFF tiles "
                              f"are multiples of {TILE_MULTIPLE}), got {self.tile}")
        if self.halo < 0 or self.halo % m:
            raise ConfigError(f"halo must be a multiple of {m} pixels >= 0 (the network's pooling grid), got {self.halo}")
        if self.band < 1:
            raise ConfigError(f"band must be a whole number of pixels >= 1, got {self.band}")
        if self.halo < self.band:
            raise ConfigError(f"halo (--halo) must be at least {self.band} pixels: neighbouring tiles' cells are matched in "
                              f"a strip of {self.band} pixels along each seam, inside the halo; got {self.halo}")
        if self.height < 1 or self.width < 1:
            raise DataError(f"an image of {self.height}x{self.width} pixels has nothing to tile")

    def _pads(self, n: int) -> tuple[int, int]:
        total = -(-n // self.multiple) * self.multiple
        return total, (total - n) // 2

    @property
    def canvas(self) -> tuple[int, int, int, int]:
        """``(canvas height, before_y, canvas width, before_x)``."""
        hy, by = self._pads(self.height)
        hx, bx = self._pads(self.width)
        return hy, by, hx, bx

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles along y and x."""
        hy, _, hx, _ = self.canvas
        return -(-hy // self.tile), -(-hx // self.tile)

    def tiles(self) -> list[tuple[int, int]]:
        """Every tile ``(i, j)``, row by row."""
        ny, nx = self.shape
        return [(i, j) for i in range(ny) for j in range(nx)]

    def index(self, t: tuple[int, int]) -> int:
        return t[0] * self.shape[1] + t[1]

    def core(self, t: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``t``'s core, cut to the image (never empty)."""
        hy, by, hx, bx = self.canvas
        y0, x0 = t[0] * self.tile - by, t[1] * self.tile - bx
        return max(y0, 0), min(y0 + self.tile, self.height), max(x0, 0), min(x0 + self.tile, self.width)

    def window(self, t: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of tile ``t``'s window: the core's canvas square plus the halo,
        cut to the canvas (so it may reach outside the image by the padding)."""
        hy, by, hx, bx = self.canvas
        cy0, cx0 = t[0] * self.tile, t[1] * self.tile
        y0, y1 = max(cy0 - self.halo, 0), min(cy0 + self.tile + self.halo, hy)
        x0, x1 = max(cx0 - self.halo, 0), min(cx0 + self.tile + self.halo, hx)
        return y0 - by, y1 - by, x0 - bx, x1 - bx

    def keep(self, t: tuple[int, int]) -> tuple[int, int, int, int]:
        """The core plus ``band`` pixels on each side, cut to the image: the labels kept for
        reconciliation."""
        y0, y1, x0, x1 = self.core(t)
        b = self.band
        return max(y0 - b, 0), min(y1 + b, self.height), max(x0 - b, 0), min(x1 + b, self.width)

    @property
    def keep_chunk(self) -> int:
        """Side of a scratch chunk: a tile's kept labels fit one chunk."""
        return self.tile + 2 * self.band

    def keep_origin(self, t: tuple[int, int]) -> tuple[int, int]:
        """Image coordinates of the scratch chunk's first pixel for tile ``t``."""
        y0, _, x0, _ = self.core(t)
        hy, by, hx, bx = self.canvas
        return t[0] * self.tile - by - self.band, t[1] * self.tile - bx - self.band

    def pairs(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Neighbouring tiles whose kept labels overlap: right, below, below-right, below-left."""
        ny, nx = self.shape
        out = []
        for i, j in self.tiles():
            for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1)):
                k, l_ = i + di, j + dj
                if 0 <= k < ny and 0 <= l_ < nx:
                    out.append(((i, j), (k, l_)))
        return out


def size_multiple(model: Any) -> int:
    """The spatial multiple a network pads its input to (its pooling factor): its
    ``size_multiple()`` when it has one, 16 for pdeseg's UNets, the least common multiple of an
    ensemble's members."""
    members = getattr(model, "members", None)
    if members is not None:
        return math.lcm(*(size_multiple(m) for m in members))
    fn = getattr(model, "size_multiple", None)
    if callable(fn):
        return int(fn())
    from pdeseg.nn.unet import SIZE_MULTIPLE

    inner = getattr(model, "unet", None)  # PDE-UNet wraps a UNet
    return int(getattr(inner, "size_multiple", lambda: SIZE_MULTIPLE)()) if inner is not None else SIZE_MULTIPLE


# --------------------------------------------------------------------------------------
# where pixels come from
# --------------------------------------------------------------------------------------


class ArraySource:
    """A window reader over an array-like ``(C, H, W)`` of raw intensities (numpy, a memory
    map, a Dask or Zarr array): only the window is turned into float32."""

    def __init__(self, array: Any):
        if len(array.shape) != 3:
            raise DataError(f"expected an image shaped (C, H, W), got shape {tuple(array.shape)}")
        self.array = array
        self.shape = (int(array.shape[1]), int(array.shape[2]))
        self.channels = int(array.shape[0])
        self.dtype = np.dtype(array.dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.array[:, y0:y1, x0:x1]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class OmeSource:
    """A window reader over one level of an OME-TIFF / OME-Zarr, made of the file channels
    ``channels`` (see :meth:`pdeseg.data.readers.ome.OmeImage.channel_indices`). Picklable:
    each process opens the file itself."""

    path: str
    level: int
    channels: tuple[tuple[int, ...], ...]
    shape: tuple[int, int]
    dtype: str

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return _ome(self.path).read(self.level, self.channels, (slice(y0, y1), slice(x0, x1)))


_OPEN: dict[str, Any] = {}


def _ome(path: str):
    if path not in _OPEN:
        from pdeseg.data.readers.ome import open_ome

        _OPEN[path] = open_ome(path)
    return _OPEN[path]


# --------------------------------------------------------------------------------------
# normalisation over the whole image
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# the job and its tasks (module-level functions: Dask ships them to workers by reference)
# --------------------------------------------------------------------------------------


@dataclass
class TiledJob:
    """Everything a task needs, small and picklable.

    Attributes:
        checkpoints: the model's checkpoint file(s) (workers load them once each).
        options: the :class:`~pdeseg.inference.options.InferenceOptions`.
        source: an :class:`OmeSource` or :class:`ArraySource`.
        grid: the :class:`TileGrid`.
        scratch: folder of the scratch stores (``keep.zarr``, ``labels.zarr``).
        instances: cells (watershed, reconciliation) or classes.
        norm: the normalisation with its image statistics (after pass 1).
        threads: torch threads per task process (None: leave torch's default).
        predictor: a loaded predictor to use in this process instead of the checkpoints.
    """

    checkpoints: list[str]
    options: Any
    source: Any
    grid: TileGrid
    scratch: str
    instances: bool
    norm: Normalisation | None = None
    threads: int | None = None
    min_size: int | None = None
    predictor: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["predictor"] = None  # workers load their own
        return state


_PREDICTORS: dict[tuple, Any] = {}


def _predictor(job: TiledJob):
    if job.predictor is not None:
        return job.predictor
    if job.threads:
        import torch

        if torch.get_num_threads() != job.threads:
            torch.set_num_threads(job.threads)
    key = (tuple(job.checkpoints), job.options)
    if key not in _PREDICTORS:
        from pdeseg.inference.predict import Predictor

        _PREDICTORS.clear()  # one model per worker process
        _PREDICTORS[key] = Predictor.from_checkpoints(job.checkpoints, job.options)
    return _PREDICTORS[key]


def _zarr_array(path: str, mode: str = "r+"):
    import zarr

    return zarr.open_array(path, mode=mode)


def stats_task(job: TiledJob, t: tuple[int, int]) -> dict:
    """Pass 1: the normalisation sums of tile ``t``'s core."""
    y0, y1, x0, x1 = job.grid.core(t)
    spec = _spec(job)
    return _stats_of_block(spec.normalization, spec.ct_window, job.source.read(y0, y1, x0, x1))


def _spec(job: TiledJob):
    return _predictor(job).spec


def predict_task(job: TiledJob, t: tuple[int, int]) -> tuple[int, np.ndarray]:
    """Pass 2: segment tile ``t`` in its window.

    Cells: the window's cells (:func:`~pdeseg.inference.decode.decode`, the model's
    representation, over the window, local ids) within ``band`` of the core go to the scratch chunk of the tile.
    Classes: the core's classes go to the output.

    Returns:
        ``(largest local id, local ids with pixels in the core)`` (classes: ``(0, [])``).
    """
    import torch

    from pdeseg.data.pipeline.label_geometry import MIN_OBJECT_PIXELS, predicted_instances
    from pdeseg.inference.decode import decode

    p = _predictor(job)
    g = job.grid
    wy0, wy1, wx0, wx1 = g.window(t)
    H, W = g.height, g.width
    iy0, iy1, ix0, ix1 = max(wy0, 0), min(wy1, H), max(wx0, 0), min(wx1, W)
    raw = job.source.read(iy0, iy1, ix0, ix1)
    x = np.zeros((raw.shape[0], wy1 - wy0, wx1 - wx0), dtype=np.float32)  # zeros: the network's own padding
    x[:, iy0 - wy0: iy1 - wy0, ix0 - wx0: ix1 - wx0] = job.norm.apply(raw).astype(np.float16).astype(np.float32)
    with torch.no_grad():
        logits = p.predict_logits(x[..., None])
    inside = np.zeros((*x.shape[1:], 1), dtype=bool)
    inside[iy0 - wy0: iy1 - wy0, ix0 - wx0: ix1 - wx0] = True  # the padding is not image: as the whole image's logits are cropped
    # the one decode step, over the window: classes, and the cells of the model's representation (no post-processing:
    # tiled prediction refuses it, see check_tileable)
    seg = decode(logits, p.head, regions=p.spec.regions, representation=p.representation, valid=inside,
                 with_cells=job.instances, min_size=job.min_size)
    classes = seg.classes[..., 0]
    cy0, cy1, cx0, cx1 = g.core(t)
    if not job.instances:
        out = _zarr_array(str(Path(job.scratch) / "labels.zarr"))
        out[cy0:cy1, cx0:cx1] = classes[cy0 - wy0: cy1 - wy0, cx0 - wx0: cx1 - wx0]
        return 0, np.zeros(0, np.int64)
    found = seg.instances
    cells = found[..., 0] if found is not None else predicted_instances(
        classes, MIN_OBJECT_PIXELS if job.min_size is None else job.min_size)
    ky0, ky1, kx0, kx1 = g.keep(t)
    oy, ox = g.keep_origin(t)
    chunk = np.zeros((g.keep_chunk, g.keep_chunk), dtype=np.uint32)
    chunk[ky0 - oy: ky1 - oy, kx0 - ox: kx1 - ox] = cells[ky0 - wy0: ky1 - wy0, kx0 - wx0: kx1 - wx0]
    c = g.keep_chunk
    keep = _zarr_array(str(Path(job.scratch) / "keep.zarr"))
    keep[t[0] * c: (t[0] + 1) * c, t[1] * c: (t[1] + 1) * c] = chunk
    core = cells[cy0 - wy0: cy1 - wy0, cx0 - wx0: cx1 - wx0]
    present = np.unique(core)
    return int(cells.max(initial=0)), present[present > 0].astype(np.int64)


def _kept(job: TiledJob, t: tuple[int, int], region: tuple[int, int, int, int]) -> np.ndarray:
    """Tile ``t``'s kept labels over the image ``region``."""
    g = job.grid
    oy, ox = g.keep_origin(t)
    c = g.keep_chunk
    y0, y1, x0, x1 = region
    keep = _zarr_array(str(Path(job.scratch) / "keep.zarr"), "r")
    return np.asarray(keep[t[0] * c + y0 - oy: t[0] * c + y1 - oy, t[1] * c + x0 - ox: t[1] * c + x1 - ox])


#: Two tiles' cells are one when they overlap on more than this share of the smaller one's
#: pixels in the seam strip.
MERGE_OVERLAP = 0.5


def match_task(job: TiledJob, pair: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Pass 3: the cells of two neighbouring tiles that are one cell: ``(n, 2)`` local ids
    ``(in a, in b)`` overlapping on more than :data:`MERGE_OVERLAP` of the smaller one's
    pixels in the strip both labelled."""
    a, b = pair
    g = job.grid
    ka, kb = g.keep(a), g.keep(b)
    region = (max(ka[0], kb[0]), min(ka[1], kb[1]), max(ka[2], kb[2]), min(ka[3], kb[3]))
    if region[0] >= region[1] or region[2] >= region[3]:
        return np.zeros((0, 2), np.int64)
    la, lb = _kept(job, a, region).ravel().astype(np.int64), _kept(job, b, region).ravel().astype(np.int64)
    both = (la > 0) & (lb > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pairs, counts = np.unique(np.stack([la[both], lb[both]], 1), axis=0, return_counts=True)
    area_a = dict(zip(*np.unique(la[la > 0], return_counts=True)))
    area_b = dict(zip(*np.unique(lb[lb > 0], return_counts=True)))
    keep = [k for k, ((u, v), n) in enumerate(zip(pairs, counts)) if n > MERGE_OVERLAP * min(area_a[u], area_b[v])]
    return pairs[keep]


def relabel_task(job: TiledJob, t: tuple[int, int], lut: np.ndarray) -> int:
    """Pass 4: tile ``t``'s core labels mapped through ``lut`` (local id -> final id) and
    written to the output; returns the pixels written."""
    region = job.grid.core(t)
    local = _kept(job, t, region)
    out = _zarr_array(str(Path(job.scratch) / "labels.zarr"))
    y0, y1, x0, x1 = region
    out[y0:y1, x0:x1] = lut[local]
    return int(local.size)


def reconcile(grid: TileGrid, results: dict[tuple[int, int], tuple[int, np.ndarray]],
              matches: list[np.ndarray]) -> tuple[dict[tuple[int, int], np.ndarray], int]:
    """Union-find over every tile's local cells joined by ``matches`` (one array per pair of
    :meth:`TileGrid.pairs`, same order); ids ``1..N`` in raster order of tiles and local ids,
    for the cells that have pixels in some core.

    Returns:
        ``({tile: lookup table local id -> final id}, N)``.
    """
    tiles = grid.tiles()
    offsets, total = {}, 0
    for t in tiles:
        offsets[t] = total
        total += results[t][0] + 1
    parent = np.arange(total, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for (a, b), m in zip(grid.pairs(), matches):
        for u, v in m:
            ru, rv = find(offsets[a] + int(u)), find(offsets[b] + int(v))
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
    final = np.zeros(total, dtype=np.int64)
    n = 0
    for t in tiles:
        for u in results[t][1]:
            r = find(offsets[t] + int(u))
            if not final[r]:
                n += 1
                final[r] = n
    luts = {}
    for t in tiles:
        n_local = results[t][0]
        lut = np.zeros(n_local + 1, dtype=np.uint32)
        for u in results[t][1]:
            lut[u] = final[find(offsets[t] + int(u))]
        luts[t] = lut
    return luts, n


# --------------------------------------------------------------------------------------
# runners: a loop here, or Dask
# --------------------------------------------------------------------------------------


class LocalRunner:
    """Runs tasks one after another in this process."""

    name = "1 process"

    def map(self, fn: Callable, items: list, desc: str, progress: bool, job: TiledJob, **extra) -> list:
        from pdeseg.progress import track

        out = []
        for i, item in enumerate(track(items, desc, "tile", enabled=progress)):
            out.append(fn(job, item, *[a[i] if isinstance(a, list) else a for a in extra.values()]))
        return out


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _probe_scheduler(address: str) -> None:
    """Open and close one connection to the scheduler at ``address`` (in a thread of its own, so
    that it also works where an event loop is running, as in Jupyter or napari).

    Raises:
        ValueError, TypeError: not an address; OSError, TimeoutError: nobody answers there
            within :data:`CONNECT_TIMEOUT_S`.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT_S)
        await comm.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


class DaskRunner:
    """Runs tasks on a ``dask.distributed`` scheduler: a ``LocalCluster`` of ``workers``
    processes (``threads`` torch threads each) made here, or the scheduler at ``address``
    (workers there must have pdeseg installed and see the same files).

    Each worker loads the model once and keeps it for the tasks it is given."""

    def __init__(self, workers: int | None = None, threads: int = 1, address: str | None = None):
        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger("distributed").level))
        self.cluster = None
        # never the process's default scheduler: a Client made default sets dask's scheduler to
        # itself before it connects, so one that failed to connect hung every later dask compute
        if address:
            try:
                _probe_scheduler(address)  # a Client that fails to connect hangs 20 s on exit, then prints a traceback
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, ValueError, TypeError, TimeoutError) as exc:
                raise ConfigError(f"--dask-scheduler {address}: cannot connect to a dask.distributed scheduler there "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no reason given'}); "
                                  "give its address as tcp://host:8786") from None
        else:
            n = workers or max(os.cpu_count() // max(threads, 1), 1)
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                        silence_logs=logging.WARNING)
            self.client = Client(self.cluster, set_as_default=False)
        self.threads = threads
        self.name = f"Dask ({len(self.client.scheduler_info()['workers'])} workers)"

    def map(self, fn: Callable, items: list, desc: str, progress: bool, job: TiledJob, **extra) -> list:
        from distributed import as_completed

        from pdeseg.progress import counter

        job_f = self.client.scatter(replace(job, threads=self.threads), broadcast=True, hash=False)
        futures = [self.client.submit(fn, job_f, item, *[a[i] if isinstance(a, list) else a for a in extra.values()],
                                      pure=False, key=f"{fn.__name__}-{i}-{os.getpid()}-{id(items)}")
                   for i, item in enumerate(items)]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * len(items)
        with counter(desc, "tile", len(items), enabled=progress) as bar:
            for fut in as_completed(futures, loop=self.client.loop):  # this client's (it is not the default)
                out[index[fut.key]] = fut.result()
                bar.update(1)
        return out

    def worker_peaks_mib(self) -> list[float]:
        """Peak resident memory (MiB) of each worker process so far."""
        return sorted(self.client.run(_peak_rss_mib).values())

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# --------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------


@dataclass
class TiledResult:
    """What :func:`predict_tiled` made.

    Attributes:
        labels: the output store (a Zarr array ``(H, W)``: uint32 cell ids, or uint8 classes),
            in ``scratch`` (removed by :meth:`cleanup`).
        objects: number of cells (0 for classes).
        instances: cells (True) or classes.
        grid: the tiles.
        runner: which engine ran it.
        scratch: the scratch folder.
        worker_peaks: Dask: each worker's peak resident memory (MiB).
    """

    labels: Any
    objects: int
    instances: bool
    grid: TileGrid
    runner: str
    scratch: Path
    worker_peaks: list[float] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def _make_runner(runner: Any, dask_workers: int | None, dask_address: str | None, threads: int | None):
    if runner is not None:
        return runner, False
    if dask_workers or dask_address:
        return DaskRunner(dask_workers, threads or 1, dask_address), True
    return LocalRunner(), False


def _fit_tile(grid: TileGrid) -> TileGrid:
    """``grid`` with its tile cut to the smallest valid size covering the image (a tile larger
    than the image only costs memory)."""
    step = math.lcm(TILE_MULTIPLE, grid.multiple)
    hy, _, hx, _ = grid.canvas
    cap = -(-max(hy, hx) // step) * step
    if grid.tile <= cap:
        return grid
    log.info("tile %d is larger than the %dx%d image: tiles of %d instead", grid.tile, grid.height, grid.width, cap)
    return replace(grid, tile=cap)


#: A scratch folder without an owner file this old (seconds) is a leftover of an older pdeseg.
_ORPHAN_AGE_S = 3600.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def reclaim_scratch(folder: str | Path) -> list[Path]:
    """Remove the scratch folders (``.pdeseg-tiles-*``) in ``folder`` that a killed run left:
    its owner process (``owner.json``: host and pid) is gone from this host, or it has no owner
    file and is older than an hour. Returns the folders removed."""
    from pdeseg.data.outputs import SCRATCH_PREFIX

    removed = []
    for path in Path(folder).glob(SCRATCH_PREFIX + "*"):
        if not path.is_dir() or path.is_symlink():
            continue
        try:
            owner = json.loads((path / "owner.json").read_text())
            stale = owner.get("host") == socket.gethostname() and not _alive(int(owner["pid"]))
        except FileNotFoundError:
            stale = time.time() - path.stat().st_mtime > _ORPHAN_AGE_S
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, the scratch folder of a run that was killed", path)
            removed.append(path)
    return removed


def make_scratch(folder: str | Path | None) -> Path:
    """A new scratch folder ``.pdeseg-tiles-*`` in ``folder`` (default: the system's temporary
    folder), with ``owner.json`` (host, pid); leftovers of killed runs there are reclaimed first."""
    from pdeseg.data.outputs import SCRATCH_PREFIX

    where = Path(folder) if folder else Path(tempfile.gettempdir())
    reclaim_scratch(where)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=str(where)))
    (scratch / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return scratch


def check_tileable(predictor) -> None:
    """Raises ConfigError when ``predictor`` cannot segment an image tile by tile: not a 2D
    slice model, resizing slices, 2.5D or several axes, or post-processing rules that need
    the whole image."""
    if predictor.spec.spatial_dims != 2 or predictor.spec.mode != "slices":
        raise ConfigError(f"tiled prediction is for 2D slice models; {predictor.name} is a {predictor.spec.spatial_dims}D "
                          f"{predictor.spec.mode} model (pdeseg.load(ckpt).predict reads a volume whole)")
    if predictor.spec.resize:
        raise ConfigError(f"{predictor.name} resizes every slice to {predictor.spec.spatial_size}; a large image cannot be "
                          "segmented tile by tile at its own resolution with it")
    if predictor.postprocessing.enabled:
        raise ConfigError(f"the checkpoint's post-processing ({predictor.postprocessing.describe()}) works on whole "
                          "images; pass --no-postprocess (postprocess=False) for tiled prediction")
    if predictor.spec.context_slices or len(predictor.spec.slice_axes) != 1:
        raise ConfigError("tiled prediction segments single 2D planes; this model reads neighbouring slices (2.5D) or "
                          "several axes")


def predict_tiled(
    checkpoint: str | Path | Sequence[str | Path] | None,
    source: Any,
    *,
    options: Any = None,
    predictor: Any = None,
    tile: int = DEFAULT_TILE,
    halo: int = DEFAULT_HALO,
    band: int = DEFAULT_BAND,
    instances: bool | None = None,
    scratch_dir: str | Path | None = None,
    dask_workers: int | None = None,
    dask_address: str | None = None,
    threads: int | None = None,
    runner: Any = None,
    progress: bool = True,
) -> TiledResult:
    """Segment a large 2D image tile by tile (see the module docstring).

    Args:
        checkpoint: the checkpoint(s) (needed for Dask: workers load them); or None with
            ``predictor``.
        source: an :class:`OmeSource`, an :class:`ArraySource`, or an array-like
            ``(C, H, W)`` of raw intensities in the model's channel order.
        options: :class:`~pdeseg.inference.options.InferenceOptions` (default: the defaults).
        predictor: an already loaded predictor (one process only).
        tile, halo, band: core size, context and seam strip (pixels; see :class:`TileGrid`).
        instances: cells (watershed + reconciliation) or classes; None: cells for microscopy
            formats with objects, classes otherwise.
        scratch_dir: where the scratch stores go (default: a temporary folder); on a cluster,
            a folder every worker sees.
        dask_workers: run on a new ``LocalCluster`` with this many worker processes.
        dask_address: run on the ``dask.distributed`` scheduler at this address.
        threads: torch threads per Dask worker (default 1).
        runner: a runner object (:class:`LocalRunner`, :class:`DaskRunner`) to reuse.
        progress: show progress over tiles.

    Returns:
        a :class:`TiledResult`; call its ``cleanup()`` when its labels have been copied out.

    Raises:
        ConfigError: bad tile sizes, post-processing rules that need the whole image, or a
            Dask run without a checkpoint file.
        DataError: the channels do not match the model's.
    """
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    options = options or InferenceOptions()
    if predictor is None:
        if checkpoint is None:
            raise ConfigError("predict_tiled needs a checkpoint or a predictor")
        predictor = Predictor.from_checkpoints(checkpoint, options)
    check_tileable(predictor)
    if "skip_empty" in options.describe() and options.skip_empty:  # a tile of zeros is segmented, as in the whole image
        import copy

        options = options.replace(skip_empty=False)
        predictor = copy.copy(predictor)
        predictor.options = predictor.options.replace(skip_empty=False)
    if not hasattr(source, "read"):
        source = ArraySource(source)
    channels = getattr(source, "channels", None)
    n_channels = len(channels) if isinstance(channels, tuple) else channels
    if n_channels != len(predictor.modalities):
        raise DataError(f"{predictor.name} reads {len(predictor.modalities)} channel(s) ({', '.join(predictor.modalities)}); "
                        f"the image gives {n_channels}")
    if instances is None:
        instances = bool(predictor.format.object_metrics and predictor.format.name != "drive")
    grid = TileGrid(source.shape[0], source.shape[1], tile, halo, band, size_multiple(predictor.model))
    grid = _fit_tile(grid)
    paths = [str(p) for p in ([checkpoint] if isinstance(checkpoint, (str, Path)) else (checkpoint or []))]
    engine, owned = _make_runner(runner, dask_workers, dask_address, threads)
    if isinstance(engine, DaskRunner) and not paths:
        if owned:
            engine.close()
        raise ConfigError("a Dask run needs the checkpoint file(s): workers load the model themselves")
    scratch = make_scratch(scratch_dir)
    import zarr

    labels = zarr.create_array(store=str(scratch / "labels.zarr"), shape=(grid.height, grid.width),
                               chunks=(min(grid.tile, grid.height), min(grid.tile, grid.width)),
                               dtype=np.uint32 if instances else np.uint8, fill_value=0)
    if instances:
        ny, nx = grid.shape
        zarr.create_array(store=str(scratch / "keep.zarr"), shape=(ny * grid.keep_chunk, nx * grid.keep_chunk),
                          chunks=(grid.keep_chunk, grid.keep_chunk), dtype=np.uint32, fill_value=0)
    job = TiledJob(paths, options, source, grid, str(scratch), instances, predictor=predictor)
    tiles = grid.tiles()
    log.info("%s: %dx%d pixels in %d tiles of %d (+%d halo), on %s", predictor.name, grid.height, grid.width,
             len(tiles), grid.tile, grid.halo, engine.name)
    try:
        spec = predictor.spec
        if spec.normalization in _NEEDS_STATS and not (spec.normalization == "ct" and spec.ct_stats is not None):
            if spec.normalization == "minmax" and not np.issubdtype(np.dtype(source.dtype), np.integer):
                raise DataError("minmax normalisation takes percentiles of the whole image: tiled prediction computes them "
                                "exactly for integer images only, and this one is float")
            blocks = engine.map(stats_task, tiles, "image statistics", progress, job=job)
        else:
            blocks = []
        job.norm = _combine_stats(spec, blocks)
        results = engine.map(predict_task, tiles, "tiles", progress, job=job)
        n = 0
        if instances:
            by_tile = dict(zip(tiles, results))
            pairs = grid.pairs()
            matches = engine.map(match_task, pairs, "seams", progress, job=job) if pairs else []
            luts, n = reconcile(grid, by_tile, matches)
            engine.map(relabel_task, tiles, "relabelling", progress, job=job, lut=[luts[t] for t in tiles])
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        peaks = engine.worker_peaks_mib() if isinstance(engine, DaskRunner) else []
        if owned:
            engine.close()
    return TiledResult(labels, n, instances, grid, engine.name, scratch, peaks)
