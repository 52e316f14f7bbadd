"""Data formats: one entry per kind of data set, the only place that knows how a set's
cases are found, what its classes mean and how predictions are written back.

A format's cases all offer ``case_id``, ``folder``, ``source_files(modalities)`` and
``load(modalities) -> LoadedCase`` (image ``(C, X, Y, Z)``, classes ``(X, Y, Z)``), so the
cache, the slice datasets, training, evaluation and prediction are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.metrics.segmentation import BRATS_REGIONS, CLASS_NAMES, MetricAccumulator, case_metrics


@dataclass(frozen=True)
class DataFormat:
    """How one kind of data set is read, scored and written.

    Attributes:
        name: the ``data.format`` value.
        modalities: the channels its cases can offer.
        class_names: internal classes ``0..C-1`` (``num_classes`` must equal their count).
        regions: evaluation regions as unions of classes (BraTS WT/TC/ET), or empty.
        find_cases: ``(root, modalities, require_label) -> cases``.
        volumetric: predictions are NIfTI volumes (else per-slice mask images).
        display_rotate: figures show ``rot90`` of a slice (NIfTI x-major storage).
    """

    name: str
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    find_cases: Callable[..., list]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    volumetric: bool = True
    display_rotate: bool = True
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def accumulator(self) -> MetricAccumulator:
        """Per-case confusion counts with this format's class names and regions."""
        return MetricAccumulator(self.num_classes, self.regions or None, self.class_names)

    def case_metrics(self, pred: Any, target: Any, spacing: Any = None, with_hd95: bool = False) -> dict[str, float]:
        return case_metrics(pred, target, self.num_classes, spacing, self.regions or None, with_hd95, self.class_names)


def _find_brats(root, modalities, require_label=True):
    from pdeseg.data.brats import find_cases

    return find_cases(root, modalities, require_label)


def _find_lgg(root, modalities, require_label=True):
    from pdeseg.data.lgg import find_lgg_cases

    return find_lgg_cases(root, modalities, require_label)


FORMATS: dict[str, DataFormat] = {
    "brats": DataFormat(
        name="brats", modalities=("flair", "t1", "t1ce", "t2"), class_names=CLASS_NAMES, find_cases=_find_brats,
        regions=dict(BRATS_REGIONS), description="BraTS 2018-2023 NIfTI case folders; classes NCR, ED, ET; regions WT, TC, ET",
    ),
    "lgg": DataFormat(
        name="lgg", modalities=("pre", "flair", "post"), class_names=("background", "tumour"), find_cases=_find_lgg,
        volumetric=False, display_rotate=False,
        description="Kaggle LGG kaggle_3m: RGB TIFF slices and 0/255 masks per patient; binary",
    ),
}


def get_format(name: str) -> DataFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown data format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def slice_mask_values(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """8-bit mask pixel values: binary tasks write 0/255 (the LGG masks' convention),
    others their class ids."""
    return (classes.astype(np.uint8) * 255) if num_classes == 2 else classes.astype(np.uint8)


def write_slice_masks(
    classes: np.ndarray, case_id: str, out_dir: str | Path, numbers: Sequence[int] | None = None, ext: str = "png", num_classes: int = 2
) -> list[Path]:
    """Write a ``(H, W, Z)`` segmentation as one mask image per slice:
    ``<out_dir>/<case_id>/<case_id>_<n>_mask.<ext>`` (``n`` from ``numbers``, default 1..Z).

    Args:
        ext: ``png`` or ``tif``.
    """
    if ext not in ("png", "tif"):
        raise ValueError(f"mask format must be png or tif, got {ext!r}")
    import tifffile
    from PIL import Image

    numbers = list(numbers) if numbers else list(range(1, classes.shape[-1] + 1))
    if len(numbers) != classes.shape[-1]:
        raise ValueError(f"{case_id}: {len(numbers)} slice numbers for {classes.shape[-1]} slices")
    folder = Path(out_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    values = slice_mask_values(classes, num_classes)
    paths = []
    for z, n in enumerate(numbers):
        path = folder / f"{case_id}_{n}_mask.{ext}"
        mask = np.ascontiguousarray(values[..., z])
        if ext == "png":
            Image.fromarray(mask).save(path)
        else:
            tifffile.imwrite(path, mask)
        paths.append(path)
    return paths
