"""OME-TIFF and OME-Zarr images: what a microscope or a stitching tool writes.

Reading never loads a whole image: :func:`open_ome` reads the metadata (axes, pixel size per
pyramid level, channel names) and gives each level as a lazy Dask array over the file
(tifffile's Zarr view of an OME-TIFF's tiles, or the OME-Zarr arrays through the
``ome-zarr`` reader), so a window costs only the tiles or chunks it touches.

* **Pixel size.** OME-TIFF ``PhysicalSizeX/Y/Z`` (with their units; micrometres when the
  file names none, the OME schema's default) and OME-Zarr ``scale`` transformations (with the
  axes' units) are turned into pdeseg's spacing, in millimetres like every other reader
  (0.65 um is 0.00065 mm); a file that states none gives 1 per pixel.
* **Channels by name.** OME-TIFF ``Channel Name`` and OME-Zarr ``omero.channels[].label``;
  an RGB(A) OME-TIFF (samples per pixel) offers ``red``, ``green``, ``blue``, and every image
  offers ``grey`` when its channels are red/green/blue or it has one channel (the rules of
  :mod:`pdeseg.data.readers.cells`).
* **Pyramid levels.** :meth:`OmeImage.choose_level` takes the coarsest level whose pixel size
  is at most the wanted one (``LEVEL_TOLERANCE`` of slack), so the image is never upsampled
  by more than that; a level that does not exist, or a wanted pixel size finer than every
  level, is a :class:`~pdeseg.errors.DataError` naming the levels there are.

Writing: :func:`write_ome_tiff` writes a label image tile by tile from an iterator (a tiled
OME-TIFF with the pixel size), :func:`write_ome_zarr_labels` a multiscale ``labels/<name>``
group inside an OME-Zarr image (the image's own scale, nearest-neighbour pyramid) that the
``ome-zarr`` reader and napari open as labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg._optional import require
from pdeseg.data.readers.cells import CHANNELS
from pdeseg.errors import DataError
from pdeseg.logs import library_logs_at_debug

#: A wanted pixel size may be this much finer than the level chosen (5%: rounding in the
#: metadata, not a real change of resolution).
LEVEL_TOLERANCE = 0.05
#: Suffixes that mark OME files.
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")
OME_ZARR_SUFFIXES = (".ome.zarr", ".zarr")
#: Length units to millimetres (OME-TIFF's UnitsLength symbols and OME-Zarr's UDUNITS names).
_TO_MM = {"m": 1e3, "meter": 1e3, "cm": 10.0, "centimeter": 10.0, "mm": 1.0, "millimeter": 1.0, "µm": 1e-3,
          "um": 1e-3, "micrometer": 1e-3, "micron": 1e-3, "nm": 1e-6, "nanometer": 1e-6, "Å": 1e-7,
          "angstrom": 1e-7, "pm": 1e-9, "picometer": 1e-9}
_SPATIAL = ("z", "y", "x")


def is_ome_path(path: str | Path) -> bool:
    """Whether ``path`` names an OME-TIFF file or an OME-Zarr folder (by its name and, for a
    folder, its Zarr metadata)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(OME_TIFF_SUFFIXES):
        return p.is_file()
    if p.is_dir() and name.endswith(OME_ZARR_SUFFIXES):
        return (p / "zarr.json").is_file() or (p / ".zattrs").is_file() or (p / ".zgroup").is_file()
    return False


def find_ome_images(path: str | Path) -> list[Path]:
    """``path`` itself when it is an OME image, else the OME images directly in the folder
    ``path``, sorted by name."""
    p = Path(path).expanduser()
    if is_ome_path(p):
        return [p]
    if not p.is_dir():
        return []
    return sorted(q for q in p.iterdir() if not q.name.startswith(".") and is_ome_path(q))


def _mm(value: float | None, unit: str | None) -> float | None:
    if value is None:
        return None
    unit = (unit or "µm").strip()
    factor = _TO_MM.get(unit, _TO_MM.get(unit.lower()))
    if factor is None:
        raise DataError(f"pixel size unit {unit!r} is not a length pdeseg knows ({', '.join(sorted(_TO_MM))})")
    return float(value) * factor


@dataclass(frozen=True)
class OmeLevel:
    """One resolution of a pyramid: its spatial shape and pixel size (mm) along ``spatial_axes``."""

    index: int
    shape: tuple[int, ...]
    pixel_size: tuple[float, ...] | None


