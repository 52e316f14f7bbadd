"""A small DICOM series writer for the tests: a NIfTI-like volume (X, Y, Z) with a RAS affine
becomes one MR Image Storage file per slice (explicit VR little endian), slice k of the volume
in file k, with the geometry that puts voxel (i, j, k) where the affine does:

* row direction cosine r (LPS) = the affine's first column (RAS -> LPS), column cosine c = its
  second, ``PixelSpacing = [|col 1|, |col 0|]`` (row spacing, column spacing);
* ``ImagePositionPatient`` of slice k = the affine applied to (0, 0, k), in LPS;
* pixel (row j, column i) = volume[i, j, k], stored as int16 (``RescaleSlope``/``Intercept``
  when given).

Positions may be given explicitly instead (a gantry-tilted stack).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

_LPS = np.diag([-1.0, -1.0, 1.0])


def write_series(volume: np.ndarray, affine: np.ndarray, out_dir: Path, description: str, study_uid: str,
                 frame_of_reference: str, series_number: int = 1, positions: np.ndarray | None = None,
                 slope: float = 1.0, intercept: float = 0.0, patient_id: str = "PDESEG-TEST") -> dict[str, int]:
    """Write ``volume`` as a series in ``out_dir``; returns SOPInstanceUID -> slice index k."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stored = np.round((volume - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("values do not fit int16 with this rescale")
    stored = stored.astype(np.int16)
    col0, col1 = affine[:3, 0], affine[:3, 1]
    dc, dr = float(np.linalg.norm(col0)), float(np.linalg.norm(col1))
    r, c = _LPS @ (col0 / dc), _LPS @ (col1 / dr)
    series_uid = generate_uid()
    uids = {}
    for k in range(volume.shape[2]):
        p = positions[k] if positions is not None else _LPS @ (affine @ np.array([0, 0, k, 1.0]))[:3]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_of_reference
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240101", "120000", "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "MR", series_number, k + 1, description
        ds.Manufacturer = "pdeseg tests"
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*r, *c)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in p]
        ds.PixelSpacing = [f"{dr:.10g}", f"{dc:.10g}"]
        ds.SliceThickness = f"{float(np.linalg.norm(affine[:3, 2])):.10g}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(out_dir / f"IM{k:04d}.dcm", enforce_file_format=True)
        uids[ds.SOPInstanceUID] = k
    return uids


def read_seg_masks(path: Path, sop_to_k: dict[str, int], shape: tuple[int, int, int]) -> tuple[object, np.ndarray]:
    """A SEG read back with highdicom as ``(seg, masks (S, X, Y, Z))`` on the source grid: each
    source instance's frame goes to the slice the writer made it from."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    masks = np.zeros((len(numbers), *shape), dtype=np.float32)
    uids = list(sop_to_k)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True, rescale_fractional=True)
    for n, uid in enumerate(uids):
        masks[:, :, :, sop_to_k[uid]] = np.transpose(pixels[n], (2, 1, 0))
    return seg, masks
