"""Large synthetic mosaics made of real image tiles (DSB 2018 fluorescence nuclei, or any
list of equally sized images), written as OME-TIFF or OME-Zarr one tile at a time, so that a
mosaic far larger than memory can be made, and tiled prediction measured on real nuclei.

Each mosaic tile is one source image, chosen, rotated by a multiple of 90 degrees and
mirrored at random (seeded), then cut to the tile size: an ``n x n`` tile mosaic holds
real nuclei everywhere, and nuclei lie on every seam of the prediction's tiles.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def dsb_tiles(root: str | Path, domain: str = "fluorescence", size: int = 256, limit: int | None = None) -> list[np.ndarray]:
    """Grey ``size x size`` uint8 tiles (the mean of red, green and blue, as pdeseg's ``grey``
    channel reads them) of the DSB 2018 images of ``domain`` that are at least that large,
    in the order of ``domains.tsv``.

    Raises:
        FileNotFoundError: no ``domains.tsv`` or no such image.
    """
    from pdeseg.data.readers.cells import image_channels, read_image_file

    root = Path(root)
    rows = list(csv.DictReader((root / "domains.tsv").open(), delimiter="\t"))
    tiles = []
    for row in rows:
        if row["domain"] != domain:
            continue
        path = root / "stage1_train" / row["image_id"] / "images" / f"{row['image_id']}.png"
        pixels = read_image_file(path)
        grey = image_channels(pixels, ["grey"], path)[0]
        if min(grey.shape) < size:
            continue
        tiles.append(np.clip(np.rint(grey[:size, :size]), 0, 255).astype(np.uint8))
        if limit and len(tiles) >= limit:
            break
    if not tiles:
        raise FileNotFoundError(f"no {domain} image of at least {size}x{size} under {root}")
    return tiles


class Mosaic:
    """An ``height x width`` mosaic of ``tiles`` (each ``t x t``), made on demand tile by tile.

    Args:
        tiles: the source images (same square shape, uint8).
        height, width: mosaic size (multiples of the tile size).
        seed: which tile, rotation and mirroring goes where.
    """

    def __init__(self, tiles: Sequence[np.ndarray], height: int, width: int, seed: int = 0):
        self.tiles = list(tiles)
        self.t = int(self.tiles[0].shape[0])
        if height % self.t or width % self.t:
            raise ValueError(f"mosaic size {height}x{width} must be a multiple of the tile size {self.t}")
        self.height, self.width = int(height), int(width)
        ny, nx = height // self.t, width // self.t
        rng = np.random.default_rng(seed)
        self.choice = rng.integers(0, len(self.tiles), size=(ny, nx))
        self.rot = rng.integers(0, 4, size=(ny, nx))
        self.flip = rng.integers(0, 2, size=(ny, nx))

    def tile(self, i: int, j: int) -> np.ndarray:
        """The mosaic's tile at row ``i``, column ``j``."""
        a = np.rot90(self.tiles[self.choice[i, j]], int(self.rot[i, j]))
        return np.ascontiguousarray(a[:, ::-1] if self.flip[i, j] else a)

    def iter_tiles(self):
        for i in range(self.height // self.t):
            for j in range(self.width // self.t):
                yield self.tile(i, j)

    def array(self) -> np.ndarray:
        """The whole mosaic in memory (small mosaics only)."""
        out = np.empty((self.height, self.width), np.uint8)
        for i in range(self.height // self.t):
            for j in range(self.width // self.t):
                out[i * self.t:(i + 1) * self.t, j * self.t:(j + 1) * self.t] = self.tile(i, j)
        return out

    def write_ome_tiff(self, path: str | Path, pixel_size_um: float = 0.65, channel: str = "DAPI") -> Path:
        """Write the mosaic as a tiled single-channel OME-TIFF, one tile in memory at a time."""
        import tifffile

        tifffile.imwrite(path, self.iter_tiles(), shape=(self.height, self.width), dtype=np.uint8,
                         tile=(self.t, self.t), ome=True, bigtiff=self.height * self.width > 2**31,
                         metadata={"axes": "YX", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
                                   "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "Channel": {"Name": [channel]}})
        return Path(path)

    def write_ome_zarr(self, path: str | Path, pixel_size_um: float = 0.65, channel: str = "DAPI",
                       levels: int = 1) -> Path:
        """Write the mosaic as a single-channel OME-Zarr image (``c, y, x``; chunks of one tile),
        built lazily (a Dask array over the tiles)."""
        from pdeseg.data.readers.ome import require_ome

        require_ome("OME-Zarr", "writing")
        import dask.array as da
        import zarr
        from ome_zarr.writer import write_image

        def block(block_info=None):
            (_, _), (y0, _), (x0, _) = block_info[None]["array-location"]
            return self.tile(y0 // self.t, x0 // self.t)[None]

        arr = da.map_blocks(block, dtype=np.uint8, chunks=((1,), (self.t,) * (self.height // self.t),
                                                          (self.t,) * (self.width // self.t)))
        root = zarr.open_group(str(path), mode="w")
        window = {"start": 0, "end": 255, "min": 0, "max": 255}
        write_image(arr, root, axes="cyx", scale_factors=tuple(2**k for k in range(1, levels)),
                    scale={"c": 1.0, "y": pixel_size_um, "x": pixel_size_um},
                    axes_units={"y": "micrometer", "x": "micrometer"},
                    storage_options={"chunks": (1, self.t, self.t)},
                    omero={"channels": [{"label": channel, "color": "FFFFFF", "window": window, "active": True}]})
        return Path(path)
