"""Surface metrics of two binary masks in mm: HD95 and surface Dice, computed by MONAI.

Both take the boundary of a mask as the voxels removed by one binary erosion (face connectivity) and measure
Euclidean distances with the voxel spacing, which is required (pass 1.0 for distances in voxels). They need
whole masks, so they are not accumulated slice by slice; :func:`pdeseg.metrics.segmentation.scoring.case_metrics`
computes them per region of a whole case.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from pdeseg.metrics.segmentation._inputs import check_label_dtype, check_pair, check_spacing, to_numpy, torch


__all__ = [
    "hd95",
    "surface_dice",
]


def _binary_pair(pred_mask: Any, target_mask: Any, spacing: Any, what: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Two checked boolean masks of one shape (1-3 dimensions) and the spacing, one value per axis.

    Raises:
        ValueError: on shape mismatch, non-binary / float masks, missing or invalid spacing,
            or masks that are not 1-3 dimensional.
    """
    p = to_numpy(pred_mask, "pred_mask")
    t = to_numpy(target_mask, "target_mask")
    check_label_dtype(p, "pred_mask")
    check_label_dtype(t, "target_mask")
    check_pair(p, t)
    if p.ndim not in (1, 2, 3):
        raise ValueError(f"{what} expects 1-D, 2-D or 3-D masks, got {p.ndim} dimensions with shape {p.shape}")
    for x, name in ((p, "pred_mask"), (t, "target_mask")):
        if x.dtype != np.bool_ and x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{name} must be binary (bool or 0/1); for a label map use region_masks() or labels == k")
    sp = check_spacing(spacing, p.ndim)
    return p.astype(bool, copy=False), t.astype(bool, copy=False), sp


def _crop_to_union(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the bounding box of their union plus a one-voxel margin (MONAI
    crops the same way internally): boundaries and distances are unchanged, but MONAI's
    float conversion of the full volume is avoided. At least one mask must be non-empty."""
    nz = np.nonzero(p | t)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in nz)
    return p[box], t[box]


def hd95(pred_mask: Any, target_mask: Any, spacing: Any, one_empty: float = math.inf) -> float:
    """95th-percentile Hausdorff distance between two binary masks, in mm.

    Definition (MONAI's, :func:`monai.metrics.compute_hausdorff_distance` with
    ``percentile=95``, which this function calls): the boundary of a mask is the set of
    its voxels removed by one binary erosion (face connectivity, outside = background).
    For every boundary voxel of the prediction take the Euclidean distance, in mm using
    ``spacing``, to the nearest boundary voxel of the truth, and vice versa. HD95 is
    the **larger of the two directed 95th percentiles** (linear interpolation, as
    :func:`torch.quantile`). Note that some toolkits (e.g. MedPy's ``hd95``) instead
    take one percentile of both directions pooled; values can differ slightly.

    Empty masks: 0.0 when both are empty, ``one_empty`` when exactly one is (infinite by
    default; the BraTS scoring uses 373.13 mm).

    Args:
        pred_mask: predicted mask, bool (or 0/1 integer) array/tensor of shape ``S``
            (2-D or 3-D).
        target_mask: true mask, same shape ``S``.
        spacing: voxel size in mm, a number (isotropic) or one value per dimension of
            ``S``. Required: pass 1.0 explicitly to get distances in voxels.

    Returns:
        HD95 in the units of ``spacing``.

    Raises:
        ValueError: on shape mismatch, non-binary / float masks, missing or invalid
            spacing, or masks that are not 1-3 dimensional.
    """
    p, t, sp = _binary_pair(pred_mask, target_mask, spacing, "hd95")
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if has_p != has_t:
        return float(one_empty)
    p, t = _crop_to_union(p, t)

    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        # MONAI 1.5/1.6 passes its own deprecated argument internally; nothing for the user to fix
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_hausdorff_distance(p[None, None], t[None, None], include_background=True, percentile=95, spacing=list(sp))
    return float(value.reshape(-1)[0])


def surface_dice(pred_mask: Any, target_mask: Any, spacing: Any, tolerance: float, empty: float = 1.0) -> float:
    """Surface Dice (normalised surface distance) of two binary masks at a tolerance in mm.

    Definition (MONAI's :func:`monai.metrics.compute_surface_dice`, which this function
    calls, without sub-voxel areas): the boundaries are taken as for :func:`hd95` (voxels
    removed by one binary erosion, face connectivity). With ``B_p`` and ``B_t`` the boundary
    voxels of prediction and truth and ``d`` the Euclidean distance in mm (``spacing``),

        SD = (|{x in B_p : d(x, B_t) <= tol}| + |{y in B_t : d(y, B_p) <= tol}|) / (|B_p| + |B_t|),

    the share of both boundaries that lies within ``tolerance`` of the other.

    Empty masks: ``empty`` when both are empty, 0 when exactly one is.

    Args:
        pred_mask: predicted mask, bool (or 0/1 integer) of shape ``S`` (1-D to 3-D).
        target_mask: true mask, same shape.
        spacing: voxel size in mm, a number or one value per dimension of ``S``.
        tolerance: the largest distance (mm, ``>= 0``) at which a boundary voxel counts as matched.
        empty: value when both masks are empty.

    Returns:
        surface Dice in ``[0, 1]``.

    Raises:
        ValueError: see :func:`hd95`; or a negative or non-finite tolerance.
    """
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float, np.integer, np.floating))
        or not math.isfinite(tolerance)
        or tolerance < 0
    ):
        raise ValueError(f"tolerance must be a finite distance >= 0 (mm), got {tolerance!r}")
    p, t, sp = _binary_pair(pred_mask, target_mask, spacing, "surface_dice")
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return float(empty)
    if has_p != has_t:
        return 0.0
    p, t = _crop_to_union(p, t)

    from monai.metrics import compute_surface_dice

    with warnings.catch_warnings():
        # MONAI 1.5/1.6 passes its own deprecated argument internally; nothing for the user to fix
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_surface_dice(
            torch.from_numpy(np.ascontiguousarray(p))[None, None],
            torch.from_numpy(np.ascontiguousarray(t))[None, None],
            class_thresholds=[float(tolerance)],
            include_background=True,
            spacing=list(sp),
        )
    return float(value.reshape(-1)[0])