@dataclass
class OmeImage:
    """An OME-TIFF or OME-Zarr image, opened lazily (see the module docstring).

    Attributes:
        path: the file or folder.
        kind: ``ome-tiff`` or ``ome-zarr``.
        axes: the array axes, lower case (``cyx``, ``tczyx``, ``yxs`` for an RGB TIFF, ...).
        channel_names: one name per channel (``c`` or ``s`` axis); ``channel k`` when the
            file names none.
        levels: the pyramid, finest first.
        dtype: the stored pixel type.
    """

    path: Path
    kind: str
    axes: str
    channel_names: tuple[str, ...]
    levels: list[OmeLevel]
    dtype: np.dtype
    _arrays: list | None = None

    @property
    def spatial_axes(self) -> str:
        """The spatial axes in array order (``yx`` or ``zyx``)."""
        return "".join(a for a in self.axes if a in _SPATIAL)

    @property
    def channel_axis(self) -> str | None:
        return next((a for a in self.axes if a in "cs"), None)

    def array(self, level: int = 0):
        """The level as a lazy Dask array with axes :attr:`axes`."""
        self.level(level)
        if self._arrays is None:
            with library_logs_at_debug("tifffile", "ome_zarr"):  # a broken file's records: explained when it is read
                self._arrays = _open_arrays(self)
        return self._arrays[level]

    def level(self, index: int) -> OmeLevel:
        """Pyramid level ``index``.

        Raises:
            DataError: no such level (the message lists those there are).
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.levels):
            raise DataError(f"{self.path}: no pyramid level {index!r}; it has {len(self.levels)} level(s): "
                            f"{self.describe_levels()}")
        return self.levels[int(index)]

    def describe_levels(self) -> str:
        """``0: 16384x16384 at 0.65 um, 1: ...``."""
        parts = []
        for lv in self.levels:
            size = "x".join(map(str, lv.shape))
            px = f" at {'x'.join(f'{p * 1e3:g}' for p in lv.pixel_size)} um" if lv.pixel_size else ""
            parts.append(f"{lv.index}: {size}{px}")
        return ", ".join(parts)

    def choose_level(self, level: int | None = None, pixel_size: Sequence[float] | float | None = None) -> int:
        """The level to read: ``level`` when given, else the coarsest level whose pixel size is at
        most ``pixel_size`` (mm, one per spatial axis or one for all) plus
        :data:`LEVEL_TOLERANCE`, else level 0.

        Raises:
            DataError: ``level`` does not exist; ``pixel_size`` is asked of a file that states
                none, or is finer than every level (the image would have to be upsampled).
        """
        if level is not None:
            self.level(level)
            return int(level)
        if pixel_size is None:
            return 0
        spatial = len(self.spatial_axes)
        wanted = (float(pixel_size),) * spatial if np.isscalar(pixel_size) else tuple(float(p) for p in pixel_size)
        if len(wanted) != spatial or not all(math.isfinite(p) and p > 0 for p in wanted):
            raise DataError(f"pixel size must be {spatial} positive number(s) (mm), got {pixel_size!r}")
        if self.levels[0].pixel_size is None:
            raise DataError(f"{self.path} states no pixel size, so no level can be chosen by resolution; "
                            "pass a level (--level N)")
        fine_enough = [lv.index for lv in self.levels
                       if all(p <= w * (1 + LEVEL_TOLERANCE) for p, w in zip(lv.pixel_size, wanted))]
        if not fine_enough:
            raise DataError(f"{self.path}: no pyramid level is as fine as the {'x'.join(f'{w * 1e3:g}' for w in wanted)} um "
                            f"per pixel the model was trained at (levels {self.describe_levels()}); the image would "
                            "have to be upsampled: give a finer image, or a level (--level N) to segment as it is")
        return max(fine_enough, key=lambda i: math.prod(self.levels[i].pixel_size))

    def channel_indices(self, modalities: Sequence[str], names: Sequence[str] | None = None) -> list[tuple[int, ...]]:
        """For each model input channel, the file channels it is made of (one, or red, green
        and blue averaged for ``grey`` of a colour image).

        Args:
            modalities: the model's channels, in order.
            names: file channel names chosen by the user, one per model channel (``--channel``);
                None: by the model's channel names, or the only channel of a one-channel file.

        Raises:
            DataError: a named channel the file does not have, or no rule that gives the
                model's channels (the message lists the file's channels).
        """
        have = list(self.channel_names)
        lower = [n.lower() for n in have]
        listed = ", ".join(have) or "none"
        if names:
            if len(names) != len(modalities):
                raise DataError(f"{len(names)} channel name(s) given ({', '.join(names)}) for a model that reads "
                                f"{len(modalities)} ({', '.join(modalities)}): give one per model channel")
            out = []
            for name in names:
                if name.lower() not in lower:
                    raise DataError(f"{self.path} has no channel {name!r}; its channels are {listed}")
                out.append((lower.index(name.lower()),))
            return out
        out = []
        for m in modalities:
            if m.lower() in lower:
                out.append((lower.index(m.lower()),))
            elif m == "grey" and len(have) == 1:
                out.append((0,))
            elif m == "grey" and all(c in lower for c in ("red", "green", "blue")):
                out.append(tuple(lower.index(c) for c in ("red", "green", "blue")))
            elif m in CHANNELS and len(have) == 1:
                out.append((0,))  # a grey image gives its intensity for each colour, as in cells.py
            else:
                raise DataError(f"{self.path} has channels {listed}; the model reads {', '.join(modalities)}: name "
                                f"the file channel to use for each (--channel NAME)")
        return out

    def read(self, level: int, channels: Sequence[tuple[int, ...]], window: Sequence[slice] | None = None) -> np.ndarray:
        """Pixels of ``level`` in ``window`` (one slice per spatial axis; None: all), channels
        made by ``channels`` (:meth:`channel_indices`), as ``(C, *window)`` float32.
        Only the chunks or tiles under the window are read; a time series or stack gives its
        first time point (:func:`plane_shape` refuses those for tiled prediction).
        """
        arr = self.array(level)
        index, order = [], []
        window = list(window) if window is not None else [slice(None)] * len(self.spatial_axes)
        for a in self.axes:
            if a in _SPATIAL:
                index.append(window[self.spatial_axes.index(a)])
                order.append(a)
            elif a in "cs":
                index.append(slice(None))
                order.append("c")
            else:  # t (checked by plane_index to be 1 long)
                index.append(0)
        # in this thread (also inside a Dask worker, where the default would ship the graph to the cluster)
        try:
            with library_logs_at_debug("tifffile", "ome_zarr"):
                block = np.asarray(arr[tuple(index)].compute(scheduler="synchronous"))
        except Exception as exc:  # a cut-short file or corrupt chunk: zlib, tifffile, zarr and numcodecs raise many types
            raise DataError(f"{self.path}: cannot read the pixels of level {level} at "
                            f"{[(w.start, w.stop) for w in window]} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no reason given'}); the file is damaged or cut "
                            "short") from None
        if "c" in order:
            block = np.moveaxis(block, order.index("c"), 0)
        else:
            block = block[None]
        block = block.astype(np.float32, copy=False)
        return np.stack([block[list(ix)].mean(axis=0) if len(ix) > 1 else block[ix[0]] for ix in channels])


def require_ome(kind: str, verb: str) -> None:
    """:class:`~pdeseg._optional.MissingExtraError` naming ``pdeseg[ome]`` unless the packages
    that read or write ``kind`` (``OME-TIFF`` / ``OME-Zarr``) are installed."""
    modules = ("zarr", "dask.array") + (("ome_zarr.io", "ome_zarr.reader", "ome_zarr.writer") if kind == "OME-Zarr" else ())
    require(*modules, extra="ome", feature=f"{verb} {kind}")


def _open_arrays(image: OmeImage) -> list:
    require_ome({"ome-tiff": "OME-TIFF", "ome-zarr": "OME-Zarr"}[image.kind], "reading")
    import dask.array as da

    if image.kind == "ome-tiff":
        import tifffile
        import zarr

        arrays = []
        with tifffile.TiffFile(image.path) as tf:
            series = tf.series[0]
            for i in range(len(series.levels)):
                store = series.aszarr(level=i)
                arrays.append(da.from_zarr(zarr.open(store, mode="r")))
        return arrays
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = _multiscale_node(image.path, Reader, parse_url)
    return list(node.data)


def _multiscale_node(path: Path, reader, parse_url):
    location = parse_url(str(path))
    if location is None:
        raise DataError(f"{path}: not an OME-Zarr image (no Zarr metadata)")
    nodes = [n for n in reader(location)() if n.data and "axes" in n.metadata and n.zarr.path.rstrip("/") == location.path.rstrip("/")]
    if not nodes:
        raise DataError(f"{path}: no OME-Zarr multiscale image at its top (a plate or a bare Zarr array is not read; "
                        "give one image of the plate)")
    return nodes[0]


def open_ome(path: str | Path) -> OmeImage:
    """Open an OME-TIFF file or an OME-Zarr image folder lazily (see the module docstring).

    Raises:
        DataError: not readable as either, no pixels, or a unit pdeseg cannot convert.
        MissingExtraError: zarr, dask (or for OME-Zarr ome-zarr) is not installed (``pip install 'pdeseg[ome]'``).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    require_ome("OME-Zarr" if p.is_dir() else "OME-TIFF", "reading")
    try:
        with library_logs_at_debug("tifffile", "ome_zarr"):  # their records of a broken file: explained below
            if p.is_file():
                return _open_tiff(p)
            return _open_zarr(p)
    except DataError:
        raise
    except Exception as exc:  # tifffile, zarr and ome-zarr raise many types for broken files
        raise DataError(f"{p}: cannot read as OME-TIFF or OME-Zarr ({type(exc).__name__}: {exc})") from None


