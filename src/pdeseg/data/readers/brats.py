"""BraTS reader and validator.

Accepted layouts (a root folder of case folders, or one case folder):

* BraTS 2018-2021: ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``, labels 0/1/2/4;
* the Kaggle BraTS 2020 copy, whose case 355 label file is ``W39_1998.09.19_Segm.nii``
  (any single ``*Segm.nii[.gz]`` is taken as the label when no ``*_seg`` file exists);
* BraTS 2023: ``BraTS-GLI-xxxxx-yyy/BraTS-GLI-xxxxx-yyy{_,-}{flair,t1,t1ce,t2,seg}`` or the
  official ``-{t2f,t1n,t1c,t2w,seg}`` suffixes, labels 0/1/2/3.

Internally labels are contiguous classes 0 background, 1 NCR/NET, 2 ED, 3 ET. The label
convention (ET = 4 up to 2021, ET = 3 from 2023) is decided once per data set, from the
case naming (``BraTS-GLI-...`` ids are 2023) or stated (``data.format_options:
{label_convention: brats2023}``); a case whose label values disagree with it is an error
naming the file, never silently read in the other convention. Predictions are written
back in the data set's convention.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.readers.nifti import check_same_grid, read_volume, write_label_volume
from pdeseg.errors import DataError

log = logging.getLogger(__name__)

MODALITIES = ("flair", "t1", "t1ce", "t2")
#: Names of the internal BraTS classes, indexed by class id.
CLASS_NAMES: tuple[str, ...] = ("background", "NCR", "ED", "ET")
#: BraTS evaluation regions as unions of internal classes: WT = {1,2,4}, TC = {1,4}, ET = {4}
#: in the files' labels (ET = 3 from 2023), i.e. classes {1,2,3}, {1,3}, {3}.
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
#: HD95 (mm) the BraTS scoring assigns when exactly one of truth / prediction is empty.
HD95_ONE_EMPTY_MM: float = 373.13
_ALIASES = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
_SUFFIX = re.compile(r"[_-](flair|t1ce|t1|t2|seg|t2f|t1n|t1c|t2w)\.nii(\.gz)?$", re.IGNORECASE)
_KAGGLE_LABEL = re.compile(r"segm\.nii(\.gz)?$", re.IGNORECASE)
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)

# convention -> raw label value of each contiguous class 0..3
CONVENTIONS = {"brats2020": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}


class BratsDataError(DataError):
    """A BraTS file or folder is missing, unreadable or inconsistent; the message names it."""


@dataclass
class BratsCase:
    """Paths of one case. ``label`` is None for unlabelled (inference-only) cases."""

    case_id: str
    folder: Path
    images: dict[str, Path]
    label: Path | None = None
    convention: str = ""  # the data set's label convention (set by find_cases)
    convention_source: str = "its file naming"

    @property
    def naming_convention(self) -> str:
        """Label convention implied by the file naming (2023 uses ``BraTS-XXX-`` ids)."""
        return "brats2023" if re.match(r"BraTS-[A-Z]+-", self.case_id) else "brats2020"

    def source_files(self, modalities: tuple[str, ...] | list[str] = MODALITIES) -> list[Path]:
        """The files a cache entry of these modalities depends on."""
        return [self.images[m] for m in modalities] + ([self.label] if self.label else [])

    def load(self, modalities: tuple[str, ...] | list[str] = MODALITIES, with_label: bool = True) -> LoadedCase:
        return load_case(self, modalities, with_label)


def _case_files(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    found: dict[str, list[Path]] = {}
    kaggle_labels = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not _NIFTI.search(path.name):
            continue
        m = _SUFFIX.search(path.name)
        if m:
            key = m.group(1).lower()
            found.setdefault(_ALIASES.get(key, key), []).append(path)
        elif _KAGGLE_LABEL.search(path.name):
            kaggle_labels.append(path)
    return found, kaggle_labels


def _case_from_folder(folder: Path, modalities: tuple[str, ...], require_label: bool) -> BratsCase:
    found, kaggle_labels = _case_files(folder)
    images = {}
    for mod in modalities:
        paths = found.get(mod, [])
        if not paths:
            present = ", ".join(sorted(found)) or "no NIfTI files"
            raise BratsDataError(
                f"{folder}: missing modality {mod!r} (expected a file ending in _{mod}.nii or _{mod}.nii.gz; "
                f"found: {present})"
            )
        if len(paths) > 1:
            raise BratsDataError(f"{folder}: several files for modality {mod!r}: {', '.join(p.name for p in paths)}")
        images[mod] = paths[0]
    labels = found.get("seg", []) or kaggle_labels
    if len(labels) > 1:
        raise BratsDataError(f"{folder}: several label files: {', '.join(p.name for p in labels)}")
    if require_label and not labels:
        raise BratsDataError(f"{folder}: no label file (expected <case>_seg.nii[.gz])")
    return BratsCase(folder.name, folder, images, labels[0] if labels else None)


def find_cases(
    root: str | Path,
    modalities: tuple[str, ...] | list[str] = MODALITIES,
    require_label: bool = True,
    label_convention: str | None = None,
    skipped: dict[str, str] | None = None,
) -> list[BratsCase]:
    """List the cases under ``root`` (a folder of case folders, or a single case folder).

    Args:
        label_convention: ``brats2020`` or ``brats2023`` for the whole data set; default:
            from the case naming (all ``BraTS-XXX-`` ids: 2023; none: 2020; a mix is an error).
        skipped: when given, a case folder that lacks a modality or label (or holds several
            files for one) is left out and recorded here (folder name -> reason) instead of
            stopping the listing.

    Raises:
        BratsDataError: the folder is missing or holds no cases, (without ``skipped``) a
            case lacks a modality/label, or the naming mixes conventions and none is stated.
    """
    root = Path(root).expanduser()
    modalities = tuple(modalities)
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise BratsDataError(f"unknown modality {unknown}; BraTS modalities are {', '.join(MODALITIES)}")
    if not root.is_dir():
        raise BratsDataError(f"data folder not found: {root}")
    own, _ = _case_files(root)
    if own:  # root itself is a case folder
        folders = [root]
    else:
        folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
                   and any(_NIFTI.search(c.name) for c in p.iterdir())]
    cases = []
    for folder in folders:
        try:
            cases.append(_case_from_folder(folder, modalities, require_label))
        except BratsDataError as exc:
            if skipped is None:
                raise
            skipped[folder.name] = str(exc)
    if not cases and not skipped:
        raise BratsDataError(f"{root}: no BraTS cases found (expected case folders holding <case>_<modality>.nii[.gz] files)")
    return _with_convention(cases, root, label_convention)


def _with_convention(cases: list[BratsCase], root: Path, stated: str | None) -> list[BratsCase]:
    """Give every case the data set's label convention (stated, or from the naming)."""
    if stated is not None:
        if stated not in CONVENTIONS:
            raise BratsDataError(f"unknown BraTS label convention {stated!r}; use one of {', '.join(CONVENTIONS)}")
        convention, source = stated, "stated in the config"
    else:
        named = {c.naming_convention for c in cases}
        if len(named) > 1:
            examples = {n: next(c.case_id for c in cases if c.naming_convention == n) for n in sorted(named)}
            raise BratsDataError(f"{root}: case names mix BraTS 2018-2021 ({examples['brats2020']}) and 2023 ({examples['brats2023']}) "
                                 "conventions; split the folder, or state data.format_options: {label_convention: brats2020|brats2023}")
        convention, source = named.pop(), "its file naming"
    for case in cases:
        case.convention, case.convention_source = convention, source
    return cases


