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
    """

    case: Any
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    convention: str
    modalities: tuple[str, ...]

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each spatial axis (mm; pixels where the files do not say)."""
        return tuple(float(z) for z in self.header.get_zooms()[: self.image.ndim - 1])
