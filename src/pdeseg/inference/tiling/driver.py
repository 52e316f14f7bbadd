"""The driver of a tiled run: :func:`predict_tiled` runs the four passes of
:mod:`pdeseg.inference.tiling` on a runner and returns a :class:`TiledResult`."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg._optional import require
from pdeseg.data.pipeline.preprocess import merge_stats, needs_stats
from pdeseg.errors import ConfigError, DataError
from pdeseg.inference.tiling.grid import DEFAULT_BAND, DEFAULT_HALO, DEFAULT_TILE, TileGrid, fit_tile, size_multiple
from pdeseg.inference.tiling.runners import DaskRunner, make_runner
from pdeseg.inference.tiling.scratch import make_scratch
from pdeseg.inference.tiling.sources import ArraySource
from pdeseg.inference.tiling.tasks import TiledJob, match_task, predict_task, reconcile, relabel_task, stats_task

log = logging.getLogger(__name__)


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
    callback: Callable[[str, int, int], None] | None = None,
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
        instances: cells (the model's representation + reconciliation) or classes; None: cells
            when the model's data format has cells (:attr:`~pdeseg.data.formats.DataFormat.has_cells`).
        scratch_dir: where the scratch stores go (default: a temporary folder); on a cluster,
            a folder every worker sees.
        dask_workers: run on a new ``LocalCluster`` with this many worker processes.
        dask_address: run on the ``dask.distributed`` scheduler at this address.
        threads: torch threads per Dask worker (default 1).
        runner: a runner object (:class:`LocalRunner`, :class:`DaskRunner`) to reuse.
        progress: show progress over tiles.
        callback: called as ``callback(pass, done, total)`` after each task of each pass
            (``pass``: ``image statistics``, ``tiles``, ``seams``, ``relabelling``), e.g. for a
            progress bar of one's own (napari's).

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
    # a tile of zeros is segmented (its plane in the whole image is not empty): skip_empty off here, and in the
    # options Dask workers load the model with
    options = options.replace(skip_empty=False)
    if predictor.options.skip_empty:
        predictor = predictor.with_options(skip_empty=False)
    if not hasattr(source, "read"):
        source = ArraySource(source)
    channels = getattr(source, "channels", None)
    n_channels = len(channels) if isinstance(channels, tuple) else channels
    if n_channels != len(predictor.modalities):
        raise DataError(f"{predictor.name} reads {len(predictor.modalities)} channel(s) ({', '.join(predictor.modalities)}); "
                        f"the image gives {n_channels}")
    if instances is None:
        instances = predictor.format.has_cells
    grid = TileGrid(source.shape[0], source.shape[1], tile, halo, band, size_multiple(predictor.model))
    grid = fit_tile(grid)
    paths = [str(p) for p in ([checkpoint] if isinstance(checkpoint, (str, Path)) else (checkpoint or []))]
    require("zarr", extra="ome", feature="tiled prediction (its scratch stores)")
    engine, owned = make_runner(runner, dask_workers, dask_address, threads)
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
        if needs_stats(spec.normalization, spec.ct_stats):
            if spec.normalization == "minmax" and not np.issubdtype(np.dtype(source.dtype), np.integer):
                raise DataError("minmax normalisation takes percentiles of the whole image: tiled prediction computes them "
                                "exactly for integer images only, and this one is float")
            blocks = engine.map(stats_task, tiles, "image statistics", progress, job=job, callback=callback)
        else:
            blocks = []
        job.stats = merge_stats(blocks)  # the whole image's, as preprocess.normalize takes them
        results = engine.map(predict_task, tiles, "tiles", progress, job=job, callback=callback)
        n = 0
        if instances:
            by_tile = dict(zip(tiles, results))
            pairs = grid.pairs()
            matches = engine.map(match_task, pairs, "seams", progress, job=job, callback=callback) if pairs else []
            luts, n = reconcile(grid, by_tile, matches)
            engine.map(relabel_task, tiles, "relabelling", progress, job=job, callback=callback, lut=[luts[t] for t in tiles])
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        peaks = engine.worker_peaks_mib() if isinstance(engine, DaskRunner) else []
        if owned:
            engine.close()
    return TiledResult(labels, n, instances, grid, engine.name, scratch, peaks)
