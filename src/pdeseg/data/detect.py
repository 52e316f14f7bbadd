"""Which data format a folder holds, from its layout alone (no image is read).

Used by ``pdeseg fingerprint``, ``plan``, ``export-nnunet`` and ``train --data`` without a
config. The rules, tried in this order (the first that matches wins):

=============  ==================================================================
format         marker
=============  ==================================================================
msd            ``dataset.json`` beside ``imagesTr/``
dsb2018        ``stage1_train/`` (or ``domains.tsv`` with image folders holding ``images/`` and ``masks/``)
drive          ``1st_manual/`` in the folder or in its ``training/``
livecell       ``images/`` beside a ``*.json`` file (COCO annotations) in the folder or in
               ``annotations/`` or one folder below it (LIVECell's release keeps
               ``annotations/LIVECell/livecell_coco_{train,val,test}.json``)
isbi_em        ``images/`` and ``labels/``
cell_folder    ``images/`` and ``masks/``
lgg            folders holding ``*_mask.tif`` files (or ``kaggle_3m/``)
brats          folders holding ``*_flair.nii[.gz]``, ``*-t2f.nii.gz`` or ``*_seg.nii[.gz]``
=============  ==================================================================

A folder that matches none gets a :class:`~pdeseg.errors.DataError` that says what was
looked for and how to name the format (``--format``).

:func:`route_input` is the one front door of prediction (``pdeseg predict``,
:func:`~pdeseg.inference.folder.predict_folder`, :meth:`pdeseg.Segmenter.predict` on a path):
an OME-TIFF / OME-Zarr image (or a folder of them) is segmented tile by tile, a DICOM series
by any model, anything else by the model's own data format (or, without a model, the format
the layout above names).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pdeseg.errors import DataError

_BRATS_PATTERNS = ("*_flair.nii*", "*-t2f.nii*", "*_seg.nii*", "*-seg.nii*")


def _subfolders(root: Path, limit: int = 50) -> list[Path]:
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            out.append(p)
            if len(out) >= limit:
                break
    return out


def _has(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(p), None) is not None for p in patterns)


def detect_format(root: str | Path) -> str:
    """The registered format name of the data set at ``root``.

    Raises:
        DataError: ``root`` is missing, empty, or matches no known layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(f"{root} is empty: point --data at a data set folder")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    if (root / "stage1_train").is_dir():
        return "dsb2018"
    if (root / "domains.tsv").is_file() and any((f / "images").is_dir() and (f / "masks").is_dir() for f in _subfolders(root)):
        return "dsb2018"
    if (root / "1st_manual").is_dir() or (root / "training" / "1st_manual").is_dir():
        return "drive"
    if (root / "images").is_dir():
        if any(next(root.glob(p), None) is not None for p in ("*.json", "annotations/*.json", "annotations/*/*.json")):
            return "livecell"
        if (root / "labels").is_dir():
            return "isbi_em"
        if (root / "masks").is_dir():
            return "cell_folder"
    if (root / "kaggle_3m").is_dir():
        return "lgg"
    folders = [root, *_subfolders(root)]
    if any(_has(f, ("*_mask.tif",)) for f in folders):
        return "lgg"
    if any(_has(f, _BRATS_PATTERNS) for f in folders):
        return "brats"
    raise DataError(
        f"{root}: no known data layout (looked for an MSD/nnU-Net task with dataset.json and imagesTr/, BraTS case "
        "folders, LGG *_mask.tif slices, DSB stage1_train/, DRIVE 1st_manual/, images/ with labels/, masks/ or a COCO "
        "json); name the format with --format")


class Route(NamedTuple):
    """Where a prediction input goes (:func:`route_input`).

    Attributes:
        format: ``"ome"`` (OME-TIFF / OME-Zarr: tiled prediction,
            :mod:`pdeseg.inference.ome_predict`), ``"dicom"``, or a registered data format's name
            (the model's own; without a model, the one :func:`detect_format` names, or None when
            the layout names none).
        kind: ``"image"`` (one OME image: a ``.ome.tif`` file or an ``.ome.zarr`` folder),
            ``"file"`` or ``"folder"``.
    """

    format: str | None
    kind: str


def route_input(path: str | Path, model_format: str | None = None) -> Route:
    """Which reader a prediction input goes to, from the formats' own markers (no image is read
    whole), in this order:

    1. an OME image (``.ome.tif[f]`` file, ``.ome.zarr`` folder) or a folder holding some:
       ``("ome", "image" | "folder")``;
    2. a DICOM file, or a folder with a DICOM file among its first 64 files:
       ``("dicom", "file" | "folder")`` (a DICOM series gives any model its channels);
    3. else ``(model_format, kind)``; without ``model_format``, a folder's layout
       (:func:`detect_format`; None when it names no format).

    Args:
        path: the input file or folder.
        model_format: the data format the model reads its own cases with (its checkpoint's).

    Raises:
        DataError: nothing at ``path``.
    """
    from pdeseg.data.readers.dicom import is_dicom_folder
    from pdeseg.data.readers.ome import find_ome_images, is_ome_path

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    kind = "file" if p.is_file() else "folder"
    if is_ome_path(p):
        return Route("ome", "image")
    if kind == "folder" and find_ome_images(p):
        return Route("ome", "folder")
    if model_format != "dicom" and is_dicom_folder(p):
        return Route("dicom", kind)
    if model_format is not None or kind == "file":
        return Route(model_format, kind)
    try:
        return Route(detect_format(p), kind)
    except DataError:
        return Route(None, kind)
