"""One DICOM series as a volume: what its headers must say, its geometry and its pixels.

A :class:`DicomSeries` holds the frames of one ``SeriesInstanceUID`` (found by
:func:`pdeseg.data.readers.dicom_scan.scan_series`); :meth:`DicomSeries.check` refuses what is not one volume and
sorts the frames into stack order, :meth:`DicomSeries.geometry` gives the affine and voxel size, and
:meth:`DicomSeries.read_volume` decodes the pixels. The geometry comes only from ``ImagePositionPatient``,
``ImageOrientationPatient`` and ``PixelSpacing`` (per frame for enhanced multi-frame files), never from
``SliceThickness``, ``InstanceNumber`` or the order of the files.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pdeseg.errors import DataError
from pdeseg.logs import library_logs_at_debug

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


class DicomSeriesError(DataError):
    """A DICOM series that cannot be read as one volume; the message names the series."""


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
            raise self.error(f"{self.files[0].name}: its header has no SOPClassUID (the file is cut short, or is not a DICOM image)")
        if not self.sop_class.endswith("Image Storage"):
            raise self.error(f"SOP class {self.sop_class!r} is not an image storage class (no volume to read)")
        if self.samples_per_pixel != 1:
            raise self.error(f"{self.samples_per_pixel} samples per pixel ({self.photometric}); only greyscale images are volumes")
        frames = self.frames
        if not frames:
            raise self.error("holds no image frames")
        missing = [f for f in frames if f.position is None or f.orientation is None or f.spacing is None]
        if missing:
            raise self.error(
                f"{missing[0].path.name}: no ImagePositionPatient, ImageOrientationPatient or PixelSpacing "
                "(a projection image or secondary capture cannot be placed in 3D)"
            )
        bad = next((f for f in frames if len(f.spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in f.spacing)), None)
        if bad is not None:
            raise self.error(
                f"PixelSpacing {list(bad.spacing)} in {_frame_name(bad)}: must be two sizes > 0 mm (row "
                "spacing, column spacing); the header is corrupt"
            )
        orientations = _distinct([f.orientation for f in frames])
        if len(orientations) > 1:
            counts = ", ".join(f"{n} image(s) with {np.round(o, 4).tolist()}" for o, n in orientations)
            raise self.error(
                f"mixed orientations: {len(orientations)} different ImageOrientationPatient values ({counts}); a volume has one"
            )
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
            raise self.error(
                f"not a volume: {n_same} of its {len(frames)} images lie at the same position (e.g. {where}: "
                f"{_frame_name(frames[same[0]])}, {_frame_name(frames[same[0] + 1])}); repeated or "
                "time-series images"
            )
        if 1 < len(frames) < MIN_SLICES:
            raise self.error(
                f"too few slices: {len(frames)} (a stack needs at least {MIN_SLICES} to check its spacing; "
                "a single image is read as one slice)"
            )
        if len(frames) >= MIN_SLICES:
            step = float(np.median(gaps))
            odd = np.flatnonzero(np.abs(gaps - step) > max(SPACING_TOLERANCE * step, 0.01))
            if odd.size:
                k = int(odd[0])
                a, b = frames[k], frames[k + 1]
                ratio = gaps[k] / step
                if round(ratio) >= 2 and abs(ratio - round(ratio)) < 0.1:
                    missing_at = [
                        np.round(a.position + (b.position - a.position) * m / round(ratio), 3).tolist() for m in range(1, round(ratio))
                    ]
                    what = f"{round(ratio) - 1} slice(s) missing at {'; '.join(map(str, missing_at))}"
                else:
                    what = "uneven slice spacing"
                raise self.error(
                    f"{what}: the gap between {_frame_name(a)} and {_frame_name(b)} is {gaps[k]:.3f} mm along "
                    f"the stack normal, the others {step:.3f} mm ({odd.size} uneven gap(s))"
                )
        if len(frames) > 1:
            offsets = np.array([f.position - frames[0].position for f in frames])
            inplane = offsets - np.outer(offsets @ normal, normal)
            worst = float(np.linalg.norm(inplane, axis=1).max())
            if worst > TILT_TOLERANCE_PIXELS * min(frames[0].spacing):
                total = float(depth[-1] - depth[0])
                self.tilt_degrees = math.degrees(math.atan2(worst, total))
                if gantry_tilt != "resample":
                    raise self.error(
                        f"gantry tilt: the slices are offset in-plane from the stack normal by "
                        f"{self.tilt_degrees:.2f} degrees ({worst:.2f} mm over the stack); pass "
                        "gantry_tilt=resample (predict --gantry-tilt resample) to resample it onto an "
                        "orthogonal grid"
                    )
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
                    raise self.error(
                        f"{frame.path.name}: cannot read its pixel data ({syntax}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''} (compressed data needs pylibjpeg "
                        "with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or Pillow)"
                    ) from None
                pixels = np.asarray(pixels)
                if frame.number_of_frames == 1 and pixels.ndim == 2:
                    pixels = pixels[None]
                if pixels.ndim != 3 or pixels.shape[1:] != (frame.rows, frame.columns):
                    raise self.error(
                        f"{frame.path.name}: pixel data of shape {pixels.shape} does not match its "
                        f"{frame.number_of_frames} frame(s) of {frame.rows}x{frame.columns}"
                    )
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
        raise series.error(
            f"{_frame_name(frame)}: RescaleSlope {frame.slope!r} and RescaleIntercept {frame.intercept!r} "
            f"make {int(bad.sum())} of its {plane.size} values NaN, infinite or beyond float32; the "
            "file's rescale is corrupt (fix RescaleSlope / RescaleIntercept)"
        )


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
