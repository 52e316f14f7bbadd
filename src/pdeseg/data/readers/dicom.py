"""Reader for DICOM image series (pydicom): a folder of files in, volumes with their geometry out.

A folder (searched recursively) is grouped into series by ``SeriesInstanceUID``. Each image
series becomes one volume; the geometry comes only from ``ImagePositionPatient``,
``ImageOrientationPatient`` and ``PixelSpacing`` (per frame for enhanced multi-frame
files), never from ``SliceThickness``, ``InstanceNumber`` or the order of the files.

Convention (the same as the NIfTI readers', so a series is a case like any other):

* voxel order ``(i, j, k)``: ``i`` the column index (along the row direction cosine ``r``),
  ``j`` the row index (along the column direction cosine ``c``), ``k`` the slice;
  ``volume[:, :, k] = pixel_array(slice k).T``;
* slices are sorted by their position along the stack normal ``n = r x c``
  (``d_k = p_k . n``), and the stack runs towards increasing patient coordinate on the patient
  axis (L, P or S) that its step ``s`` follows most closely (``argmax |s|`` positive in
  DICOM's LPS frame). On every evenly spaced stack this is the order dicom2nifti's generic
  converter writes;
* the affine is nibabel's RAS+ one (NIfTI sform), from DICOM's LPS patient frame::

      A = diag(-1, -1, 1, 1) @ [[r * dc, c * dr, s, p_0], [0, 0, 0, 1]]

  with ``dr, dc = PixelSpacing`` (row spacing, column spacing), ``p_0`` the first slice's
  ``ImagePositionPatient`` and ``s = (p_last - p_0) / (n - 1)`` the mean step between slices
  (a one-slice series: ``n`` times ``SpacingBetweenSlices`` or ``SliceThickness``, else 1 mm,
  the only place those tags are read);
* intensities are ``stored * RescaleSlope + RescaleIntercept`` as float32 (CT in Hounsfield
  units), per frame for multi-frame files.

What a series must be, else :class:`DicomSeriesError` names the series and what is wrong:
an image storage SOP class; one orientation; one size and pixel spacing; distinct slice
positions; one slice, or at least :data:`MIN_SLICES`; even spacing along the normal (a gap
names the missing position); slices stacked along the normal (gantry tilt, unless
``gantry_tilt="resample"``, which shifts each slice in-plane onto an orthogonal grid by linear
interpolation, see :func:`resample_tilt`); decodable pixel data (compressed transfer syntaxes
through pydicom's pixel-data handlers: pylibjpeg with its libjpeg and openjpeg plug-ins, or
Pillow).

A study whose series are a model's channels (BraTS: FLAIR, T1, T1ce, T2) is one case: each
channel takes the series whose ``SeriesDescription`` matches that channel's patterns
(:data:`DEFAULT_SERIES_RULES`, or ``series`` rules from the config / command line), and the
channels must share one grid.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.errors import ConfigError, DataError
from pdeseg.logs import library_logs_at_debug

log = logging.getLogger(__name__)

#: A stack needs at least this many slices (a single image is read as a one-slice volume):
#: with two slices there is one gap, so a missing slice or a scout pair cannot be told from a
#: volume.
MIN_SLICES = 3
#: ``gantry_tilt`` read option: refuse a tilted stack, or resample it onto an orthogonal grid.
TILT_MODES = ("refuse", "resample")
#: Two orientations (direction cosines) or spacings differing by less than this are the same.
ORIENTATION_TOLERANCE = 1e-4
#: A stack is tilted when a slice's in-plane offset from the normal through the first slice
#: exceeds this share of a pixel.
TILT_TOLERANCE_PIXELS = 0.01
#: Slice gaps may differ from their median by this share (and 0.01 mm) before the spacing is uneven.
SPACING_TOLERANCE = 0.01

#: ``SeriesDescription`` patterns (``fnmatch``, case-insensitive) of the BraTS channels, tried
#: in this order (a series goes to the first channel that matches it: T1 post-contrast before
#: T1, FLAIR before T2).
DEFAULT_SERIES_RULES: dict[str, tuple[str, ...]] = {
    "t1ce": ("*t1*ce*", "*t1*c+*", "*t1*gd*", "*t1*post*", "*t1*contrast*", "*t1c", "*t1c_*", "*t1c *", "*t1-c*"),
    "flair": ("*flair*", "*t2f*", "*t2-f*", "*t2_f*"),
    "t2": ("*t2*",),
    "t1": ("*t1*", "*mprage*", "*spgr*"),
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class DicomSeriesError(DataError):
    """A DICOM series that cannot be read as one volume; the message names the series."""


def _float_list(value: Any) -> list[float]:
    return [float(v) for v in value]


@dataclass
class Frame:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file.

    Attributes:
        path: the file.
        index: frame number within the file (0-based; 0 for single-frame files).
        position: ``ImagePositionPatient`` (LPS, mm).
        orientation: ``ImageOrientationPatient`` (row cosine, column cosine).
        spacing: ``PixelSpacing`` (row spacing, column spacing) in mm.
        slope, intercept: the rescale of the stored values.
        sop_instance_uid: of the file the frame is in.
    """

    path: Path
    index: int
    position: np.ndarray
    orientation: np.ndarray
    spacing: tuple[float, float]
    slope: float
    intercept: float
    rows: int
    columns: int
    sop_instance_uid: str
    number_of_frames: int = 1


