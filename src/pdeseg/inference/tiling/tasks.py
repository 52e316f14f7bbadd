"""The job of a tiled run and its tasks, one per tile or per seam (passes 1-4 of
:mod:`pdeseg.inference.tiling`), with the reconciliation of cells across seams (union-find).
Tasks are module-level functions: Dask ships them to workers by reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.data.pipeline.preprocess import ImageStats, apply_normalization, image_stats
from pdeseg.inference.tiling.grid import TileGrid


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
        stats: the whole image's normalisation statistics, merged over the tiles in pass 1
            (None for a normalisation that takes none).
        threads: torch threads per task process (None: leave torch's default).
        predictor: a loaded predictor to use in this process instead of the checkpoints.
    """

    checkpoints: list[str]
    options: Any
    source: Any
    grid: TileGrid
    scratch: str
    instances: bool
    stats: ImageStats | None = None
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


def stats_task(job: TiledJob, t: tuple[int, int]) -> ImageStats | None:
    """Pass 1: the normalisation statistics of tile ``t``'s core, mergeable
    (:func:`~pdeseg.data.pipeline.preprocess.image_stats`)."""
    y0, y1, x0, x1 = job.grid.core(t)
    spec = _spec(job)
    return image_stats(job.source.read(y0, y1, x0, x1), spec.normalization, spec.ct_window, spec.ct_stats, mergeable=True)


def _spec(job: TiledJob):
    return _predictor(job).spec


def _normalised(spec, raw: np.ndarray, stats: ImageStats | None) -> np.ndarray:
    """A window's raw pixels normalised with the whole image's statistics: the same
    :func:`~pdeseg.data.pipeline.preprocess.apply_normalization` that whole images go through."""
    return apply_normalization(raw, spec.normalization, stats, spec.ct_window, spec.ct_stats)


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
    x[:, iy0 - wy0: iy1 - wy0, ix0 - wx0: ix1 - wx0] = _normalised(p.spec, raw, job.stats).astype(np.float16).astype(np.float32)
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
