"""The shared form of a 2D microscopy image (DSB 2018, ISBI 2012 EM, DRIVE, LIVECell, an image
folder): one image is one case, read as a stack of one slice so that the rest of pdeseg (cache,
2D slice models, scoring, writing) treats it like any other case.

A case holds:

* the image, ``(C, H, W, 1)`` float32 raw intensities. Channels: ``grey`` (the mean of the
  colour channels, or the image itself when it is grey) or ``red``/``green``/``blue`` (a grey
  image gives its intensity for each). An alpha channel is dropped.
* the objects, an instance image ``(H, W, 1)`` int32 (0 background, 1..N one per object),
  where the data set has objects (nuclei, cells; DSB's one-mask-per-nucleus files, COCO
  annotations, label images, connected components of a binary mask);
* the classes trained on, built from the objects by the ``targets`` rule:

  - ``semantic``: 0 background, 1 cell (any object);
  - ``boundary``: 0 background, 1 interior, 2 boundary, where boundary pixels are an
    object's own pixels that touch the background or another object (4-neighbourhood,
    :func:`pdeseg.data.pipeline.label_geometry.boundary_targets`). Touching cells are then separated by
    a line of boundary class, and :func:`pdeseg.data.pipeline.label_geometry.instances_from_boundary_classes`
    splits a prediction back into cells by watershed (``boundary_width`` pixels thick, the
    ``format_options.boundary_width`` read option, default 1);
  - ``distance``, ``flows``: 0 background, 1 cell, plus regression maps made from the objects
    after augmentation (:mod:`pdeseg.data.pipeline.representations`);

* its ``domain`` (cell type or imaging modality), so that splits can group by it;
* optionally a field-of-view mask (DRIVE), ``(H, W, 1)`` bool: pixels outside it are left out
  of the metrics.

Pixel size is not stored in these files: distances (HD95, boundary F1) are in pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.files import write_atomically
from pdeseg.data.outputs import png_marker, tiff_marker
from pdeseg.data.pipeline.representations import CLASS_NAMES as REPRESENTATION_CLASSES
from pdeseg.data.pipeline.representations import TARGETS as REPRESENTATIONS
from pdeseg.data.pipeline.representations import Representation
from pdeseg.errors import DataError

#: Channels a microscopy case can offer.
CHANNELS = ("grey", "red", "green", "blue")
#: How object masks become training targets: the instance representations of
#: :mod:`pdeseg.data.pipeline.representations` (the class names are theirs).
TARGETS = REPRESENTATIONS
CLASS_NAMES = REPRESENTATION_CLASSES
#: Evaluation regions per target rule: the cell region joins interior and boundary.
REGIONS = {"semantic": {}, "boundary": {"cell": (1, 2)}, "distance": {}, "flows": {}}
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".gif", ".bmp")


class CellDataError(DataError):
    """A microscopy file is missing, unreadable or inconsistent; the message names it."""


def check_targets(targets: str) -> str:
    if targets not in TARGETS:
        raise DataError(f"data.format_options.targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    return targets


def check_channels(modalities: Sequence[str]) -> tuple[str, ...]:
    odd = [m for m in modalities if m not in CHANNELS]
    if odd:
        raise CellDataError(f"unknown channel {odd}; microscopy images offer {', '.join(CHANNELS)}")
    return tuple(modalities)


def read_image_file(path: Path) -> np.ndarray:
    """Pixels of a PNG/TIFF/JPEG/GIF/BMP file: ``(H, W)`` or ``(H, W, 3|4)``, as stored.

    Raises:
        CellDataError: missing, unreadable or empty file, or an unexpected shape.
    """
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            try:
                data = np.asarray(tifffile.imread(path))
            except Exception as tiff_error:
                try:  # Pillow decodes LZW (DRIVE's images) where tifffile would need imagecodecs
                    data = _read_with_pillow(path)
                except Exception:
                    raise tiff_error from None
        else:
            data = _read_with_pillow(path)
    except CellDataError:
        raise
    except Exception as exc:  # PIL and tifffile raise many types for broken files
        raise CellDataError(f"{path}: cannot read image file ({type(exc).__name__}: {exc})") from None
    if data.size == 0:
        raise CellDataError(f"{path}: no pixels (truncated or corrupt file)")
    if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[-1] not in (3, 4):  # planar TIFF (C, H, W)
        data = np.moveaxis(data, 0, -1)
    if data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., :1]
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (1, 3, 4))):
        raise CellDataError(f"{path}: expected a 2D grey or RGB(A) image, got shape {data.shape}")
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise CellDataError(f"{path}: NaN/inf pixels")
    return data


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":  # palette images (DRIVE's GIFs): the palette's intensities
            im = im.convert("RGB") if _palette_is_colour(im) else im.convert("L")
        elif im.mode in ("I;16", "I;16B", "I;16L"):
            im = im.convert("I")
        return np.asarray(im)


def _palette_is_colour(im) -> bool:
    pal = np.asarray(im.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    return bool(len(pal) and (np.ptp(pal, axis=1) > 0).any())


def image_channels(pixels: np.ndarray, modalities: Sequence[str], path: Path) -> np.ndarray:
    """The requested channels of an image file's pixels, ``(C, H, W)`` float32.

    ``grey`` of a colour image is the mean of red, green and blue; a grey image gives its
    intensity for every channel. An alpha channel is dropped.
    """
    check_channels(modalities)
    data = pixels.astype(np.float32)
    rgb = data[..., :3] if data.ndim == 3 else np.repeat(data[..., None], 3, axis=-1)
    planes = {"grey": rgb.mean(axis=-1) if data.ndim == 3 else data, "red": rgb[..., 0], "green": rgb[..., 1],
              "blue": rgb[..., 2]}
    return np.stack([planes[m] for m in modalities])


def binary_mask(pixels: np.ndarray, path: Path, what: str = "mask") -> np.ndarray:
    """A 0/non-zero mask file as bool ``(H, W)``; a colour mask counts a pixel that is non-zero
    in any colour channel (alpha ignored).

    Raises:
        CellDataError: more than two values (a label image where a binary mask is expected).
    """
    data = pixels[..., :3].max(axis=-1) if pixels.ndim == 3 else pixels
    values = np.unique(data)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise CellDataError(f"{path}: a binary {what} must hold 0 and one other value, found {values[:6].tolist()}"
                            f"{' ...' if len(values) > 6 else ''}")
    return data != 0


def instances_from_label_image(pixels: np.ndarray, path: Path, kind: str = "auto") -> np.ndarray:
    """Objects of a label file, ``(H, W)`` int32.

    Args:
        kind: ``binary`` (0 and one other value: 4-connected components are the objects),
            ``instances`` (each positive value is one object), ``auto`` (binary when the file
            holds at most two values, else instances).

    Raises:
        CellDataError: colour label images, negative or non-integer values, or a binary
            ``kind`` with more than two values.
    """
    if pixels.ndim == 3:
        if not (pixels[..., :3] == pixels[..., :1]).all():
            raise CellDataError(f"{path}: a label image must be grey (one value per pixel), got colour pixels")
        pixels = pixels[..., 0]
    if not np.issubdtype(pixels.dtype, np.integer):
        if not np.array_equal(pixels, np.round(pixels)):
            raise CellDataError(f"{path}: label values must be whole numbers")
        pixels = pixels.astype(np.int64)
    if pixels.min() < 0:
        raise CellDataError(f"{path}: negative label values")
    if kind == "binary" or (kind == "auto" and len(np.unique(pixels)) <= 2):
        # scikit-image: not at import (the CLI lists formats)
        from pdeseg.data.pipeline.label_geometry import instances_from_mask

        return instances_from_mask(binary_mask(pixels, path, "label image")).astype(np.int32)
    _, relabelled = np.unique(pixels, return_inverse=True)
    out = relabelled.reshape(pixels.shape).astype(np.int32)
    return out if pixels.min() == 0 else out + 1


def classes_from_instances(instances: np.ndarray, targets: str, boundary_width: int = 1) -> np.ndarray:
    """Training classes ``(H, W)`` uint8 from an instance image (see the module docstring)."""
    return Representation(check_targets(targets), boundary_width).classes(instances).astype(np.uint8)


@dataclass
class ImageCase:
    """One microscopy image and where its objects come from.

    Attributes:
        case_id: unique within the data set (the file stem, or DSB's image id).
        folder: the folder the files are in (for messages and the cache).
        image: the image file.
        domain: cell type or imaging modality ('' when unknown).
        targets: an instance representation (:data:`TARGETS`, see the module docstring).
        objects: ``(H, W) -> int32 instances`` reader of the labels, or None (no labels).
        label_files: the files ``objects`` reads (for the cache key and messages).
        fov: a field-of-view mask file (0 outside), or None.
        semantic_only: the labels are a semantic mask (DRIVE's vessels): no instance metrics.
        boundary_width: ``boundary`` targets: the boundary's thickness in pixels.
    """

    case_id: str
    folder: Path
    image: Path
    domain: str = ""
    targets: str = "semantic"
    objects: Callable[[tuple[int, int]], np.ndarray] | None = None
    label_files: tuple[Path, ...] = ()
    fov: Path | None = None
    semantic_only: bool = False
    extra: dict = field(default_factory=dict)
    boundary_width: int = 1

    @property
    def convention(self) -> str:
        return f"cells-{self.targets}" + (f"-w{self.boundary_width}" if self.boundary_width != 1 else "")

    def source_files(self, modalities: Sequence[str] = ("grey",)) -> list[Path]:
        return [self.image, *self.label_files, *([self.fov] if self.fov else [])]

    def load(self, modalities: Sequence[str] = ("grey",), with_label: bool = True) -> LoadedCase:
        """Read the image (and, with ``with_label``, the objects and classes).

        Raises:
            CellDataError: unreadable files, a label or field-of-view mask of another size
                than the image.
        """
        pixels = read_image_file(self.image)
        image = image_channels(pixels, modalities, self.image)[..., None]
        shape = pixels.shape[:2]
        instances = label = None
        if with_label and self.objects is not None:
            instances = np.asarray(self.objects(shape))
            if instances.shape != shape:
                raise CellDataError(f"{self.label_files[0] if self.label_files else self.folder}: labels of size "
                                    f"{instances.shape} for an image of size {shape} ({self.image.name})")
            label = classes_from_instances(instances, self.targets, self.boundary_width)[..., None]
            instances = None if self.semantic_only else instances[..., None].astype(np.int32)
        valid = None
        if self.fov is not None:
            valid = binary_mask(read_image_file(self.fov), self.fov, "field-of-view mask")
            if valid.shape != shape:
                raise CellDataError(f"{self.fov}: field-of-view mask of size {valid.shape} for an image of size {shape}")
            valid = valid[..., None]
        header = nib.Nifti1Header()
        header.set_data_shape(image.shape[1:])
        header.set_zooms((1.0, 1.0, 1.0))
        return LoadedCase(self, image, label, np.eye(4), header, self.convention, tuple(modalities),
                          instances=instances, valid=valid, domain=self.domain)


def label_image_reader(path: Path, kind: str = "auto") -> Callable[[tuple[int, int]], np.ndarray]:
    """An ``objects`` reader for one label file (see :func:`instances_from_label_image`)."""
    return _LabelImage(Path(path), kind)


@dataclass(frozen=True)
class _LabelImage:  # a class, not a closure, so that cases pickle into DataLoader workers
    path: Path
    kind: str

    def __call__(self, shape: tuple[int, int]) -> np.ndarray:
        return instances_from_label_image(read_image_file(self.path), self.path, self.kind)


def find_image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files left out)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


# --------------------------------------------------------------------------------------
# writing predictions
# --------------------------------------------------------------------------------------


def output_paths(case_id: str, out_dir: Path, instances: bool = True) -> list[Path]:
    """``<out_dir>/<case_id>_mask.png`` (0/255 foreground) and, for object data,
    ``<out_dir>/<case_id>_instances.tif`` (uint16 or uint32 labels, 0 background)."""
    return [out_dir / f"{case_id}_mask.png"] + ([out_dir / f"{case_id}_instances.tif"] if instances else [])


def write_prediction(classes: np.ndarray, loaded: LoadedCase, out_dir: Path, instances: bool = True,
                     objects: np.ndarray | None = None) -> Path:
    """Write a predicted class map ``(H, W, 1)`` at the image's own size: a 0/255 mask of the
    cells and, when ``instances``, the cells as a label image: ``objects`` ``(H, W[, 1])``
    as the model's representation found them, or (None) :func:`predicted_instances` of the
    class map.

    Returns:
        the mask file.
    """
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    cls = np.asarray(classes)[..., 0] if classes.ndim == 3 else np.asarray(classes)
    paths = output_paths(loaded.case.case_id, out_dir, instances)
    mask = ((cls > 0) * 255).astype(np.uint8)
    write_atomically(paths[0], lambda tmp: Image.fromarray(mask).save(tmp, format="PNG", pnginfo=png_marker(mask)))
    if instances:
        import tifffile

        from pdeseg.data.pipeline.label_geometry import predicted_instances

        objects = predicted_instances(cls) if objects is None else np.asarray(objects).reshape(cls.shape)
        objects = objects.astype(np.uint16 if objects.max(initial=0) < 65536 else np.uint32)
        write_atomically(paths[1], lambda tmp: tifffile.imwrite(tmp, objects, **tiff_marker(objects)))
    return paths[0]