def _open_tiff(path: Path) -> OmeImage:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        axes = series.axes.lower()
        names: list[str] = []
        sizes: dict[str, float | None] = {}
        if tf.is_ome and tf.ome_metadata:
            meta = tifffile.xml2dict(tf.ome_metadata)
            image = meta["OME"]["Image"]
            pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
            for a in ("x", "y", "z"):
                sizes[a] = _mm(pixels.get(f"PhysicalSize{a.upper()}"), pixels.get(f"PhysicalSize{a.upper()}Unit"))
            channels = pixels.get("Channel", [])
            channels = channels if isinstance(channels, list) else [channels]
            names = [str(c.get("Name", "")) for c in channels]
        shapes = [tuple(lv.shape) for lv in series.levels]
        dtype = np.dtype(series.dtype)
    if "s" in axes:  # samples per pixel: RGB(A)
        n = shapes[0][axes.index("s")]
        names = ["red", "green", "blue", "alpha"][:n] if n in (3, 4) else [f"channel {k}" for k in range(n)]
    elif "c" in axes:
        n = shapes[0][axes.index("c")]
        if len(names) != n or not all(names):
            names = [names[k] if k < len(names) and names[k] else f"channel {k}" for k in range(n)]
    else:
        names = ["grey"]
    return _image(path, "ome-tiff", axes, names, shapes, dtype,
                  lambda i: [sizes.get(a) for a in axes if a in _SPATIAL], ratio_levels=True)


