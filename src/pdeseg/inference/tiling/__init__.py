"""Segmenting 2D images larger than memory, tile by tile, in one process or on a Dask cluster.

The image is read and the result written one tile at a time (a window reader over an
OME-TIFF / OME-Zarr, see :mod:`pdeseg.data.readers.ome`, or any array-like), so memory holds
the model and the tiles in flight, whatever the image's size. Four passes, each a set of
independent tasks over tiles (run in a loop here, or as ``dask.distributed`` tasks on any
scheduler: a ``LocalCluster`` or a cluster's address):

1. **statistics**: the normalisation the model was trained with is per image (z-score,
   percentiles), so its statistics are taken tile by tile and merged over the whole image
   first (:class:`~pdeseg.data.pipeline.preprocess.ImageStats`: count, mean and squared
   deviations in float64; percentiles exactly from a histogram for integer pixels), and every
   tile is then normalised by :func:`~pdeseg.data.pipeline.preprocess.apply_normalization`,
   the step whole images go through;
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

The package, one module per part: :mod:`~pdeseg.inference.tiling.grid` (tiles on the pooling
grid), :mod:`~pdeseg.inference.tiling.sources` (window readers),
:mod:`~pdeseg.inference.tiling.tasks`
(the four passes' tasks and the union-find of pass 3), :mod:`~pdeseg.inference.tiling.runners`
(a loop here, or Dask), :mod:`~pdeseg.inference.tiling.scratch` (scratch folders) and
:mod:`~pdeseg.inference.tiling.driver` (:func:`predict_tiled`).
"""

from pdeseg.inference.tiling.driver import TiledResult, check_tileable, predict_tiled
from pdeseg.inference.tiling.grid import DEFAULT_BAND, DEFAULT_HALO, DEFAULT_TILE, TILE_MULTIPLE, TileGrid, size_multiple
from pdeseg.inference.tiling.runners import DaskRunner, LocalRunner
from pdeseg.inference.tiling.scratch import make_scratch, reclaim_scratch
from pdeseg.inference.tiling.sources import ArraySource, OmeSource

__all__ = [
    "DEFAULT_BAND", "DEFAULT_HALO", "DEFAULT_TILE", "TILE_MULTIPLE", "ArraySource", "DaskRunner", "LocalRunner",
    "OmeSource", "TileGrid", "TiledResult", "check_tileable", "make_scratch", "predict_tiled", "reclaim_scratch",
    "size_multiple",
]
