"""Reader for LIVECell-style COCO instance segmentation (Edlund et al., Nat. Methods 2021).

LIVECell ships grey phase-contrast images (704x520 ``.tif``, named
``<TYPE>_Phase_<well>_<loc>_<time>_<n>.tif``, so the cell type is the file-name prefix) and
COCO json files: one per split (``livecell_coco_{train,val,test}.json``), one per cell type and
split (``LIVECell_single_cells/<type>/{train,val,test}.json``) and training subsets by data size.
Any folder laid out the same way reads too (:func:`pdeseg.data.phantoms.cells.write_cell_phantom`
writes one).

Rules:

* **Annotation files** (``annotations``): one json path or a list of them, relative to ``root``
  or absolute. By default the candidates are every ``*.json`` below ``root/annotations``
  (recursively) when that folder exists, else the ``*.json`` directly in ``root``; when the
  candidates include the whole-set split files ``livecell_coco_{train,val,test}.json``, only
  those are read (the per-type and data-size files repeat their images), else all
  candidates are. A named folder stands for the ``*.json`` below it, by the same rule. Every
  file is parsed once, by :func:`find_livecell_cases`; a case keeps only its own image's
  annotations.
* **Form** of a file: a COCO object with ``images`` and ``annotations``, each a list or (as in
  the official LIVECell files) an object keyed by id. Every annotation is one cell,
  ``iscrowd`` ones included; when the file has ``categories``, an annotation whose
  ``category_id`` is not among them is an error.
* **Objects inside the image**: an annotation whose segmentation covers no pixel of its image
  (a polygon wholly outside it, at negative coordinates, or too thin to cover a pixel centre;
  an empty RLE) is an error naming it; with ``empty_annotations: skip`` it is left out and
  logged. (Pixels an annotation loses to an overlapping one are no such case.)
* **Segmentations**: polygons (a list of ``[x1, y1, x2, y2, ...]``, at least 3 points each,
  several parts joined), uncompressed RLE (``counts`` a list of run lengths) or compressed
  RLE (``counts`` a string, which must be pycocotools' own encoding of a whole mask: it
  leaves the pixels past truncated counts undefined), decoded with ``pycocotools.mask``;
  pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``, the COCO convention.
* **Images** are looked up by ``file_name`` (which may hold sub-folders): first
  ``root/<file_name>``, then ``<dir>/<file_name>`` and ``<dir>/<TYPE>/<base name>`` for
  ``<dir>`` in ``root/images``, ``root/images/livecell_train_val_images``,
  ``root/images/livecell_test_images`` and ``root``; failing those, by base name anywhere
  below ``root`` (the name must then be unique there).
* **One case per image**, case id the file stem; its ``domain`` is the image entry's
  ``cell_type`` when present, else the file-name prefix before the first ``_`` (``''`` without
  one), upper-cased either way (``A172``, ``BV2``, ``SHSY5Y``, ``SKBR3`` ...). An image with no
  annotation is a labelled image without cells.
* **Overlap** (``overlap``): a pixel inside several annotations of one image goes to
  ``smallest`` (the annotation of smallest area, ties to the earlier one; small cells lying on
  large ones survive) or ``first`` (the earliest annotation in file order). Objects are
  numbered 1..N in annotation order; an annotation left without pixels is dropped.
* Without annotation files and with ``require_label=False`` (prediction), every image file
  below ``root`` is an unlabelled case.

Errors (:class:`~pdeseg.data.readers.cells.CellDataError`, naming the json file and the image or
annotation id): not JSON, no ``images`` or ``annotations``, an annotation of an unknown
image, a segmentation of unknown form, a polygon of fewer than 3 points, an RLE whose size is
not the image's, RLE counts that do not decode, a missing image file, the same image id or
file name twice (within or across files), the same image id twice within one file. With a ``skipped`` dict, problems of one image
(its file, its annotations) record the case there and leave it out; problems of a whole file
always raise.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.data.readers.cells import IMAGE_SUFFIXES, CellDataError, ImageCase, check_channels, check_targets

log = logging.getLogger(__name__)

OVERLAP_RULES = ("smallest", "first")
#: What an annotation that covers no pixel of its image is: an error, or left out and logged.
EMPTY_RULES = ("error", "skip")

#: The whole-set split files; when present among the default candidates only they are read.
SPLIT_FILES = ("livecell_coco_train.json", "livecell_coco_val.json", "livecell_coco_test.json")
#: Folders (relative to the root) where LIVECell keeps its images.
IMAGE_DIRS = ("images", "images/livecell_train_val_images", "images/livecell_test_images", ".")


@dataclass
class LivecellCase(ImageCase):
    """An :class:`~pdeseg.data.readers.cells.ImageCase` whose cache key also holds the overlap rule."""

    overlap: str = "smallest"
    empty_annotations: str = "error"

    @property
    def convention(self) -> str:  # the cache key: what the label image depends on
        skip = "-skip-empty" if self.empty_annotations == "skip" else ""
        return f"cells-{self.targets}-overlap-{self.overlap}{skip}"


@dataclass(frozen=True, eq=False)
class CocoObjects:
    """``objects`` reader of one image: its annotations (taken from the json once, by
    :func:`find_livecell_cases`) decoded into an instance image. Picklable.

    Attributes:
        json_path: the annotation file (for messages).
        image_id: the image's COCO id.
        size: ``(height, width)`` from the image entry, or None when the entry has none.
        annotations: ``(annotation id, segmentation)`` per annotation, in file order.
        overlap: ``smallest`` or ``first`` (see the module docstring).
    """

    json_path: Path
    image_id: Any
    size: tuple[int, int] | None
    annotations: tuple[tuple[Any, Any], ...]
    overlap: str = "smallest"
    empty_annotations: str = "error"

    def __call__(self, shape: tuple[int, int]) -> np.ndarray:
        shape = (int(shape[0]), int(shape[1]))
        if self.size is not None and self.size != shape:
            raise CellDataError(f"{self.json_path}: image {self.image_id} is {self.size[0]}x{self.size[1]} (height x "
                                f"width) in the annotations, but its file is {shape[0]}x{shape[1]}")
        return decode_instances(self.annotations, shape, self.overlap, self.json_path, self.image_id,
                                self.empty_annotations)


def _rle(segmentation: Any, shape: tuple[int, int], where: str) -> dict:
    """The compressed RLE of one segmentation (polygon parts merged)."""
    from pycocotools import mask as mask_utils

    h, w = shape
    if isinstance(segmentation, dict):
        size = [int(s) for s in segmentation["size"]]
        if size != [h, w]:
            raise CellDataError(f"{where}: RLE of size {size[0]}x{size[1]} for an image of {h}x{w} (height x width)")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": size, "counts": counts}, h, w)
        return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    parts = [np.asarray(part, dtype=np.float64) for part in segmentation]  # lists, or compacted arrays
    return mask_utils.merge(mask_utils.frPyObjects(parts, h, w))


def _decode(rle: dict, segmentation: Any, where: str) -> np.ndarray:
    """Boolean mask of an RLE. Compressed counts from the file must re-encode to themselves:
    pycocotools leaves the pixels past truncated counts undefined instead of failing."""
    from pycocotools import mask as mask_utils

    try:
        m = mask_utils.decode(rle)
    except ValueError as exc:
        raise CellDataError(f"{where}: RLE counts do not decode ({exc})") from None
    m = m == 1
    if isinstance(segmentation, dict) and not isinstance(segmentation["counts"], list):
        again = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"]
        if again != rle["counts"]:
            raise CellDataError(f"{where}: compressed RLE counts do not describe a {rle['size'][0]}x{rle['size'][1]} "
                                "mask (truncated or corrupt)")
    return m


def decode_instances(annotations: Sequence[tuple[Any, Any]], shape: tuple[int, int], overlap: str = "smallest",
                     json_path: Path | str = "", image_id: Any = None, empty_annotations: str = "error") -> np.ndarray:
    """Instance image ``(H, W)`` int32 of one image's ``(annotation id, segmentation)`` pairs
    (segmentations checked by :func:`check_segmentation`), overlaps resolved by ``overlap``.

    Args:
        empty_annotations: an annotation that covers no pixel of the image: ``error``, or
            ``skip`` (left out, logged).

    Raises:
        CellDataError: an RLE of another size than ``shape`` or counts that do not decode; an
            annotation that covers no pixel (with ``empty_annotations: error``).
    """
    from pycocotools import mask as mask_utils

    if overlap not in OVERLAP_RULES:
        raise CellDataError(f"data.format_options.overlap must be one of {', '.join(OVERLAP_RULES)}, got {overlap!r}")
    out = np.zeros(shape, np.int32)
    if not annotations:
        return out
    rles = [_rle(seg, shape, f"{json_path}: annotation {ann_id} of image {image_id}") for ann_id, seg in annotations]
    # one RLE at a time: pycocotools' area() of a list keeps the list length in a uint8 and fails past 255
    areas = np.array([int(mask_utils.area(r)) for r in rles], np.int64)
    empty = [i for i in range(len(rles)) if areas[i] == 0]
    if empty:
        described = [f"{json_path}: annotation {annotations[i][0]} of image {image_id} covers no pixel of the "
                     f"{shape[0]}x{shape[1]} image{_extent(annotations[i][1])}" for i in empty]
        if empty_annotations != "skip":
            more = f" (and {len(empty) - 1} more such annotation(s) in this image)" if len(empty) > 1 else ""
            raise CellDataError(f"{described[0]}{more}; fix or remove it, or set data.format_options.empty_annotations: "
                                "skip to leave such annotations out (each is logged)")
        for line in described:
            log.warning("empty_annotations skip: %s (left out)", line)
        keep = [i for i in range(len(rles)) if areas[i] > 0]
        annotations, rles, areas = [annotations[i] for i in keep], [rles[i] for i in keep], areas[keep]
        if not rles:
            return out
    n = len(rles)
    # paint so that the winner of every pixel is painted last
    if overlap == "first":
        order = range(n - 1, -1, -1)
    else:  # largest first; among equal areas the later annotation first, so the earlier one wins
        order = sorted(range(n), key=lambda i: (-areas[i], -i))
    with warnings.catch_warnings():  # pycocotools' decode under numpy 2: a DeprecationWarning per call
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in order:
            m = _decode(rles[i], annotations[i][1], f"{json_path}: annotation {annotations[i][0]} of image {image_id}")
            out[m] = i + 1
    labels = np.unique(out)
    if len(labels) - 1 != out.max():  # some annotation lost all its pixels: renumber 1..N in order
        lut = np.zeros(int(out.max()) + 1, np.int32)
        lut[labels] = np.arange(len(labels), dtype=np.int32)
        out = lut[out]
    return out


def _extent(segmentation: Any) -> str:
    """`` (polygon x a..b, y c..d)`` for a polygon, ``""`` otherwise (for messages)."""
    if isinstance(segmentation, dict):
        return " (an empty RLE)"
    xs = [v for part in segmentation for v in part[0::2]]
    ys = [v for part in segmentation for v in part[1::2]]
    return f" (polygon x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g})" if xs and ys else ""


def check_segmentation(segmentation: Any, size: tuple[int, int] | None, where: str) -> None:
    """Check the form of one COCO segmentation (see the module docstring).

    Raises:
        CellDataError: unknown form, a polygon of fewer than 3 points or an odd number of
            coordinates, an RLE without ``size``/``counts``, of another size than ``size``, or
            with counts that are not non-negative whole numbers adding up to its pixels.
    """
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise CellDataError(f"{where}: an RLE segmentation needs 'counts' and 'size', got keys "
                                f"{sorted(segmentation)}")
        rle_size = segmentation["size"]
        if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(_is_int(s) and s >= 0 for s in rle_size)):
            raise CellDataError(f"{where}: RLE size must be [height, width], got {rle_size!r}")
        if size is not None and [int(s) for s in rle_size] != list(size):
            raise CellDataError(f"{where}: RLE of size {rle_size[0]}x{rle_size[1]} for an image of {size[0]}x{size[1]} "
                                "(height x width)")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts):
                raise CellDataError(f"{where}: RLE counts must be non-negative whole numbers")
            if sum(counts) != rle_size[0] * rle_size[1]:
                raise CellDataError(f"{where}: RLE counts add up to {sum(counts)} pixels, the size "
                                    f"{rle_size[0]}x{rle_size[1]} holds {rle_size[0] * rle_size[1]}")
        elif not isinstance(counts, str) or not counts.isascii():
            raise CellDataError(f"{where}: RLE counts must be a list of run lengths or a compressed string, "
                                f"got {type(counts).__name__}")
        return
    compacted = isinstance(segmentation, tuple) and segmentation and all(isinstance(p, np.ndarray) for p in segmentation)
    if compacted or (isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation)):
        for part in segmentation:  # lists as parsed, or float arrays compacted by pdeseg.data.readers.coco_json
            numbers = compacted or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in part)
            if not numbers or not np.isfinite(np.asarray(part, dtype=np.float64)).all():
                raise CellDataError(f"{where}: polygon coordinates must be finite numbers")
            if len(part) % 2:
                raise CellDataError(f"{where}: a polygon needs x, y pairs, got {len(part)} numbers")
            if len(part) < 6:
                raise CellDataError(f"{where}: a polygon needs at least 3 points, got {len(part) // 2}")
        return
    form = type(segmentation).__name__ if not isinstance(segmentation, list) else (
        "an empty list" if not segmentation else "a flat list (polygons are a list of [x1, y1, ...] lists)")
    raise CellDataError(f"{where}: unknown segmentation form ({form}); expected polygons or RLE")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------
# finding the files
# --------------------------------------------------------------------------------------


def _prefer_split_files(candidates: list[Path]) -> list[Path]:
    candidates = [p for p in candidates if p.is_file() and not p.name.startswith(".")]
    splits = [p for p in candidates if p.name.lower() in SPLIT_FILES]
    return splits or candidates


def default_annotation_files(root: Path) -> list[Path]:
    """The annotation files read when none are named (see the module docstring)."""
    folder = root / "annotations"
    return _prefer_split_files(sorted(folder.rglob("*.json")) if folder.is_dir() else sorted(root.glob("*.json")))


def annotation_files(root: Path, annotations: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """The json files named by ``annotations`` (relative to ``root`` or absolute; a folder
    stands for the ``*.json`` below it, the split files ``livecell_coco_*.json`` alone when
    it holds them), or the default ones (None or an empty list).

    Raises:
        CellDataError: a named file or folder that does not exist, a folder without json.
    """
    if annotations is None or (not isinstance(annotations, (str, Path)) and not list(annotations)):
        return default_annotation_files(root)
    names = [annotations] if isinstance(annotations, (str, Path)) else list(annotations)
    files: list[Path] = []
    for name in names:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            found = _prefer_split_files(sorted(path.rglob("*.json")))
            if not found:
                raise CellDataError(f"{path}: no *.json annotation file in this folder "
                                    "(data.format_options.annotations)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CellDataError(f"{path}: annotation file not found (data.format_options.annotations, relative "
                                f"to {root})")
    return list(dict.fromkeys(files))


def _entries(data: dict, key: str, path: Path) -> list:
    value = data[key]
    if isinstance(value, dict):  # the official LIVECell files key both by id
        value = list(value.values())
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CellDataError(f"{path}: '{key}' must be a list of objects (or an object keyed by id)")
    return value


def read_coco(path: Path) -> tuple[list[dict], dict[Any, list[tuple[Any, Any]]]]:
    """Parse one COCO file: its image entries and, per image id, the ``(annotation id,
    segmentation)`` pairs in file order.

    Raises:
        CellDataError: not JSON, no ``images``/``annotations``, image entries without ``id``
            or ``file_name`` or with an id twice, an annotation without ``segmentation``, of
            an unknown image, or (when the file has ``categories``) whose ``category_id`` is
            not one of them.
    """
    from pdeseg.data.readers.coco_json import load_coco

    try:
        data = load_coco(path)  # annotations compacted as they are parsed (LIVECell's files are large)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CellDataError(f"{path}: not a JSON file ({exc})") from None
    except OSError as exc:
        raise CellDataError(f"{path}: cannot read annotation file ({exc})") from None
    if not isinstance(data, dict):
        raise CellDataError(f"{path}: a COCO file is a JSON object with 'images' and 'annotations', got a "
                            f"{type(data).__name__}")
    missing = [k for k in ("images", "annotations") if k not in data]
    if missing:
        raise CellDataError(f"{path}: not a COCO instance file: no {' or '.join(repr(k) for k in missing)} "
                            "(name the annotation files with data.format_options.annotations)")
    images = _entries(data, "images", path)
    categories = None
    if data.get("categories") is not None:
        categories = {c.get("id") for c in _entries(data, "categories", path)}
    per_image: dict[Any, list[tuple[Any, Any]]] = {}
    for entry in images:
        if "id" not in entry or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise CellDataError(f"{path}: image entry {entry.get('id', entry.get('file_name', '?'))!r} needs 'id' "
                                "and 'file_name'")
        if entry["id"] in per_image:
            raise CellDataError(f"{path}: image id {entry['id']!r} appears twice")
        per_image[entry["id"]] = []
    for ann in _entries(data, "annotations", path):
        ann_id = ann.get("id", "?")
        if ann.get("image_id") not in per_image:
            raise CellDataError(f"{path}: annotation {ann_id} refers to image id {ann.get('image_id')!r}, which is not "
                                "among the file's images")
        if "segmentation" not in ann:
            raise CellDataError(f"{path}: annotation {ann_id} of image {ann['image_id']} has no 'segmentation'")
        if categories is not None and ann.get("category_id") not in categories:
            raise CellDataError(f"{path}: annotation {ann_id} of image {ann['image_id']} has category_id "
                                f"{ann.get('category_id')!r}, which is not among the file's categories "
                                f"({', '.join(map(str, sorted(categories, key=str)))}); fix the annotation or its categories")
        per_image[ann["image_id"]].append((ann_id, ann["segmentation"]))
    return images, per_image


def _image_size(entry: dict, path: Path) -> tuple[int, int] | None:
    if "height" not in entry and "width" not in entry:
        return None
    h, w = entry.get("height"), entry.get("width")
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        raise CellDataError(f"{path}: image {entry['id']} has height {h!r} and width {w!r}; expected positive integers")
    return int(h), int(w)


def cell_type_of(file_name: str, entry: dict | None = None) -> str:
    """The domain of an image: its entry's ``cell_type``, else the file-name prefix before
    the first ``_`` (``''`` without one), upper-cased."""
    if entry and entry.get("cell_type"):
        return str(entry["cell_type"]).upper()
    stem = Path(file_name).stem
    return stem.split("_", 1)[0].upper() if "_" in stem else ""


class _ImageLocator:
    """Finds image files below the root by their COCO ``file_name`` (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self._index: dict[str, list[Path]] | None = None

    def __call__(self, file_name: str) -> Path | None:
        rel = Path(file_name)
        base = rel.name
        prefix = base.split("_", 1)[0]
        candidates = [self.root / rel]
        for d in IMAGE_DIRS:
            folder = self.root / d
            candidates += [folder / rel, folder / prefix / base, folder / prefix.upper() / base]
        for c in candidates:
            if c.is_file():
                return c
        if self._index is None:
            self._index = {}
            for p in sorted(self.root.rglob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    self._index.setdefault(p.name, []).append(p)
        found = self._index.get(base, [])
        if len(found) > 1:
            raise CellDataError(f"{self.root}: image {base} is found in several places ({found[0]}, {found[1]}); "
                                "keep one, or give file_name with its folder")
        return found[0] if found else None


def find_livecell_cases(root: str | Path, modalities: Sequence[str] = ("grey",), require_label: bool = True,
                        skipped: dict[str, str] | None = None, targets: str = "semantic",
                        annotations: str | Path | Sequence[str | Path] | None = None,
                        overlap: str | None = "smallest", empty_annotations: str | None = "error") -> list[LivecellCase]:
    """The images of LIVECell-style COCO files under ``root``, one case each (rules in the
    module docstring).

    Args:
        modalities: channels (``grey``; a grey image gives the same values for red/green/blue).
        require_label: without annotation files, False lists every image file below ``root``
            as an unlabelled case (prediction); True raises.
        skipped: when given, an image whose file is missing or whose annotations are
            malformed is recorded here (case id -> reason) and left out.
        targets: ``semantic`` or ``boundary`` (:mod:`pdeseg.data.readers.cells`).
        annotations: json file(s) relative to ``root`` or absolute; None: the default rule.
        overlap: ``smallest`` or ``first``; None means ``smallest``.
        empty_annotations: ``error`` (default) or ``skip``: an annotation that covers no pixel
            of its image (see the module docstring).

    Raises:
        CellDataError: a missing root, no annotation files (with ``require_label``), a
            malformed file, the same image twice, or (without ``skipped``) a problem of one
            image; the message names the json file and the image or annotation id.
    """
    check_channels(modalities)
    targets = check_targets(targets or "semantic")
    overlap = overlap or "smallest"
    if overlap not in OVERLAP_RULES:
        raise CellDataError(f"data.format_options.overlap must be one of {', '.join(OVERLAP_RULES)}, got {overlap!r}")
    empty_annotations = empty_annotations or "error"
    if empty_annotations not in EMPTY_RULES:
        raise CellDataError(f"data.format_options.empty_annotations must be one of {', '.join(EMPTY_RULES)}, "
                            f"got {empty_annotations!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CellDataError(f"data folder not found: {root}")
    files = annotation_files(root, annotations)
    locate = _ImageLocator(root)
    if not files:
        if require_label:
            raise CellDataError(f"{root}: no COCO annotation file (*.json in {root / 'annotations'} or {root}); name "
                                "them with data.format_options.annotations")
        return _unlabelled_cases(root, targets, overlap)
    cases: list[LivecellCase] = []
    seen_names: dict[str, tuple[Path, Any]] = {}  # ids link annotations within one file only: names must be unique
    for path in files:
        images, per_image = read_coco(path)
        for entry in images:
            image_id, file_name = entry["id"], entry["file_name"]
            stem = Path(file_name).stem
            if stem in seen_names:
                other, other_id = seen_names[stem]
                raise CellDataError(f"{path}: image {image_id} ({file_name}) has the same name as image {other_id} of "
                                    f"{other}; each image may be annotated once (name the files to read with "
                                    "data.format_options.annotations)")
            seen_names[stem] = (path, image_id)
            try:
                cases.append(_case(entry, per_image[image_id], path, locate, targets, overlap, empty_annotations))
            except CellDataError as exc:
                if skipped is None:
                    raise
                skipped[stem] = str(exc)
    if not cases and not skipped:
        raise CellDataError(f"{root}: the annotation files ({', '.join(str(f) for f in files)}) list no image")
    return cases


def _case(entry: dict, annotations: list[tuple[Any, Any]], path: Path, locate: _ImageLocator, targets: str,
          overlap: str, empty_annotations: str = "error") -> LivecellCase:
    image_id, file_name = entry["id"], entry["file_name"]
    size = _image_size(entry, path)
    for ann_id, seg in annotations:
        check_segmentation(seg, size, f"{path}: annotation {ann_id} of image {image_id}")
    image = locate(file_name)
    if image is None:
        raise CellDataError(f"{path}: image {image_id}: file {file_name} not found under {locate.root} (looked in "
                            f"{', '.join(IMAGE_DIRS[:-1])}, the root and below)")
    objects = CocoObjects(path, image_id, size, tuple(annotations), overlap, empty_annotations)
    return LivecellCase(Path(file_name).stem, image.parent, image, cell_type_of(file_name, entry), targets, objects,
                        (path,), extra={"image_id": image_id, "annotation_file": path.name}, overlap=overlap,
                        empty_annotations=empty_annotations)


def _unlabelled_cases(root: Path, targets: str, overlap: str) -> list[LivecellCase]:
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not images:
        raise CellDataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) and no annotation file")
    seen: dict[str, Path] = {}
    for p in images:
        if p.stem in seen:
            raise CellDataError(f"{p}: same case id {p.stem!r} as {seen[p.stem]}")
        seen[p.stem] = p
    return [LivecellCase(p.stem, p.parent, p, cell_type_of(p.name), targets, overlap=overlap) for p in images]