def _open_zarr(path: Path) -> OmeImage:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = _multiscale_node(path, Reader, parse_url)
    meta = node.metadata
    axes_meta = meta["axes"]
    axes = "".join((a["name"] if isinstance(a, dict) else a)[0].lower() for a in axes_meta)
    units = {(a["name"] if isinstance(a, dict) else a).lower(): (a.get("unit") if isinstance(a, dict) else None)
             for a in axes_meta}
    shapes = [tuple(int(s) for s in d.shape) for d in node.data]
    transforms = meta.get("coordinateTransformations") or []
    n = shapes[0][axes.index("c")] if "c" in axes else 1
    names = [str(x) for x in (meta.get("channel_names") or [])]
    if len(names) != n:
        names = [f"channel {k}" for k in range(n)] if "c" in axes else ["grey"]

    def sizes(i: int) -> list[float | None]:
        scale = next((t["scale"] for t in (transforms[i] if i < len(transforms) else []) if t.get("type") == "scale"), None)
        if scale is None:
            return [None] * sum(a in _SPATIAL for a in axes)
        return [_mm(scale[k], units.get(a) or "micrometer") if units.get(a) else float(scale[k]) * 1e-3
                for k, a in enumerate(axes) if a in _SPATIAL]

    image = _image(path, "ome-zarr", axes, names, shapes, np.dtype(node.data[0].dtype), sizes, ratio_levels=False)
    image._arrays = list(node.data)
    return image


def _image(path, kind, axes, names, shapes, dtype, sizes, ratio_levels: bool) -> OmeImage:
    if any(a not in "tczyxs" for a in axes):
        raise DataError(f"{path}: axes {axes!r} are not OME axes (t, c, z, y, x)")
    if not shapes or min(shapes[0]) < 1:
        raise DataError(f"{path}: no pixels")
    spatial = [k for k, a in enumerate(axes) if a in _SPATIAL]
    base = sizes(0)
    levels = []
    for i, shape in enumerate(shapes):
        sp = tuple(shape[k] for k in spatial)
        if ratio_levels:  # a TIFF pyramid states the pixel size of its first level only
            px = None if any(b is None for b in base) else tuple(
                b * shapes[0][k] / shape[k] for b, k in zip(base, spatial))
        else:
            s = sizes(i)
            px = None if any(v is None for v in s) else tuple(s)
        levels.append(OmeLevel(i, sp, px))
    return OmeImage(Path(path), kind, axes, tuple(names), levels, dtype)