def _read(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    return read_volume(path, BratsDataError)


def check_convention(raw_label: np.ndarray, case: BratsCase, path: Path) -> str:
    """The data set's convention for this case, after checking the label values agree with it.

    Raises:
        BratsDataError: values outside BraTS labels, or values of the other convention.
    """
    convention = case.convention or case.naming_convention
    values = set(np.unique(raw_label).tolist())
    if not values <= {0, 1, 2, 3, 4}:
        bad = sorted(values - {0, 1, 2, 3, 4})
        raise BratsDataError(f"{path}: unexpected label values {bad[:10]} (BraTS labels are 0, 1, 2 and 4, or 3 from 2023)")
    foreign = sorted(values - set(CONVENTIONS[convention]))
    if foreign:
        other = "brats2023" if convention == "brats2020" else "brats2020"
        raise BratsDataError(
            f"{path}: holds label {foreign[0]}, which {convention} (ET = {CONVENTIONS[convention][3]}, this data set's convention "
            f"from {case.convention_source or 'its file naming'}) does not use; if this data set uses {other} labels, state "
            f"data.format_options: {{label_convention: {other}}}, else fix this case's label file")
    return convention


def labels_to_classes(raw: np.ndarray, convention: str) -> np.ndarray:
    """Map raw BraTS labels to contiguous classes 0..3 (uint8)."""
    lut = np.zeros(max(CONVENTIONS[convention]) + 1, dtype=np.uint8)
    for cls, value in enumerate(CONVENTIONS[convention]):
        lut[value] = cls
    return lut[raw.astype(np.int64)]


def classes_to_labels(classes: np.ndarray, convention: str) -> np.ndarray:
    """Map contiguous classes 0..3 back to the raw labels of ``convention`` (uint8)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    return np.asarray(CONVENTIONS[convention], dtype=np.uint8)[classes]


def load_case(case: BratsCase, modalities: tuple[str, ...] | list[str] = MODALITIES, with_label: bool = True) -> LoadedCase:
    """Read and validate one case.

    Args:
        with_label: also read the label file (when the case has one). Prediction passes
            False: it needs no label, so a broken label file cannot stop it, and the label
            convention then follows the case's naming (BraTS-GLI-... 2023: ET = 3, else 4).

    Raises:
        BratsDataError: unreadable file, shape or affine mismatch between files, NaN/inf
        voxels, non-integer or unexpected label values.
    """
    modalities = tuple(modalities)
    volumes, ref_img, ref_path = [], None, None
    for mod in modalities:
        path = case.images[mod]
        img, data = _read(path)
        if not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise BratsDataError(f"{path}: {bad} NaN/inf voxels; fix or remove this case")
        if ref_img is None:
            ref_img, ref_path = img, path
        else:
            _check_geometry(ref_img, ref_path, img, path, data.shape)
        volumes.append(data)
    image = np.stack(volumes)
    label, convention = None, case.convention or case.naming_convention
    if with_label and case.label is not None:
        img, raw = _read(case.label)
        _check_geometry(ref_img, ref_path, img, case.label, raw.shape)
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise BratsDataError(f"{case.label}: label file holds non-integer or NaN values")
        raw = raw.astype(np.int32)
        convention = check_convention(raw, case, case.label)
        label = labels_to_classes(raw, convention)
    return LoadedCase(case, image, label, ref_img.affine.copy(), ref_img.header.copy(), convention, modalities)


def _check_geometry(ref_img, ref_path: Path, img, path: Path, shape: tuple[int, ...]) -> None:
    check_same_grid(ref_img, ref_path, img, path, shape, BratsDataError)


def write_segmentation(classes: np.ndarray, loaded: LoadedCase, path: str | Path, convention: str | None = None) -> Path:
    """Write contiguous classes as a BraTS label volume with the input's affine and header.

    Args:
        classes: ``(X, Y, Z)`` classes 0..3.
        loaded: the input case (geometry and default label convention).
        path: the ``.nii.gz`` file to write.
        convention: ``brats2020`` (ET = 4) or ``brats2023`` (ET = 3); default: the input's.

    Returns:
        ``path``, written atomically (temporary name in its folder, then renamed).
    """
    return write_label_volume(classes_to_labels(classes, convention or loaded.convention), loaded, path)
