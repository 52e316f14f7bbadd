"""Writing predictions of DICOM input back as DICOM Segmentation objects (highdicom).

One SEG per case, derived from the case's reference series (its first channel): it carries
the series' study, patient and frame of reference, references every source SOP instance,
and holds one frame per source frame with a segmented voxel, on the source's own rows,
columns and frames (a tilted stack that was resampled for the model gets its labels moved
back onto the acquired slices, nearest neighbour). Segments:

* ``binary``: one segment per foreground class (``classes == k``), or per region for models
  with a region head (BraTS WT/TC/ET);
* ``fractional``: the same segments holding the class (or region) probability, stored as
  ``round(255 p)`` (``FractionalType`` PROBABILITY).

Each segment has the class name as label, pdeseg as the algorithm, and a SNOMED CT concept
where one fits the name (:func:`segment_codes`; ``Tissue`` otherwise). The NIfTI label map
(input geometry, RAS affine) can be written beside it (``output_format=both``) or instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.files import write_atomically
from pdeseg.data.outputs import DICOM_MANUFACTURER
from pdeseg.errors import DataError

#: ``predict --output-format`` for DICOM input.
OUTPUT_FORMATS = ("dicom-seg", "nifti", "both")
#: ``predict --seg-type``.
SEG_TYPES = ("binary", "fractional")


@dataclass(frozen=True)
class Segment:
    """One SEG segment: ``label`` (the class or region name) covering ``classes``."""

    label: str
    classes: tuple[int, ...]


def segments_for(class_names: Sequence[str], regions: Mapping[str, Sequence[int]] | None = None,
                 output: str = "softmax") -> list[Segment]:
    """The segments of a task: one per foreground class, or per region for region heads."""
    if output == "regions" and regions:
        return [Segment(name, tuple(int(c) for c in cls)) for name, cls in regions.items()]
    return [Segment(str(name), (k,)) for k, name in enumerate(class_names) if k > 0]


_CODES = (  # (words in a class name, property category, property type), first match wins
    (("necrosis", "necrotic", "ncr"), "MorphologicallyAbnormalStructure", "Necrosis"),
    (("edema", "oedema", "ed"), "MorphologicallyAbnormalStructure", "Edema"),
    (("enhancing", "et", "tumour", "tumor", "wt", "tc", "neoplasm", "cancer"), "MorphologicallyAbnormalStructure", "Neoplasm"),
    (("lesion",), "MorphologicallyAbnormalStructure", "Lesion"),
    (("hippocampus", "liver", "spleen", "kidney", "pancreas", "prostate"), "AnatomicalStructure", None),
    (("vessel", "vessels"), "AnatomicalStructure", "BloodVessel"),
    (("nucleus", "nuclei"), "AnatomicalStructure", "Nucleus"),
    (("cell", "cells"), "AnatomicalStructure", "Cell"),
)


def segment_codes(name: str):
    """``(category, type)`` SNOMED CT codes for a class named ``name`` (``Tissue`` twice
    when no concept fits)."""
    from pydicom.sr.codedict import codes

    words = {w for w in "".join(ch.lower() if ch.isalnum() else " " for ch in name).split()}
    for keys, category, kind in _CODES:
        hit = next((k for k in keys if k in words), None)
        if hit:
            return getattr(codes.SCT, category), getattr(codes.SCT, kind or hit.capitalize())
    return codes.SCT.Tissue, codes.SCT.Tissue


def output_paths(case, out_dir: Path, output_format: str = "dicom-seg", seg_type: str | None = None) -> list[Path]:
    """Files written for ``case``: ``<case>.seg.dcm`` and/or ``<case>_seg.nii.gz``."""
    out = []
    if output_format in ("dicom-seg", "both"):
        out.append(Path(out_dir) / f"{case.case_id}.seg.dcm")
    if output_format in ("nifti", "both"):
        out.append(Path(out_dir) / f"{case.case_id}_seg.nii.gz")
    return out


def write_prediction(classes: np.ndarray, loaded: LoadedCase, out_dir: Path, output_format: str = "dicom-seg",
                     seg_type: str = "binary", segments: Sequence[Segment] | None = None,
                     probabilities: np.ndarray | None = None, description: str = "pdeseg") -> Path:
    """Write a prediction of a DICOM case.

    Args:
        classes: ``(X, Y, Z)`` class ids on the case's grid.
        loaded: the case as read (its ``case`` is a :class:`~pdeseg.data.readers.dicom.DicomCase`).
        output_format: ``dicom-seg``, ``nifti`` or ``both``.
        seg_type: ``binary`` or ``fractional`` (needs ``probabilities``).
        segments: default: one per foreground class present in the numbering ``1..max``.
        probabilities: ``(K, X, Y, Z)`` class probabilities (fractional SEG).
        description: the SEG's series description and algorithm name.

    Returns:
        the first file written (the SEG when there is one).
    """
    from pdeseg.data.readers.nifti import write_label_volume

    paths = output_paths(loaded.case, out_dir, output_format)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    segments = list(segments) if segments else [Segment(f"class {k}", (k,)) for k in range(1, max(int(classes.max()), 1) + 1)]
    for path in paths:
        if path.name.endswith(".seg.dcm"):
            seg = build_seg(classes, loaded, segments, seg_type, probabilities, description)
            write_atomically(path, lambda tmp, seg=seg: seg.save_as(tmp))
        else:
            write_label_volume(classes, loaded, path)
    return paths[0]


def _source_order(series) -> tuple[list, list[tuple[int, int]]]:
    """The source datasets (headers) and, per volume slice ``k``, ``(dataset index, frame index)``."""
    import pydicom

    datasets, where, index = [], [], {}
    for frame in series.frames:
        if frame.path not in index:
            index[frame.path] = len(datasets)
            ds = _with_type2(pydicom.dcmread(frame.path, stop_before_pixels=True))
            if frame.number_of_frames == 1 and "SliceThickness" not in ds:  # highdicom copies it into the SEG
                ds.SliceThickness = round(float(series.thickness or series.geometry()[1][2]), 6)
            if frame.number_of_frames > 1 and "SharedFunctionalGroupsSequence" not in ds:
                _add_shared_groups(ds)
            datasets.append(ds)
        where.append((index[frame.path], frame.index))
    return datasets, where


def build_seg(classes: np.ndarray, loaded: LoadedCase, segments: Sequence[Segment], seg_type: str = "binary",
              probabilities: np.ndarray | None = None, description: str = "pdeseg"):
    """The ``highdicom.seg.Segmentation`` of ``classes`` (or ``probabilities``) on the grid of
    ``loaded``'s reference series (see the module docstring).

    Raises:
        DataError: fractional without probabilities, or the case is not a DICOM case.
    """
    import highdicom as hd

    from pdeseg import __version__
    from pdeseg.data.readers.dicom_series import resample_tilt

    series = getattr(loaded.case, "reference", None)
    if series is None:
        raise DataError(f"{loaded.case.case_id}: DICOM-SEG needs DICOM input (the case's source series)")
    if seg_type == "fractional":
        if probabilities is None:
            raise DataError("a fractional SEG needs the class probabilities")
        maps = np.stack([probabilities[list(s.classes)].sum(0) for s in segments], -1).astype(np.float32)
        maps = np.clip(maps, 0.0, 1.0)
    else:
        maps = np.stack([np.isin(classes, s.classes) for s in segments], -1).astype(np.uint8)
    if series.resampled:  # back from the orthogonal grid onto the acquired (tilted) slices
        shifts = -series.inplane_shifts()
        order = 1 if seg_type == "fractional" else 0
        maps = np.stack([resample_tilt(maps[..., s].astype(np.float32), shifts, order, 0.0) for s in range(maps.shape[-1])], -1)
        maps = maps.astype(np.float32) if seg_type == "fractional" else (maps > 0.5).astype(np.uint8)
    datasets, where = _source_order(series)
    multiframe = len(datasets) == 1 and series.frames[0].number_of_frames > 1
    n_out = series.frames[0].number_of_frames if multiframe else len(datasets)
    pixels = np.zeros((n_out, series.frames[0].rows, series.frames[0].columns, len(segments)), dtype=maps.dtype)
    for k, (d, f) in enumerate(where):
        pixels[f if multiframe else d] = np.transpose(maps[:, :, k], (1, 0, 2))
    algorithm = hd.AlgorithmIdentificationSequence(name=description, version=__version__, family=_ai_family())
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        category, kind = segment_codes(segment.label)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.label[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    src = datasets[0]
    _, zooms = series.geometry()
    thickness = series.thickness or zooms[2]  # the source's own, else the stack's spacing
    measures = hd.PixelMeasuresSequence(pixel_spacing=list(series.frames[0].spacing), slice_thickness=float(thickness),
                                        spacing_between_slices=float(zooms[2]) if len(series.frames) > 1 else None)
    kwargs = {"pixel_measures": measures}
    if seg_type == "fractional":
        kwargs |= {"fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY, "max_fractional_value": 255}
    try:
        return hd.seg.Segmentation(
            source_images=datasets, pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if seg_type == "fractional"
            else hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_series_number(src),
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=DICOM_MANUFACTURER, manufacturer_model_name=description[:64],
            software_versions=__version__, device_serial_number="0", series_description=f"{description} segmentation"[:64],
            content_description=f"{description} prediction"[:64], content_creator_name="pdeseg^", **kwargs)
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{series.label}: cannot derive a DICOM-SEG from it ({exc})") from None


#: Patient and study attributes a SEG must carry (type 2: present, possibly empty); anonymised
#: sources often drop them, and the SEG then gets them empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2(ds):
    """The source header (in memory only) with the type 2 attributes it lacks added empty."""
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _add_shared_groups(ds) -> None:
    """An enhanced multi-frame header (in memory) without the shared functional groups it must
    have gets them from its first frame's pixel measures and plane orientation (which the reader
    checked are the same in every frame)."""
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    first = ds.PerFrameFunctionalGroupsSequence[0]
    shared = Dataset()
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword in first:
            setattr(shared, keyword, copy.deepcopy(first[keyword].value))
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])


def _ai_family():
    from pydicom.sr.codedict import codes

    return codes.cid7162.ArtificialIntelligence


def _series_number(src) -> int:
    try:
        return int(src.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000