def plane_shape(image: OmeImage, level: int = 0) -> tuple[int, int]:
    """``(height, width)`` of a 2D image (one time point, one plane) at ``level``.

    Raises:
        DataError: no such level, or a time series or a Z stack (tiled prediction segments
            one 2D plane).
    """
    lv = image.level(level)
    shape = tuple(int(s) for s in image.array(level).shape)
    for a in "tz":
        if a in image.axes and shape[image.axes.index(a)] != 1:
            what = "time points" if a == "t" else "Z planes"
            raise DataError(f"{image.path}: {shape[image.axes.index(a)]} {what}; tiled prediction segments one 2D "
                            "plane (a 3D model reads a stack whole: pdeseg.load(ckpt).predict(array))")
    return int(lv.shape[-2]), int(lv.shape[-1])


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def write_ome_tiff(path: str | Path, tiles: Iterable[np.ndarray], shape: tuple[int, int], dtype, tile: int,
                   pixel_size: Sequence[float] | None = None, name: str = "labels") -> Path:
    """Write a 2D image as a tiled OME-TIFF from ``tiles`` (each ``tile x tile``, zero-padded at
    the right and bottom edges, in row-major order), holding at most one tile in memory.

    Args:
        shape: ``(height, width)``; tile: a multiple of 16 (TIFF tiles).
        pixel_size: ``(y, x)`` in mm, written as micrometres.

    Returns:
        ``path`` (written through a temporary name), with the TIFF ``Software`` tag ``pdeseg``
        (the marker by which ``--overwrite`` knows pdeseg wrote it).
    """
    import tifffile

    from pdeseg.data.outputs import MARKER

    from pdeseg.data.files import write_atomically

    metadata: dict = {"axes": "YX", "Name": name}
    if pixel_size is not None:
        metadata.update(PhysicalSizeY=float(pixel_size[0]) * 1e3, PhysicalSizeX=float(pixel_size[1]) * 1e3,
                        PhysicalSizeYUnit="µm", PhysicalSizeXUnit="µm")

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, tiles, shape=tuple(shape), dtype=dtype, tile=(tile, tile), ome=True, metadata=metadata,
                         compression="zlib", software=MARKER)

    return write_atomically(Path(path), write)


def _dedupe_label_names(labels_group) -> None:
    """The ``labels`` list of an OME-Zarr labels group with each name once (ome-zarr appends
    the name again when a layer is written anew)."""
    attrs = labels_group.attrs.asdict()
    for holder in (attrs.get("ome"), attrs):
        if isinstance(holder, dict) and isinstance(holder.get("labels"), list):
            names = list(dict.fromkeys(holder["labels"]))
            if names != holder["labels"]:
                holder["labels"] = names
                labels_group.attrs.update(attrs)
            return


def write_ome_zarr_labels(image_path: str | Path, name: str, labels, pixel_size: Sequence[float] | None,
                          levels: int = 4, chunk: int = 1024, axes: str = "yx") -> Path:
    """Add ``labels`` (a 2D Dask or numpy array on the grid of the image's level 0) to the
    OME-Zarr image ``image_path`` as ``labels/<name>``: a nearest-neighbour pyramid of
    ``levels`` levels (halving each time, while the image stays above one chunk), each with
    its scale, written chunk by chunk.

    Returns:
        the labels group folder; its attributes carry ``"pdeseg"`` (the marker by which
        ``--overwrite`` knows pdeseg wrote it).

    Raises:
        ConfigError: ``name`` is not a plain name (:func:`pdeseg.data.outputs.check_name`).
        MissingExtraError: zarr, ome-zarr or dask is not installed (``pip install 'pdeseg[ome]'``).
    """
    require_ome("OME-Zarr", "writing")
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_multiscale_labels

    from pdeseg import __version__
    from pdeseg.data.outputs import MARKER, check_name

    check_name(name, "labels name")

    base = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=chunk)
    pyramid = [base]
    while len(pyramid) < levels and min(pyramid[-1].shape) > chunk:
        pyramid.append(pyramid[-1][::2, ::2])
    scale0 = [float(p) * 1e3 for p in pixel_size] if pixel_size is not None else [1.0] * base.ndim
    transforms = [[{"type": "scale", "scale": [s * 2**i for s in scale0]}] for i in range(len(pyramid))]
    group = zarr.open_group(str(Path(image_path)), mode="a")
    write_multiscale_labels([p.rechunk(chunk) for p in pyramid], group, name=name, axes=axes,
                            coordinate_transformations=transforms)
    _dedupe_label_names(zarr.open_group(str(Path(image_path) / "labels"), mode="a"))
    zarr.open_group(str(Path(image_path) / "labels" / name), mode="a").attrs[MARKER] = {
        "written_by": f"pdeseg {__version__}", "image": Path(image_path).name}
    return Path(image_path) / "labels" / name
