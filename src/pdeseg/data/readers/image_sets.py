"""Readers for 2D image sets with one label file per image (see :mod:`pdeseg.data.readers.cells`):

* ISBI 2012 EM (:func:`find_isbi_cases`): ``images/NN.png`` and ``labels/NN.png`` (uint8,
  255 = cell interior, 0 = membrane); the objects are the 4-connected components of the
  interior; domain ``em``.
* DRIVE (:func:`find_drive_cases`): ``images/NN_training.tif``, ``1st_manual/NN_manual1.gif``
  (255 = vessel) and ``mask/NN_training_mask.gif`` (the field of view); a semantic vessel mask
  (no instance metrics, ``targets`` must be ``semantic``); domain ``fundus``.
* An image folder (:func:`find_folder_cases`): ``images/<stem>.<ext>`` and
  ``masks/<stem>.<ext>`` or ``masks/<stem>_mask.<ext>`` (PNG/TIFF; binary masks or label
  images), with an optional ``domains.tsv`` (columns ``image`` or ``id``, and ``domain``).

Each image is one case, id = the image file's stem. Listing checks the layout (a case error,
recorded in ``skipped`` when given); reading checks pixels, values and sizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg.data.readers.cells import (
    IMAGE_SUFFIXES,
    CellDataError,
    ImageCase,
    binary_mask,
    check_channels,
    check_targets,
    find_image_files,
    label_image_reader,
    read_image_file,
)
from pdeseg.data.readers.dsb import DOMAINS_FILE, apply_domains, read_domains_tsv, resolve_domains

#: Label kinds of :func:`find_folder_cases` (see :func:`pdeseg.data.readers.cells.instances_from_label_image`).
LABEL_KINDS = ("auto", "binary", "instances")
#: Lossless formats a mask may be stored in.
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".bmp")


@dataclass(frozen=True)
class BinaryMaskReader:
    """The ``objects`` reader of a semantic mask (DRIVE's vessels): 1 where the file is
    non-zero. The file must hold 0 and at most one other value."""

    path: Path

    def __call__(self, shape: tuple[int, int]) -> np.ndarray:
        return binary_mask(read_image_file(self.path), self.path).astype(np.int32)


def _root_dir(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CellDataError(f"data folder not found: {root}")
    return root


def _by_stem(folder: Path, what: str, skipped: dict[str, str] | None) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem; two files with one stem are a case error."""
    out: dict[str, Path] = {}
    twice: set[str] = set()
    for path in find_image_files(folder):
        if path.stem in out:
            _record(path.stem, CellDataError(f"{path}: two {what} files named {path.stem} ({out[path.stem].name} and "
                                              f"{path.name})"), skipped)
            twice.add(path.stem)
        out[path.stem] = path
    return {k: v for k, v in out.items() if k not in twice}


def _collect(keys: Sequence, make, skipped: dict[str, str] | None, key_name=str) -> list[ImageCase]:
    """``make(key)`` for each key, errors recorded in ``skipped`` under ``key_name(key)`` (or raised)."""
    cases = []
    for key in keys:
        name = key_name(key)
        if skipped is not None and name in skipped:  # already recorded while listing
            continue
        try:
            cases.append(make(key))
        except CellDataError as exc:
            _record(name, exc, skipped)
    return cases


def _record(key: str, error: CellDataError, skipped: dict[str, str] | None) -> None:
    if skipped is None:
        raise error
    skipped[key] = str(error)


def _finish(cases: list[ImageCase], root: Path, skipped: dict[str, str] | None, what: str, layout: str) -> list[ImageCase]:
    if not cases and not skipped:
        raise CellDataError(f"{root}: no {what} images found (expected {layout})")
    return sorted(cases, key=lambda c: c.case_id)


# --------------------------------------------------------------------------------------
# ISBI 2012 EM
# --------------------------------------------------------------------------------------

_ISBI_LAYOUT = "images/NN.png and labels/NN.png with matching names, labels 255 = cell interior and 0 = membrane"


def find_isbi_cases(root: str | Path, modalities: Sequence[str] = ("grey",), require_label: bool = True,
                    skipped: dict[str, str] | None = None, targets: str = "semantic") -> list[ImageCase]:
    """ISBI 2012 EM slices under ``root`` (a folder holding ``images/`` and ``labels/``).

    Args:
        require_label: every image needs its label file (else images without one are
            unlabelled cases).
        skipped: when given, an image without its label, or a label without its image, is
            left out and recorded here (stem -> reason) instead of raising.
        targets: ``semantic`` or ``boundary``.

    Raises:
        CellDataError: missing root or ``images/``, no images, two files with one stem,
            (without ``skipped``) a missing label or image.
        DataError: an unknown ``targets`` value.
    """
    check_targets(targets)
    check_channels(modalities)
    root = _root_dir(root)
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise CellDataError(f"{images_dir}: missing images/ folder (expected {_ISBI_LAYOUT})")
    images = _by_stem(images_dir, "image", skipped)
    labels = _by_stem(labels_dir, "label", skipped) if labels_dir.is_dir() else {}
    for stem in sorted(set(labels) - set(images)):
        _record(stem, CellDataError(f"{labels[stem]}: label without its image in {images_dir}"), skipped)

    def make(stem: str) -> ImageCase:
        label = labels.get(stem)
        if label is None and require_label:
            raise CellDataError(f"{images[stem]}: no label file {labels_dir / stem}.png")
        return ImageCase(stem, root, images[stem], "em", targets, label_image_reader(label, "binary") if label else None,
                         (label,) if label else ())

    return _finish(_collect(sorted(images), make, skipped), root, skipped, "ISBI 2012 EM", _ISBI_LAYOUT)


# --------------------------------------------------------------------------------------
# DRIVE
# --------------------------------------------------------------------------------------

_DRIVE_LAYOUT = ("training/images/NN_training.tif, training/1st_manual/NN_manual1.gif and "
                 "training/mask/NN_training_mask.gif (root = drive/, drive/training or a folder holding them)")
_NUMBER = re.compile(r"^(\d+)(?:_|$)")


def _by_number(folder: Path, what: str, skipped: dict[str, str] | None, suffix: str = "") -> dict[int, Path]:
    """Files of ``folder`` keyed by their leading number (``suffix``: the stem must end so);
    unexpected names and two files with one number are case errors (keyed by file stem)."""
    out: dict[int, Path] = {}
    twice: set[int] = set()
    for path in find_image_files(folder):
        m = _NUMBER.match(path.stem)
        if not m or not path.stem.endswith(suffix):
            _record(path.stem, CellDataError(f"{path}: unexpected {what} file name (expected "
                                             f"NN{suffix or '_training'}{path.suffix})"), skipped)
            continue
        n = int(m[1])
        if n in out:
            _record(path.stem, CellDataError(f"{path}: two {what} files numbered {n} ({out[n].name} and {path.name})"),
                    skipped)
            twice.add(n)
        out[n] = path
    return {k: v for k, v in out.items() if k not in twice}


def find_drive_cases(root: str | Path, modalities: Sequence[str] = ("red", "green", "blue"), require_label: bool = True,
                     skipped: dict[str, str] | None = None, targets: str = "semantic") -> list[ImageCase]:
    """DRIVE fundus images under ``root`` (``drive/``, ``drive/training`` or a folder holding
    ``images/``, ``1st_manual/`` and ``mask/``); case id = the image stem (``21_training``).

    Labels are the first observer's vessel masks (``1st_manual``, 255 = vessel), read as a
    semantic mask (``semantic_only``); the field of view is ``mask/`` (when that folder
    exists, every image needs its FOV mask; without it, no case has a FOV).

    Args:
        targets: must be ``semantic`` (vessels are not separate objects with boundaries).
        skipped: as in :func:`find_isbi_cases` (keys are image stems, or a file name for an
            orphan annotation).

    Raises:
        CellDataError: ``targets`` other than ``semantic``, missing root or ``images/``,
            unexpected file names, (without ``skipped``) a missing annotation or FOV mask.
    """
    check_targets(targets)
    if targets != "semantic":
        raise CellDataError(f"data.format_options.targets={targets!r} does not apply to DRIVE: its labels are a "
                            f"semantic vessel mask (use targets: semantic)")
    check_channels(modalities)
    root = _root_dir(root)
    if (root / "training").is_dir() and not (root / "images").is_dir():
        root = root / "training"
    images_dir, manual_dir, fov_dir = root / "images", root / "1st_manual", root / "mask"
    if not images_dir.is_dir():
        raise CellDataError(f"{images_dir}: missing images/ folder (expected {_DRIVE_LAYOUT})")
    images = _by_number(images_dir, "image", skipped)
    manual = _by_number(manual_dir, "annotation", skipped, "_manual1") if manual_dir.is_dir() else {}
    fovs = _by_number(fov_dir, "field-of-view mask", skipped, "_mask") if fov_dir.is_dir() else None
    for n in sorted(set(manual) - set(images)):
        _record(manual[n].stem, CellDataError(f"{manual[n]}: annotation without its image in {images_dir}"), skipped)

    def make(n: int) -> ImageCase:
        image = images[n]
        label = manual.get(n)
        if label is None and require_label:
            raise CellDataError(f"{image}: no annotation {manual_dir / f'{n:02d}_manual1.gif'}")
        fov = None
        if fovs is not None:
            fov = fovs.get(n)
            if fov is None:
                raise CellDataError(f"{image}: no field-of-view mask {fov_dir / f'{image.stem}_mask.gif'}")
        return ImageCase(image.stem, root, image, "fundus", "semantic", BinaryMaskReader(label) if label else None,
                         (label,) if label else (), fov=fov, semantic_only=True)

    cases = _collect(sorted(images), make, skipped, key_name=lambda n: images[n].stem)
    return _finish(cases, root, skipped, "DRIVE", _DRIVE_LAYOUT)


# --------------------------------------------------------------------------------------
# a generic image folder
# --------------------------------------------------------------------------------------

_FOLDER_LAYOUT = ("images/<name>.png|tif and masks/<name>.png|tif or masks/<name>_mask.png|tif "
                  "(binary masks or label images), optional domains.tsv")


def _folder_masks(masks_dir: Path, images: dict[str, Path], skipped: dict[str, str] | None) -> dict[str, Path]:
    """Mask files keyed by their image's stem: ``masks/S.*`` belongs to image ``S`` when there
    is one, else ``masks/S_mask.*`` to image ``S``."""
    out: dict[str, Path] = {}
    bad: set[str] = set()
    for path in find_image_files(masks_dir):
        stem = path.stem
        key = stem if stem in images or not stem.endswith("_mask") else stem[: -len("_mask")]
        if path.suffix.lower() not in MASK_SUFFIXES:
            _record(key, CellDataError(f"{path}: a mask must be stored losslessly (PNG or TIFF), not {path.suffix}"), skipped)
            bad.add(key)
        elif key not in images:
            _record(key, CellDataError(f"{path}: mask without its image {key}.* in {masks_dir.parent / 'images'}"), skipped)
        elif key in out:
            _record(key, CellDataError(f"{path}: a second mask for image {images[key].name} (and {out[key].name})"), skipped)
            bad.add(key)
        else:
            out[key] = path
    for key in bad:
        out.pop(key, None)
        images.pop(key, None)
    return out


def find_folder_cases(root: str | Path, modalities: Sequence[str] = ("grey",), require_label: bool = True,
                      skipped: dict[str, str] | None = None, targets: str = "semantic", label_kind: str = "auto",
                      domains: str | Path | None = None) -> list[ImageCase]:
    """A folder of images with one mask each: ``images/`` and ``masks/`` (see the module
    docstring); case id = the image stem. For prediction (``require_label`` false) the images
    may also lie straight in ``root``, or ``root`` may be one image file.

    Args:
        require_label: every image needs its mask (else images without one are unlabelled).
        skipped: when given, an image without its mask, a mask without its image or a
            second mask for an image is left out and recorded here (stem -> reason).
        targets: ``semantic`` or ``boundary``.
        label_kind: how masks are read: ``binary`` (connected components are the objects),
            ``instances`` (each value one object) or ``auto`` (binary when a file holds at
            most two values); see :func:`pdeseg.data.readers.cells.instances_from_label_image`.
        domains: a domains table other than ``<root>/domains.tsv`` (columns ``image``,
            ``image_id`` or ``id``, and ``domain``); missing images get domain ''.

    Raises:
        CellDataError: missing root or ``images/``, no images, two image files with one
            stem, a bad domains table, (without ``skipped``) the case errors above.
        DataError: an unknown ``targets`` value.
    """
    check_targets(targets)
    if label_kind not in LABEL_KINDS:
        raise CellDataError(f"data.format_options.label_kind must be one of {', '.join(LABEL_KINDS)}, got {label_kind!r}")
    check_channels(modalities)
    given = Path(root).expanduser()
    if not require_label and given.is_file():  # one image to segment: the case is that file
        if given.suffix.lower() not in IMAGE_SUFFIXES:
            raise CellDataError(f"{given}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [ImageCase(given.stem, given.parent, given, "", targets, None, ())]
    root = _root_dir(root)
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        if require_label or not find_image_files(root):
            raise CellDataError(f"{images_dir}: missing images/ folder (expected {_FOLDER_LAYOUT})")
        images_dir = root  # images to segment, straight in the folder (no labels needed)
    images = _by_stem(images_dir, "image", skipped)
    masks = _folder_masks(masks_dir, images, skipped) if masks_dir.is_dir() else {}

    def make(stem: str) -> ImageCase:
        mask = masks.get(stem)
        if mask is None and require_label:
            raise CellDataError(f"{images[stem]}: no mask {masks_dir / stem}.png (or .tif, or {stem}_mask.png)")
        return ImageCase(stem, root, images[stem], "", targets, label_image_reader(mask, label_kind) if mask else None,
                         (mask,) if mask else ())

    cases = _collect(sorted(images), make, skipped)
    table_path = resolve_domains(domains, [root / DOMAINS_FILE], root)
    if table_path is not None:
        table = read_domains_tsv(table_path, ("image", "image_id", "id"))
        # the id column may hold file names (a.png) as well as stems (a)
        table = {(Path(k).stem if Path(k).suffix.lower() in IMAGE_SUFFIXES else k): v for k, v in table.items()}
        apply_domains(cases, table, table_path, list(skipped or ()))
    return _finish(cases, root, skipped, "image-folder", _FOLDER_LAYOUT)