@dataclass
class DicomSeries:
    """The files of one ``SeriesInstanceUID`` and what their headers say.

    Attributes:
        uid, description, number, modality, study_uid, frame_of_reference: the series' tags.
        patient_id, study_id: ``PatientID`` and ``StudyID`` (or ``StudyDate``), for readable case names.
        sop_class: its SOP class name (``MR Image Storage``, ...).
        files: the files, sorted by name.
        frames: the images in stack order (after :meth:`check`).
        thickness: ``SpacingBetweenSlices`` or ``SliceThickness`` (used for one-slice series only).
    """

    uid: str
    description: str
    number: str
    modality: str
    study_uid: str
    frame_of_reference: str
    sop_class: str
    files: list[Path]
    frames: list[Frame] = field(default_factory=list)
    patient_id: str = ""
    study_id: str = ""
    thickness: float | None = None
    photometric: str = "MONOCHROME2"
    samples_per_pixel: int = 1
    tilt_degrees: float = 0.0
    resampled: bool = False
    _checked: bool = False

    @property
    def label(self) -> str:
        """How messages name the series: number, description, folder and UID."""
        desc = f" {self.description!r}" if self.description else ""
        folder = self.files[0].parent if self.files else "?"
        return f"series {self.number or '?'}{desc} in {folder} (SeriesInstanceUID {self.uid})"

    def error(self, what: str) -> DicomSeriesError:
        return DicomSeriesError(f"{self.label}: {what}")

    # ------------------------------------------------------------------------------ geometry

    def check(self, gantry_tilt: str = "refuse") -> None:
        """Check that the series is one volume and sort its frames into stack order.

        Raises:
            DicomSeriesError: see the module docstring (one line naming the series).
        """
        if self._checked:
            return
        if not self.sop_class:
            raise self.error(f"{self.files[0].name}: its header has no SOPClassUID (the file is cut short, or is not a "
                             "DICOM image)")
        if not self.sop_class.endswith("Image Storage"):
            raise self.error(f"SOP class {self.sop_class!r} is not an image storage class (no volume to read)")
        if self.samples_per_pixel != 1:
            raise self.error(f"{self.samples_per_pixel} samples per pixel ({self.photometric}); only greyscale "
                             "images are volumes")
        frames = self.frames
        if not frames:
            raise self.error("holds no image frames")
        missing = [f for f in frames if f.position is None or f.orientation is None or f.spacing is None]
        if missing:
            raise self.error(f"{missing[0].path.name}: no ImagePositionPatient, ImageOrientationPatient or PixelSpacing "
                             "(a projection image or secondary capture cannot be placed in 3D)")
        bad = next((f for f in frames if len(f.spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in f.spacing)), None)
        if bad is not None:
            raise self.error(f"PixelSpacing {list(bad.spacing)} in {_frame_name(bad)}: must be two sizes > 0 mm (row "
                             "spacing, column spacing); the header is corrupt")
        orientations = _distinct([f.orientation for f in frames])
        if len(orientations) > 1:
            counts = ", ".join(f"{n} image(s) with {np.round(o, 4).tolist()}" for o, n in orientations)
            raise self.error(f"mixed orientations: {len(orientations)} different ImageOrientationPatient values "
                             f"({counts}); a volume has one")
        sizes = sorted({(f.rows, f.columns) for f in frames})
        if len(sizes) > 1:
            raise self.error(f"mixed image sizes (rows x columns): {', '.join(f'{r}x{c}' for r, c in sizes)}")
        spacings = _distinct([np.asarray(f.spacing) for f in frames])
        if len(spacings) > 1:
            raise self.error(f"mixed PixelSpacing: {', '.join(str(np.round(s, 4).tolist()) for s, _ in spacings)}")
        r, c = frames[0].orientation[:3], frames[0].orientation[3:]
        normal = np.cross(r, c)
        if not math.isclose(float(np.linalg.norm(normal)), 1.0, abs_tol=1e-3):
            raise self.error(f"ImageOrientationPatient {frames[0].orientation.tolist()} is not two orthogonal unit vectors")
        normal = normal / np.linalg.norm(normal)
        depth = np.array([f.position @ normal for f in frames])
        order = np.argsort(depth, kind="stable")
        frames, depth = [frames[i] for i in order], depth[order]
        gaps = np.diff(depth)
        same = np.flatnonzero(gaps < 1e-3)
        if same.size:
            n_same = len({id(frames[i]) for k in same for i in (k, k + 1)})
            where = np.round(frames[same[0]].position, 3).tolist()
            raise self.error(f"not a volume: {n_same} of its {len(frames)} images lie at the same position (e.g. {where}: "
                             f"{_frame_name(frames[same[0]])}, {_frame_name(frames[same[0] + 1])}); repeated or "
                             "time-series images")
        if 1 < len(frames) < MIN_SLICES:
            raise self.error(f"too few slices: {len(frames)} (a stack needs at least {MIN_SLICES} to check its spacing; "
                             "a single image is read as one slice)")
        if len(frames) >= MIN_SLICES:
            step = float(np.median(gaps))
            odd = np.flatnonzero(np.abs(gaps - step) > max(SPACING_TOLERANCE * step, 0.01))
            if odd.size:
                k = int(odd[0])
                a, b = frames[k], frames[k + 1]
                ratio = gaps[k] / step
                if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.1:
                    missing_at = [np.round(a.position + (b.position - a.position) * m / round(ratio), 3).tolist()
                                  for m in range(1, round(ratio))]
                    what = f"{round(ratio) - 1} slice(s) missing at {'; '.join(map(str, missing_at))}"
                else:
                    what = "uneven slice spacing"
                raise self.error(f"{what}: the gap between {_frame_name(a)} and {_frame_name(b)} is {gaps[k]:.3f} mm along "
                                 f"the stack normal, the others {step:.3f} mm ({odd.size} uneven gap(s))")
        if len(frames) > 1:
            offsets = np.array([f.position - frames[0].position for f in frames])
            inplane = offsets - np.outer(offsets @ normal, normal)
            worst = float(np.linalg.norm(inplane, axis=1).max())
            if worst > TILT_TOLERANCE_PIXELS * min(frames[0].spacing):
                total = float(depth[-1] - depth[0])
                self.tilt_degrees = math.degrees(math.atan2(worst, total))
                if gantry_tilt != "resample":
                    raise self.error(f"gantry tilt: the slices are offset in-plane from the stack normal by "
                                     f"{self.tilt_degrees:.2f} degrees ({worst:.2f} mm over the stack); pass "
                                     "gantry_tilt=resample (predict --gantry-tilt resample) to resample it onto an "
                                     "orthogonal grid")
                self.resampled = True
        if _stack_reversed(frames, normal, self.thickness):
            frames = frames[::-1]
        self.frames = frames
        self._checked = True

    def geometry(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        """RAS+ affine and voxel size ``(dc, dr, |s|)`` of the volume (after :meth:`check`);
        for a resampled tilted stack, of the orthogonal grid."""
        f0 = self.frames[0]
        r, c = f0.orientation[:3], f0.orientation[3:]
        dr, dc = f0.spacing
        normal = np.cross(r, c)
        normal /= np.linalg.norm(normal)
        if len(self.frames) > 1:
            step = (self.frames[-1].position - f0.position) / (len(self.frames) - 1)
            if self.resampled:
                step = (step @ normal) * normal
        else:
            step = _single_step(normal, self.thickness)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * dc, c * dr, step, f0.position
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, (float(dc), float(dr), float(np.linalg.norm(step)))

    def inplane_shifts(self) -> np.ndarray:
        """``(Z, 2)``: per slice, the shift ``(di, dj)`` in voxels that moves it onto the
        orthogonal grid through the first slice (zero for an untilted stack)."""
        f0 = self.frames[0]
        r, c = f0.orientation[:3], f0.orientation[3:]
        dr, dc = f0.spacing
        normal = np.cross(r, c)
        normal /= np.linalg.norm(normal)
        out = np.zeros((len(self.frames), 2))
        for k, f in enumerate(self.frames):
            off = f.position - f0.position
            off = off - (off @ normal) * normal
            out[k] = (off @ r / dc, off @ c / dr)
        return out

    # ------------------------------------------------------------------------------ pixels

    def read_volume(self, gantry_tilt: str = "refuse") -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """The series as ``(volume (X, Y, Z) float32, RAS affine, voxel size)``.

        Raises:
            DicomSeriesError: the series is not one volume, or a file's pixel data cannot be
                read or decoded (the message names the file and its transfer syntax).
        """
        import pydicom

        self.check(gantry_tilt)
        f0 = self.frames[0]
        volume = np.empty((f0.columns, f0.rows, len(self.frames)), dtype=np.float32)
        cache: dict[Path, np.ndarray] = {}
        for k, frame in enumerate(self.frames):
            if frame.path not in cache:
                cache.clear()  # keep one file's pixels at a time (multi-frame files: all frames)
                try:
                    with library_logs_at_debug("pydicom"):  # its handlers' errors: explained below in one line
                        ds = pydicom.dcmread(frame.path)
                        pixels = ds.pixel_array
                except Exception as exc:  # pydicom and the handlers raise many types for bad pixel data
                    syntax = _transfer_syntax(frame.path)
                    raise self.error(f"{frame.path.name}: cannot read its pixel data ({syntax}): {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''} (compressed data needs pylibjpeg "
                                     "with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or Pillow)") from None
                pixels = np.asarray(pixels)
                if frame.number_of_frames == 1 and pixels.ndim == 2:
                    pixels = pixels[None]
                if pixels.ndim != 3 or pixels.shape[1:] != (frame.rows, frame.columns):
                    raise self.error(f"{frame.path.name}: pixel data of shape {pixels.shape} does not match its "
                                     f"{frame.number_of_frames} frame(s) of {frame.rows}x{frame.columns}")
                cache[frame.path] = pixels
            plane = cache[frame.path][frame.index].astype(np.float64) * frame.slope + frame.intercept
            _check_representable(self, frame, plane)
            volume[:, :, k] = plane.T
        affine, zooms = self.geometry()
        if self.resampled:
            volume = resample_tilt(volume, self.inplane_shifts())
        return volume, affine, zooms


#: The largest magnitude a rescaled value may have: float32's.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_representable(series: DicomSeries, frame: Frame, plane: np.ndarray) -> None:
    """Raises DicomSeriesError when the rescaled values of ``frame`` are NaN, infinite or too
    large for float32 (a corrupt ``RescaleSlope`` / ``RescaleIntercept``), as the NIfTI reader
    refuses non-finite intensities."""
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(plane) | (np.abs(plane) > _FLOAT32_MAX)
    if bad.any():
        raise series.error(f"{_frame_name(frame)}: RescaleSlope {frame.slope!r} and RescaleIntercept {frame.intercept!r} "
                           f"make {int(bad.sum())} of its {plane.size} values NaN, infinite or beyond float32; the "
                           "file's rescale is corrupt (fix RescaleSlope / RescaleIntercept)")


def resample_tilt(volume: np.ndarray, shifts: np.ndarray, order: int = 1, fill: float | None = None) -> np.ndarray:
    """Move each slice of a tilted stack onto the orthogonal grid through the first slice.

    The grid point ``(i, j)`` of slice ``k`` lies at in-plane coordinates ``(i - di_k, j - dj_k)``
    of the acquired slice, so ``out[i, j, k] = in[i - di_k, j - dj_k, k]`` (``scipy.ndimage.shift``
    by ``(di_k, dj_k)``; spline ``order`` 1: linear, 0: nearest for labels). Grid points outside
    the acquired slice take ``fill`` (default: the volume's minimum, air in CT).

    Args:
        volume: ``(X, Y, Z)``.
        shifts: ``(Z, 2)`` from :meth:`DicomSeries.inplane_shifts`; negate them to go back.
    """
    from scipy import ndimage

    fill = float(volume.min()) if fill is None else fill
    out = np.empty_like(volume)
    for k in range(volume.shape[2]):
        out[:, :, k] = ndimage.shift(volume[:, :, k], shifts[k], order=order, mode="constant", cval=fill, prefilter=False)
    return out


def _frame_name(frame: Frame) -> str:
    return frame.path.name if frame.number_of_frames == 1 else f"{frame.path.name} frame {frame.index + 1}"


def _distinct(vectors: Sequence[np.ndarray]) -> list[tuple[np.ndarray, int]]:
    groups: list[list] = []
    for v in vectors:
        for g in groups:
            if np.allclose(g[0], v, atol=ORIENTATION_TOLERANCE):
                g[1] += 1
                break
        else:
            groups.append([v, 1])
    return [(g[0], g[1]) for g in groups]


def _single_step(normal: np.ndarray, thickness: float | None) -> np.ndarray:
    step = normal * (thickness if thickness and thickness > 0 else 1.0)
    return -step if step[int(np.argmax(np.abs(step)))] < 0 else step


def _stack_reversed(frames: list[Frame], normal: np.ndarray, thickness: float | None) -> bool:
    """True when the frames (sorted along ``+normal``) must be reversed so that the step's
    dominant LPS component is positive."""
    if len(frames) < 2:
        return False
    step = frames[-1].position - frames[0].position
    return bool(step[int(np.argmax(np.abs(step)))] < 0)


def _transfer_syntax(path: Path) -> str:
    try:
        import pydicom

        uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        return f"transfer syntax {uid.name}"
    except Exception:
        return "transfer syntax unknown"


# ---------------------------------------------------------------------------------- scanning


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
    if per_frame is None and "SharedFunctionalGroupsSequence" not in ds:
        pos, ori, sp = (_value(ds, k) for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
        slope, inter = _number_or_nan(_value(ds, "RescaleSlope", 1.0)), _number_or_nan(_value(ds, "RescaleIntercept", 0.0))
        frames = []
        for index in range(n):  # a classic multi-frame file without functional groups: one position for all frames
            frames.append(Frame(path, index, np.asarray(_float_list(pos)) if pos is not None else None,
                                np.asarray(_float_list(ori)) if ori is not None else None,
                                tuple(_float_list(sp)) if sp is not None else None, slope, inter, rows, cols, uid, n))
        return frames
    frames = []
    for index in range(n):
        item = per_frame[index] if per_frame is not None and index < len(per_frame) else None
        pos = _functional(ds, item, "PlanePositionSequence", "ImagePositionPatient")
        ori = _functional(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient")
        sp = _functional(ds, item, "PixelMeasuresSequence", "PixelSpacing")
        slope = _functional(ds, item, "PixelValueTransformationSequence", "RescaleSlope")
        inter = _functional(ds, item, "PixelValueTransformationSequence", "RescaleIntercept")
        frames.append(Frame(path, index, np.asarray(_float_list(pos)) if pos is not None else None,
                            np.asarray(_float_list(ori)) if ori is not None else None,
                            tuple(_float_list(sp)) if sp is not None else None,
                            _number_or_nan(slope) if slope not in (None, "") else 1.0,
                            _number_or_nan(inter) if inter not in (None, "") else 0.0, rows, cols, uid, n))
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
                uid=uid, description=str(_value(ds, "SeriesDescription", "")).strip(), number=str(_value(ds, "SeriesNumber", "")),
                modality=str(_value(ds, "Modality", "")), study_uid=str(_value(ds, "StudyInstanceUID", "")),
                frame_of_reference=str(_value(ds, "FrameOfReferenceUID", "")), sop_class=sop_name, files=[],
                thickness=_thickness(ds), photometric=str(_value(ds, "PhotometricInterpretation", "MONOCHROME2")),
                samples_per_pixel=int(_value(ds, "SamplesPerPixel", 1)), patient_id=str(_value(ds, "PatientID", "")),
                study_id=str(_value(ds, "StudyID", _value(ds, "StudyDate", ""))))
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


# ---------------------------------------------------------------------------------- channels


def parse_series_rules(rules: Any) -> dict[str, tuple[str, ...]] | None:
    """``series`` rules as channel -> patterns.

    Accepts a mapping (``{flair: ["*FLAIR*"], ...}`` from a YAML config), a list of
    ``"channel=pattern[,pattern...]"`` strings, or one such string with rules separated by
    ``;`` (command line). None or empty: None (the defaults).

    Raises:
        ConfigError: a rule without ``=`` or without patterns.
    """
    if rules is None or (isinstance(rules, (str, Mapping, list, tuple)) and not rules):
        return None
    if not isinstance(rules, (str, Mapping, list, tuple)):
        raise ConfigError(f"series rules must be a mapping channel -> patterns or 'channel=PATTERN[,PATTERN]' strings, "
                          f"got {type(rules).__name__} {rules!r}")
    if isinstance(rules, Mapping):
        items = [(str(k), [v] if isinstance(v, str) else list(v)) for k, v in rules.items()]
    else:
        texts = [t for r in ([rules] if isinstance(rules, str) else list(rules)) for t in str(r).split(";") if t.strip()]
        items = []
        for text in texts:
            channel, sep, patterns = text.partition("=")
            if not sep or not channel.strip() or not patterns.strip():
                raise ConfigError(f"series rule {text!r} must look like channel=PATTERN[,PATTERN...] (SeriesDescription "
                                  "glob patterns, case-insensitive)")
            items.append((channel.strip(), [p.strip() for p in patterns.split(",") if p.strip()]))
    out: dict[str, tuple[str, ...]] = {}
    for channel, patterns in items:
        if not patterns:
            raise ConfigError(f"series rule for channel {channel!r} names no pattern")
        out[channel] = out.get(channel, ()) + tuple(patterns)
    return out


def series_rules(series: Any, modalities: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The rules that assign a study's series to ``modalities``: the user's ``series`` rules
    (tried first, in the order given) followed by the built-in ones
    (:data:`DEFAULT_SERIES_RULES`) for the channels the model reads, so user rules add to the
    built-in ones; a channel's user patterns come before its built-in patterns.

    Raises:
        ConfigError: bad ``series`` rules (see :func:`parse_series_rules`).
    """
    user = parse_series_rules(series) or {}
    rules = {m: tuple(p) for m, p in user.items()}
    for m, patterns in DEFAULT_SERIES_RULES.items():
        if m in modalities:
            rules[m] = rules.get(m, ()) + tuple(p for p in patterns if p not in rules.get(m, ()))
    return rules


def channel_of(description: str, rules: Mapping[str, Sequence[str]]) -> str | None:
    """The first channel (in rule order) one of whose patterns matches ``description``."""
    text = description.lower()
    for channel, patterns in rules.items():
        if any(fnmatch.fnmatchcase(text, p.lower()) for p in patterns):
            return channel
    return None


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "series"


@dataclass
class DicomCase:
    """One case: a series (one-channel models) or a study's series, one per channel.

    Attributes:
        case_id: from the series' folder (and series number when a folder holds several), made
            unique by patient, study and a hash of the UID (:func:`unique_case_names`).
        folder: the folder of the (first channel's) files.
        channels: channel name -> series, in the model's channel order.
        gantry_tilt: how a tilted stack is handled (``refuse`` or ``resample``).
    """

    case_id: str
    folder: Path
    channels: dict[str, DicomSeries]
    gantry_tilt: str = "refuse"
    numbers: list[int] | None = None

    @property
    def reference(self) -> DicomSeries:
        """The series predictions are written against (the first channel's)."""
        return next(iter(self.channels.values()))

    def source_files(self, modalities: Sequence[str] | None = None) -> list[Path]:
        chosen = modalities or list(self.channels)
        return [f for m in chosen if m in self.channels for f in self.channels[m].files]

    def load(self, modalities: Sequence[str] | None = None, with_label: bool = True) -> LoadedCase:
        """Read the channels as ``LoadedCase`` (image ``(C, X, Y, Z)`` float32, RAS affine).

        Raises:
            DicomSeriesError: a series is not one volume or cannot be decoded, or the channels
                do not share one grid (shape and affine).
        """
        chosen = list(modalities or self.channels)
        missing = [m for m in chosen if m not in self.channels]
        if missing:
            raise DataError(f"DICOM case {self.case_id}: no series for channel(s) {missing}")
        volumes, ref = [], None
        for m in chosen:
            series = self.channels[m]
            volume, affine, zooms = series.read_volume(self.gantry_tilt)
            if ref is None:
                ref = (series, volume.shape, affine, zooms)
            elif volume.shape != ref[1] or not np.allclose(affine, ref[2], atol=1e-3):
                raise series.error(f"channel {m} is not on the grid of channel {chosen[0]} ({ref[0].label}): shape "
                                   f"{volume.shape} vs {ref[1]}, affine {np.round(affine, 3).tolist()} vs "
                                   f"{np.round(ref[2], 3).tolist()}")
            volumes.append(volume)
        _, shape, affine, zooms = ref
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_zooms(zooms)
        header.set_xyzt_units("mm")
        header.set_sform(affine, code=1)
        header.set_qform(affine, code=1)
        return LoadedCase(case=self, image=np.stack(volumes), label=None, affine=affine, header=header,
                          convention="dicom", modalities=tuple(chosen))


def find_dicom_cases(root: str | Path, modalities: Sequence[str], require_label: bool = False,
                     skipped: dict[str, str] | None = None, series: Any = None, gantry_tilt: str | None = None) -> list[DicomCase]:
    """The cases below ``root``: every image series (one channel), or per study the series the
    ``series`` rules assign to the channels (several channels).

    Each series' geometry is checked from its headers here; a series that is not one volume
    (and, for several channels, a study without a series for a channel or with two) is put in
    ``skipped`` with its one-line reason (or raised without ``skipped``).

    Args:
        modalities: the model's channels.
        require_label: DICOM series carry no training labels (True raises).
        series: channel -> SeriesDescription patterns (see :func:`parse_series_rules`).
        gantry_tilt: ``refuse`` (default) or ``resample``.

    Raises:
        DataError: no DICOM image series below ``root``; with ``require_label``; without
            ``skipped``, the first series or study that cannot be a case.
        ConfigError: bad ``series`` rules or ``gantry_tilt``.
    """
    root = Path(root).expanduser()
    tilt = gantry_tilt or "refuse"
    if tilt not in TILT_MODES:
        raise ConfigError(f"gantry_tilt must be one of {', '.join(TILT_MODES)}, got {gantry_tilt!r}")
    if require_label:
        raise DataError(f"{root}: the dicom format reads images only (no labels): use it to predict, or convert the "
                        "labelled cases to NIfTI for training and evaluation")
    found, others = scan_series(root)
    if others:
        log.info("%s: %d file(s) that are not DICOM left out (e.g. %s)", root, len(others), others[0].name)
    if not found:
        raise DataError(f"{root}: no DICOM files found ({len(others)} other file(s))")
    images, refused = [], {}
    for s in found:
        try:
            s.check(tilt)
        except DicomSeriesError as exc:
            refused[s.uid] = (s, str(exc))
            continue
        images.append(s)
    cases: list[DicomCase] = []
    problems: dict[str, str] = {}
    folder_count: dict[Path, int] = {}
    for s in found:
        folder_count[s.files[0].parent] = folder_count.get(s.files[0].parent, 0) + 1
    modalities = list(modalities)
    if len(modalities) <= 1 and not series:
        channel = modalities[0] if modalities else "image"
        names = unique_case_names([(s.uid, _case_id(root, s, folder_count), _qualifiers([s])) for s in found])
        for s in found:
            cid = names[s.uid]
            if s.uid in refused:
                problems[cid] = refused[s.uid][1]
            else:
                cases.append(DicomCase(cid, s.files[0].parent, {channel: s}, tilt))
    else:
        rules = series_rules(series, modalities)
        unruled = [m for m in modalities if m not in rules]
        if unruled:
            raise ConfigError(f"no series rule for channel(s) {unruled}: give SeriesDescription patterns, e.g. "
                              f"predict --series {unruled[0]}='*{unruled[0]}*' (or data.format_options.series)")
        studies: dict[str, list[DicomSeries]] = {}
        for s in found:
            studies.setdefault(s.study_uid, []).append(s)
        names = unique_case_names([(uid, _study_id(root, members), _qualifiers(members)) for uid, members in studies.items()])
        for study_uid, members in studies.items():
            cid = names[study_uid]
            chosen: dict[str, list[DicomSeries]] = {m: [] for m in modalities}
            for s in members:
                ch = channel_of(s.description, rules)
                if ch in chosen:
                    chosen[ch].append(s)
            bad = [m for m in modalities if len(chosen[m]) != 1]
            if bad:
                m = bad[0]
                present = ", ".join(repr(s.description) for s in members) or "none"
                what = "no series matches" if not chosen[m] else f"{len(chosen[m])} series match"
                problems[cid] = (f"study {study_uid} in {members[0].files[0].parent}: {what} channel {m} (patterns "
                                 f"{list(rules[m])}); its series: {present}")
                continue
            refusal = next((refused[chosen[m][0].uid][1] for m in modalities if chosen[m][0].uid in refused), None)
            if refusal:
                problems[cid] = refusal
                continue
            cases.append(DicomCase(cid, chosen[modalities[0]][0].files[0].parent, {m: chosen[m][0] for m in modalities}, tilt))
    if problems and skipped is None:
        raise DicomSeriesError(next(iter(problems.values())))
    if skipped is not None:
        skipped.update(problems)
    return cases


def _relative(root: Path, folder: Path) -> str:
    try:
        rel = folder.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(folder.name)
    parts = [p for p in rel.parts if p not in ("", ".")]
    return "_".join(parts) if parts else root.resolve().name


def _case_id(root: Path, s: DicomSeries, folder_count: dict[Path, int]) -> str:
    folder = s.files[0].parent
    base = _safe(_relative(root if root.is_dir() else root.parent, folder))
    if folder_count.get(folder, 1) > 1:
        base += f"_s{_safe(s.number or s.uid[-8:])}"
    return base


def _study_id(root: Path, members: list[DicomSeries]) -> str:
    import os

    common = Path(os.path.commonpath([str(s.files[0].parent) for s in members]))
    return _safe(_relative(root if root.is_dir() else root.parent, common))


def _qualifiers(members: list[DicomSeries]) -> list[str]:
    """Readable parts that tell a case from another of the same name: patient, then study."""
    s = members[0]
    return [f"p{_safe(s.patient_id)}" if s.patient_id else "", f"st{_safe(s.study_id)}" if s.study_id else ""]


def unique_case_names(entries: Sequence[tuple[str, str, Sequence[str]]]) -> dict[str, str]:
    """One distinct, readable case name per identity (a SeriesInstanceUID, or a
    StudyInstanceUID for several channels), the same whatever subset of the folder is read.

    Args:
        entries: ``(uid, base name, qualifiers)``: the base name is the folder (and series
            number); while two uids share a name, the qualifiers (patient, study) that tell
            them apart are added in order, and a short hash of the uid last.

    Returns:
        uid -> name.
    """
    import hashlib

    names = {uid: base for uid, base, _ in entries}
    quals = {uid: list(q) for uid, _, q in entries}
    for level in range(max((len(q) for q in quals.values()), default=0) + 1):
        groups: dict[str, list[str]] = {}
        for uid, name in names.items():
            groups.setdefault(name, []).append(uid)
        clashes = [uids for uids in groups.values() if len(uids) > 1]
        if not clashes:
            break
        for uids in clashes:
            if level < len(quals[uids[0]]):
                parts = {u: quals[u][level] if level < len(quals[u]) else "" for u in uids}
                if len(set(parts.values())) > 1:  # this qualifier tells (some of) them apart
                    for u in uids:
                        names[u] = f"{names[u]}_{parts[u]}" if parts[u] else names[u]
            else:
                for u in uids:
                    names[u] = f"{names[u]}_u{hashlib.sha1(u.encode()).hexdigest()[:8]}"
    return names


def is_dicom_folder(root: str | Path, limit: int = 64) -> bool:
    """True when ``root`` (a file or folder) holds a DICOM file (``DICM`` after the 128-byte
    preamble) among its first ``limit`` files."""
    root = Path(root).expanduser()
    if not root.exists():
        return False
    paths = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    for n, path in enumerate(paths):
        if n >= limit:
            break
        try:
            with open(path, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if len(head) == 132 and head[128:] == b"DICM":
            return True
    return False
