"""Finding the DICOM series below a folder from the file headers (no pixel data is read).

:func:`scan_series` reads every file's header (old files without the 128-byte preamble too), leaves out DICOMDIR
index files and files that are not DICOM, and groups the rest by ``SeriesInstanceUID`` into
:class:`~pdeseg.data.readers.dicom_series.DicomSeries`, one :class:`~pdeseg.data.readers.dicom_series.Frame` per
image: per file for classic images, per frame for multi-frame files (from their per-frame or shared functional
groups). The series are not checked here: :meth:`DicomSeries.check` does that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.data.readers.dicom_series import DicomSeries, Frame
from pdeseg.errors import DataError


def _float_list(value: Any) -> list[float]:
    return [float(v) for v in value]


def _value(ds, keyword: str, default: Any = None) -> Any:
    value = ds.get(keyword, default)
    return default if value is None or value == "" else value


def _functional(ds, frame_item, sequence: str, keyword: str):
    """A functional-group attribute: the frame's own, else the shared one."""
    for groups in (frame_item, *(ds.get("SharedFunctionalGroupsSequence") or [])):
        if groups is None:
            continue
        seq = groups.get(sequence)
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _frames_of(ds, path: Path) -> list[Frame]:
    """The frames of one file (one for classic single-frame images)."""
    n = int(_value(ds, "NumberOfFrames", 1) or 1)
    uid = str(_value(ds, "SOPInstanceUID", path.name))
    rows, cols = int(_value(ds, "Rows", 0)), int(_value(ds, "Columns", 0))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    classic = None
    if per_frame is None and "SharedFunctionalGroupsSequence" not in ds:
        # a classic (multi-)frame file without functional groups: one position for all frames
        keys = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept")
        classic = tuple(_value(ds, k) for k in keys)
    frames = []
    for index in range(n):
        if classic is not None:
            pos, ori, sp, slope, inter = classic
        else:
            item = per_frame[index] if per_frame is not None and index < len(per_frame) else None
            pos = _functional(ds, item, "PlanePositionSequence", "ImagePositionPatient")
            ori = _functional(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient")
            sp = _functional(ds, item, "PixelMeasuresSequence", "PixelSpacing")
            slope = _functional(ds, item, "PixelValueTransformationSequence", "RescaleSlope")
            inter = _functional(ds, item, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(
            Frame(
                path,
                index,
                np.asarray(_float_list(pos)) if pos is not None else None,
                np.asarray(_float_list(ori)) if ori is not None else None,
                tuple(_float_list(sp)) if sp is not None else None,
                _number_or_nan(slope) if slope not in (None, "") else 1.0,
                _number_or_nan(inter) if inter not in (None, "") else 0.0,
                rows,
                cols,
                uid,
                n,
            )
        )
    return frames


def _number_or_nan(value: Any) -> float:
    """``float(value)``, or NaN for a value that is not a number (refused when the pixels are read)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _thickness(ds) -> float | None:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        value = _value(ds, key)
        if value is not None:
            try:
                return abs(float(value))
            except (TypeError, ValueError):
                continue
    value = _functional(ds, None, "PixelMeasuresSequence", "SliceThickness")
    return abs(float(value)) if value not in (None, "") else None


def _read_header(path: Path):
    """The header of a DICOM file, or None for a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        try:  # old files without the 128-byte preamble and DICM prefix
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            return None
        return ds if "SOPClassUID" in ds and "SeriesInstanceUID" in ds else None
    except Exception:
        return None


def scan_series(root: str | Path) -> tuple[list[DicomSeries], list[Path]]:
    """Group the DICOM files below ``root`` into series (headers only; no pixel data is read).

    Returns:
        ``(series sorted by study, series number and UID, files that are not DICOM)``;
        DICOMDIR index files are neither.

    Raises:
        DataError: ``root`` does not exist.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"DICOM folder not found: {root}")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    series: dict[str, DicomSeries] = {}
    others: list[Path] = []
    for path in paths:
        ds = _read_header(path)
        if ds is None:
            others.append(path)
            continue
        sop = ds.get("SOPClassUID")
        sop_name = getattr(sop, "name", str(sop)) if sop else ""
        if sop_name == "Media Storage Directory Storage" or path.name.upper() == "DICOMDIR":
            continue
        uid = str(_value(ds, "SeriesInstanceUID", f"(no SeriesInstanceUID: {path})"))
        s = series.get(uid)
        if s is None:
            s = series[uid] = DicomSeries(
                uid=uid,
                description=str(_value(ds, "SeriesDescription", "")).strip(),
                number=str(_value(ds, "SeriesNumber", "")),
                modality=str(_value(ds, "Modality", "")),
                study_uid=str(_value(ds, "StudyInstanceUID", "")),
                frame_of_reference=str(_value(ds, "FrameOfReferenceUID", "")),
                sop_class=sop_name,
                files=[],
                thickness=_thickness(ds),
                photometric=str(_value(ds, "PhotometricInterpretation", "MONOCHROME2")),
                samples_per_pixel=int(_value(ds, "SamplesPerPixel", 1)),
                patient_id=str(_value(ds, "PatientID", "")),
                study_id=str(_value(ds, "StudyID", _value(ds, "StudyDate", ""))),
            )
        elif s.sop_class != sop_name and s.sop_class.endswith("Image Storage"):
            s.sop_class = sop_name if not sop_name.endswith("Image Storage") else s.sop_class
        s.files.append(path)
        if "PixelData" in ds or sop_name.endswith("Image Storage"):
            s.frames.extend(_frames_of(ds, path))
    ordered = sorted(series.values(), key=lambda s: (s.study_uid, _number(s.number), s.uid))
    return ordered, others


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf
