"""Reader for the Kaggle LGG brain MRI set (Buda et al. 2019; paper 002's data).

Layout (``kaggle_3m``)::

    kaggle_3m/
      TCGA_CS_4941_19960909/
        TCGA_CS_4941_19960909_1.tif          RGB slice: pre-contrast, FLAIR, post-contrast
        TCGA_CS_4941_19960909_1_mask.tif     mask, 0 = background, 255 = abnormality
        TCGA_CS_4941_19960909_2.tif ...

One patient folder is one case. Slices are ordered by their number (``_10`` after
``_9``) and stacked along the last axis, so a case looks like a BraTS volume: image
``(3, H, W, Z)`` and binary classes ``(H, W, Z)`` (0 background, 1 abnormality). The
pixel spacing is not stored in the TIFFs, so distances (HD95) are in pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.errors import DataError

#: The three channels of every RGB slice, in order.
MODALITIES = ("pre", "flair", "post")
_SLICE = re.compile(r"^(?P<case>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


class LggDataError(DataError):
    """An LGG file or folder is missing, unreadable or inconsistent; the message names it."""


@dataclass
class LggCase:
    """Ordered slice files of one patient. ``masks`` is None for unlabelled cases."""

    case_id: str
    folder: Path
    images: list[Path]
    masks: list[Path] | None = None
    numbers: tuple[int, ...] = ()

    def source_files(self, modalities=MODALITIES) -> list[Path]:
        return self.images + (self.masks or [])

    def load(self, modalities=MODALITIES, with_label: bool = True) -> LoadedCase:
        return load_lgg_case(self, modalities, with_label)


def _case_from_folder(folder: Path, require_label: bool) -> LggCase | None:
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".tif", ".tiff"):
            continue
        m = _SLICE.match(path.name)
        if not m or m["case"] != folder.name:
            raise LggDataError(
                f"{path}: unexpected file name; slices of {folder.name} must be named "
                f"{folder.name}_<n>.tif and {folder.name}_<n>_mask.tif"
            )
        (masks if m["mask"] else images)[int(m["n"])] = path
    if not images and not masks:
        return None
    numbers = sorted(images)
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise LggDataError(f"{masks[orphans[0]]}: mask without its image {folder.name}_{orphans[0]}.tif")
    gaps = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    if gaps:
        raise LggDataError(f"{folder}: slice {folder.name}_{gaps[0]}.tif is missing (slices are numbered 1..{max(numbers)})")
    missing = [n for n in numbers if n not in masks]
    if missing and (require_label or masks):
        raise LggDataError(f"{folder}: no mask {folder.name}_{missing[0]}_mask.tif for slice {images[missing[0]].name}")
    return LggCase(folder.name, folder, [images[n] for n in numbers], [masks[n] for n in numbers] if masks else None, tuple(numbers))


def find_lgg_cases(root: str | Path, modalities=MODALITIES, require_label: bool = True,
                   skipped: dict[str, str] | None = None) -> list[LggCase]:
    """Patient folders under ``root`` (``kaggle_3m``, its parent, or one patient folder).

    Args:
        skipped: when given, a patient folder with unexpected file names or missing slices
            or masks is left out and recorded here (folder name -> reason) instead of
            stopping the listing.

    Raises:
        LggDataError: missing folder or no patients, or (without ``skipped``) unexpected
            file names, missing slices or masks.
    """
    check_modalities(modalities)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LggDataError(f"data folder not found: {root}")
    if (root / "kaggle_3m").is_dir():
        root = root / "kaggle_3m"
    if any(p.suffix.lower() in (".tif", ".tiff") for p in root.iterdir()):  # one patient folder
        folders = [root]
    else:
        folders = [f for f in sorted(root.iterdir()) if f.is_dir() and not f.name.startswith(".")]
    cases = []
    for folder in folders:
        try:
            case = _case_from_folder(folder, require_label)
        except LggDataError as exc:
            if skipped is None:
                raise
            skipped[folder.name] = str(exc)
            continue
        if case is not None:
            cases.append(case)
    if not cases and not skipped:
        raise LggDataError(f"{root}: no LGG cases found (expected patient folders holding <patient>_<n>.tif and <patient>_<n>_mask.tif)")
    return cases


def check_modalities(modalities) -> tuple[int, ...]:
    """Channel indices of ``modalities`` in the RGB slices."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise LggDataError(f"unknown modality {unknown}; the LGG slices hold {', '.join(MODALITIES)}")
    return tuple(MODALITIES.index(m) for m in modalities)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        data = np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises several types for corrupt/truncated files
        raise LggDataError(f"{path}: cannot read TIFF file ({type(exc).__name__}: {exc})") from exc
    if data.size == 0:  # tifffile only warns about some broken headers
        raise LggDataError(f"{path}: cannot read TIFF file (no image data: truncated or corrupt)")
    return data


def _read_slice(path: Path) -> np.ndarray:
    data = _read_tiff(path)
    if data.ndim != 3 or data.shape[-1] != 3:
        raise LggDataError(f"{path}: expected an RGB slice (H, W, 3), got shape {data.shape}")
    if not np.isfinite(data).all():
        raise LggDataError(f"{path}: NaN/inf pixels")
    return data


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    data = _read_tiff(path)
    if data.ndim == 3 and data.shape[-1] in (3, 4):  # some tools save masks as RGB
        data = data[..., 0]
    if data.shape != shape:
        raise LggDataError(f"{path}: mask shape {data.shape} differs from its image {shape}")
    values = set(np.unique(data).tolist())
    if not values <= {0, 255}:
        raise LggDataError(f"{path}: unexpected mask values {sorted(values - {0, 255})[:10]}; LGG masks hold 0 and 255")
    return (data == 255).astype(np.uint8)


def load_lgg_case(case: LggCase, modalities=MODALITIES, with_label: bool = True) -> LoadedCase:
    """Read one patient: image ``(C, H, W, Z)`` float32 in the 0..255 range, classes ``(H, W, Z)``.

    Args:
        with_label: also read the masks (when the case has them); prediction passes False.

    Raises:
        LggDataError: unreadable file, non-RGB slice, size mismatch between slices or
            with a mask, NaN pixels, mask values other than 0 and 255.
    """
    channels = check_modalities(modalities)
    slices, labels, shape = [], [], None
    for i, path in enumerate(case.images):
        data = _read_slice(path)
        if shape is None:
            shape = data.shape[:2]
        elif data.shape[:2] != shape:
            raise LggDataError(f"{path}: slice size {data.shape[:2]} differs from {case.images[0].name} {shape}")
        slices.append(data[..., list(channels)].astype(np.float32))
        if with_label and case.masks is not None:
            labels.append(_read_mask(case.masks[i], shape))
    image = np.stack(slices, axis=-1).transpose(2, 0, 1, 3)  # (C, H, W, Z)
    label = np.stack(labels, axis=-1) if labels else None
    header = nib.Nifti1Header()
    header.set_data_shape(image.shape[1:])
    header.set_zooms((1.0, 1.0, 1.0))
    return LoadedCase(case, image, label, np.eye(4), header, "binary", tuple(modalities))
