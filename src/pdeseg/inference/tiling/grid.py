"""The tile grid on the network's pooling grid (:class:`TileGrid`), the pooling factor of a
model (:func:`size_multiple`) and the default tile, halo and seam-band sizes."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pdeseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Default core size of a tile (pixels, each side) and context around it.
DEFAULT_TILE = 1024
DEFAULT_HALO = 64
#: Half-width of the strip along a seam in which two tiles' cells are matched.
DEFAULT_BAND = 16
#: Tile sizes must be multiples of this (TIFF tiles; the pooling grid of the networks here).
TILE_MULTIPLE = 16


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



def fit_tile(grid: TileGrid) -> TileGrid:
    """``grid`` with its tile cut to the smallest valid size covering the image (a tile larger
    than the image only costs memory)."""
    step = math.lcm(TILE_MULTIPLE, grid.multiple)
    hy, _, hx, _ = grid.canvas
    cap = -(-max(hy, hx) // step) * step
    if grid.tile <= cap:
        return grid
    log.info("tile %d is larger than the %dx%d image: tiles of %d instead", grid.tile, grid.height, grid.width, cap)
    return replace(grid, tile=cap)
