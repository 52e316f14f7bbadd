"""The in-memory form of one case, shared by every reader (BraTS, LGG, and future ones)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np


@dataclass
class LoadedCase:
    """Arrays and geometry of one case as a reader returns them.

    Attributes:
        case: the reader's case object (``case_id``, ``folder``, ``source_files``).
        image: ``(C, *spatial)`` float32 raw intensities, channels in the requested order
            (3D readers: ``(C, X, Y, Z)``).
        label: ``(*spatial)`` uint8 contiguous classes ``0..K-1``, or None.
        affine, header: geometry of the first channel, reused when writing predictions.
        convention: how raw label values map to classes (``brats2020``, ``brats2023``,
            ``binary``, ...), so predictions are written back in the input's own values.
        modalities: channel names of ``image``.
        instances: ``(*spatial)`` int32 objects (0 background, one id per cell), for data sets
            with objects (microscopy), else None.
        valid: ``(*spatial)`` bool field of view (pixels outside it are not scored), or None.
        domain: cell type or imaging modality ('' when the data set has none).
    """

    case: Any
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    convention: str
    modalities: tuple[str, ...]
    instances: np.ndarray | None = None
    valid: np.ndarray | None = None
    domain: str = ""

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each spatial axis (mm; pixels where the files do not say)."""
        return tuple(float(z) for z in self.header.get_zooms()[: self.image.ndim - 1])
