"""Where a tiled run's pixels come from: window readers over an array (:class:`ArraySource`)
or over one level of an OME-TIFF / OME-Zarr (:class:`OmeSource`, picklable for Dask workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pdeseg.errors import DataError


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
