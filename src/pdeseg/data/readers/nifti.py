"""Reading and writing NIfTI volumes with the checks every volumetric reader needs.

One place for: reading a file with any on-disk dtype as float32 (real data sets mix uint8,
int16 and float32, sometimes within one set, labels included), turning unreadable files
into errors that name the file, checking that the channels and label of a case share one
grid, and writing a label volume with the input's affine and header.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pdeseg.data.case import LoadedCase
from pdeseg.data.files import write_atomically
from pdeseg.data.outputs import mark_nifti
from pdeseg.errors import DataError

#: Affines of one case's files may differ by this much (float rounding in headers).
AFFINE_TOLERANCE = 1e-3


def read_volume(path: Path, error: type[DataError] = DataError, ndim: tuple[int, ...] = (3,)) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read a NIfTI file as float32.

    Args:
        path: the file.
        error: the error type to raise (a reader's own subclass of DataError).
        ndim: accepted array ranks; a trailing singleton axis is dropped first.

    Returns:
        ``(image object, float32 array)``.

    Raises:
        ``error``: unreadable or truncated file, or an array rank not in ``ndim``.
    """
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise error(f"{path}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[-1] == 1 and 4 not in ndim:
        data = data[..., 0]
    if data.ndim not in ndim:
        raise error(f"{path}: expected a {' or '.join(f'{n}D' for n in ndim)} image, got shape {data.shape}")
    return img, data


def check_finite(data: np.ndarray, path: Path, error: type[DataError] = DataError) -> None:
    """Raises ``error`` naming ``path`` and the count of NaN/inf voxels, if any."""
    if not np.isfinite(data).all():
        raise error(f"{path}: {int((~np.isfinite(data)).sum())} NaN/inf voxels; fix or remove this case")


def integer_labels(data: np.ndarray, path: Path, error: type[DataError] = DataError) -> np.ndarray:
    """A label array (read as float) as int32, after checking every value is a whole number.

    Raises:
        ``error``: NaN/inf or fractional values (e.g. a label resampled with linear interpolation).
    """
    if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
        raise error(f"{path}: label file holds non-integer or NaN values (labels must be whole class values)")
    return data.astype(np.int32)


def check_same_grid(ref_img: nib.Nifti1Image, ref_path: Path, img: nib.Nifti1Image, path: Path,
                    shape: tuple[int, ...], error: type[DataError] = DataError) -> None:
    """Raises ``error`` when ``path`` (array ``shape``) is not on the grid of ``ref_path``."""
    ref_shape = tuple(ref_img.shape[:3])
    if tuple(shape[:3]) != ref_shape:
        raise error(f"{path}: shape {tuple(shape[:3])} differs from {ref_path.name} {ref_shape}")
    if not np.allclose(img.affine, ref_img.affine, atol=AFFINE_TOLERANCE):
        raise error(
            f"{path}: affine differs from {ref_path.name} (the channels and label of a case must share one grid)\n"
            f"{img.affine}\nvs\n{ref_img.affine}"
        )


def spatial_header(img: nib.Nifti1Image) -> nib.Nifti1Header:
    """A copy of ``img``'s header describing its first three axes only (a 4D multi-channel
    file's header, made fit for a 3D label volume on the same grid)."""
    header = img.header.copy()
    if len(header.get_data_shape()) > 3:
        zooms = header.get_zooms()[:3]
        header.set_data_shape(img.shape[:3])
        header.set_zooms(zooms)
    return header


def write_label_volume(labels: np.ndarray, loaded: LoadedCase, path: str | Path) -> Path:
    """Write a label volume (the data set's own label values) with the input's affine and
    header, as uint8 (int16 when a value exceeds 255), through a temporary name.

    Args:
        labels: ``(X, Y, Z)`` integer label values.
        loaded: the input case (geometry).
        path: the file to write (``.nii.gz`` or ``.nii``); its folder is created.

    Returns:
        ``path``.
    """
    dtype = np.uint8 if labels.size == 0 or int(labels.max()) <= 255 else np.int16
    header = loaded.header.copy()
    header.set_data_dtype(dtype)
    labels = np.asarray(labels, dtype=dtype)
    img = nib.Nifti1Image(labels, loaded.affine, header)
    img.header.set_slope_inter(1, 0)
    mark_nifti(img.header, labels)  # what --overwrite recognises as pdeseg's own file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: nib.save(img, str(tmp)))
