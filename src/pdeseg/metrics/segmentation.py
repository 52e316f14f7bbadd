"""Segmentation metrics: a functional core on integer label maps, plus a thin accumulator.

Everything here works on *label maps*: integer arrays of any number of spatial
dimensions (a 2D slice ``(H, W)``, a 3D volume ``(H, W, D)``, or a batch of either,
since the metrics only count voxels), holding the contiguous internal classes
``0 .. num_classes - 1``. Nothing here knows a data set: class names, evaluation
regions (unions of classes, e.g. BraTS WT/TC/ET) and the empty-mask rule are arguments,
supplied by a data format as :class:`ScoringRules` (BraTS's live in
:mod:`pdeseg.data.readers.brats`).

Counting is done once, with :func:`numpy.bincount` (or :func:`torch.bincount` on the
tensor's own device) over ``target * C + pred``, which gives the full ``(C, C)``
confusion matrix. Per-class tp/fp/fn, accuracy and the tp/fp/fn of any region
(a union of classes) all follow exactly from that matrix, so many slices of one case
can be accumulated without keeping them (:class:`MetricAccumulator`); so do Dice, IoU,
precision tp / (tp + fp) and recall (sensitivity) tp / (tp + fn). The distance metrics
(HD95, surface Dice) need whole masks and the voxel spacing.

Empty masks: Dice, IoU, precision, recall and surface Dice are ``empty`` (1 by default, the
BraTS rule) when truth and prediction are both empty and 0 when only one of them is (a
prediction of nothing has precision 0 when there was something to find; a prediction of
something where there is nothing has recall 0). HD95 is 0 when both are empty and
``hd95_one_empty`` when only one is (infinite unless the data format says otherwise;
BraTS uses 373.13 mm).

Inputs may be numpy arrays or torch tensors. Integer or boolean dtypes only: a float
array (for example ``nibabel``'s ``get_fdata()``, or network probabilities) is rejected
with a message, never rounded silently.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # torch is a hard dependency of the package, but keep the numpy core importable alone
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

__all__ = [
    "MetricAccumulator",
    "ScoringRules",
    "case_metrics",
    "confusion_counts",
    "confusion_matrix",
    "counts_from_confusion",
    "dice",
    "dice_from_counts",
    "hd95",
    "iou",
    "iou_from_counts",
    "metrics_from_confusion",
    "pixel_accuracy",
    "precision_from_counts",
    "recall_from_counts",
    "region_counts_from_confusion",
    "region_dice",
    "region_masks",
    "summarize",
    "surface_dice",
]



# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


def _is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc


def _check_label_dtype(x: Any, name: str) -> None:
    if _is_tensor(x):
        ok = x.dtype == torch.bool or not (x.dtype.is_floating_point or x.dtype.is_complex)
        dtype = str(x.dtype)
    else:
        ok = x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer)
        dtype = str(x.dtype)
    if not ok:
        raise ValueError(
            f"{name} must hold integer class labels, got dtype {dtype}. Take argmax over the "
            "channel dimension of logits/probabilities, or cast label volumes read as float "
            "(e.g. nibabel get_fdata()) with np.rint(x).astype(np.int64)."
        )


def _check_pair(pred: Any, target: Any) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}. Pass label maps (argmax over the channel dimension), "
            "not one-hot or probability tensors."
        )


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_range(lo: int, hi: int, name: str, num_classes: int) -> None:
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} has labels in [{lo}, {hi}] but num_classes={num_classes} allows only "
            f"[0, {num_classes - 1}]. Map raw dataset labels to contiguous classes first "
            "(BraTS: 4 -> 3), or raise num_classes."
        )


def _label_range(x: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty integer/bool numpy array."""
    if x.dtype == np.bool_:
        return 0, int(x.any())
    lo = int(x.min()) if np.issubdtype(x.dtype, np.signedinteger) else 0
    return lo, int(x.max())


def _check_regions(regions: Mapping[str, Sequence[int]] | None, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Validate a region mapping and return it as ``{name: tuple(classes)}``."""
    if regions is None:
        return {}
    if not isinstance(regions, Mapping):
        raise ValueError(
            f"regions must be a mapping name -> class ids (e.g. {{'WT': (1, 2, 3)}}), got {type(regions).__name__}"
        )
    out: dict[str, tuple[int, ...]] = {}
    for name, classes in regions.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"region names must be non-empty strings, got {name!r}")
        if isinstance(classes, (int, np.integer)):
            classes = (classes,)
        try:
            cls = tuple(int(c) for c in classes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"region {name!r} must be a sequence of class ids, got {classes!r}") from exc
        if not cls:
            raise ValueError(f"region {name!r} has no classes")
        if min(cls) < 0:
            raise ValueError(f"region {name!r} has negative class ids {cls}")
        if num_classes is not None:
            bad = [c for c in cls if c < 0 or c >= num_classes]
            if bad:
                raise ValueError(
                    f"region {name!r} uses classes {bad} outside [0, {num_classes - 1}] "
                    f"(num_classes={num_classes}). Pass regions=None for tasks without BraTS regions."
                )
        out[name] = cls
    return out


def _check_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        raise ValueError(
            "spacing is required for HD95 (distances are reported in mm). Pass the voxel size, "
            "e.g. the NIfTI header's pixdim / nibabel img.header.get_zooms(), or 1.0 to report "
            "distances in voxels."
        )
    if _is_tensor(spacing):
        spacing = spacing.detach().cpu().numpy()
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.ndim != 1:
        raise ValueError(f"spacing must be a number or a 1-D sequence, got shape {sp.shape}")
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing has {sp.size} entries but the masks have {ndim} dimensions")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive and finite, got {tuple(sp.tolist())}")
    return tuple(float(s) for s in sp)


def _resolve_class_names(num_classes: int, class_names: Sequence[str] | None) -> tuple[str, ...]:
    if class_names is None:
        return tuple(f"class{i}" for i in range(num_classes))
    names = tuple(str(n) for n in class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but num_classes={num_classes}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


# --------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------


def confusion_matrix(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix of two label maps, counted with a single ``bincount``.

    Torch tensors are counted on their own device (:func:`torch.bincount`), so a
    validation loop on the GPU transfers only ``num_classes**2`` numbers.

    Args:
        pred: predicted labels, integer or bool array/tensor of any shape ``S``.
        target: ground-truth labels, same shape ``S``.
        num_classes: number of classes ``C``; labels must lie in ``[0, C)``.

    Returns:
        ``(C, C)`` int64 array ``M`` with ``M[t, p]`` = number of voxels of true class
        ``t`` predicted as class ``p``.

    Raises:
        ValueError: if the shapes differ, a dtype is not integer/bool, or a label lies
            outside ``[0, num_classes)``.
    """
    c = _check_num_classes(num_classes)
    if _is_tensor(pred) and _is_tensor(target) and (pred.device.type != "cpu" or target.device.type != "cpu"):
        # accelerator tensors: count where they live (CPU tensors take the faster numpy path)
        _check_label_dtype(pred, "pred")
        _check_label_dtype(target, "target")
        _check_pair(pred, target)
        if pred.device != target.device:
            raise ValueError(f"pred and target are on different devices ({pred.device} and {target.device})")
        if pred.numel() == 0:
            return np.zeros((c, c), dtype=np.int64)
        p = pred.reshape(-1).long()
        t = target.reshape(-1).long()
        for x, name in ((p, "pred"), (t, "target")):
            lo, hi = torch.aminmax(x)
            _check_range(int(lo), int(hi), name, c)
        cm = torch.bincount(t * c + p, minlength=c * c)
        return cm.reshape(c, c).cpu().numpy().astype(np.int64, copy=False)

    p = _to_numpy(pred, "pred")
    t = _to_numpy(target, "target")
    _check_label_dtype(p, "pred")
    _check_label_dtype(t, "target")
    _check_pair(p, t)
    if p.size == 0:
        return np.zeros((c, c), dtype=np.int64)
    for x, name in ((p, "pred"), (t, "target")):
        lo, hi = _label_range(x)
        _check_range(lo, hi, name, c)
    idx = t.astype(np.intp).ravel()
    idx *= c
    idx += p.ravel()
    cm = np.bincount(idx, minlength=c * c)
    return cm.reshape(c, c).astype(np.int64, copy=False)


def counts_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class true positives, false positives and false negatives from a confusion matrix.

    Args:
        cm: ``(C, C)`` confusion matrix, rows = truth, columns = prediction.

    Returns:
        ``(C, 3)`` int64 array with columns ``tp, fp, fn``.

    Raises:
        ValueError: if ``cm`` is not square 2-D.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return np.stack([tp, fp, fn], axis=1).astype(np.int64, copy=False)


def region_counts_from_confusion(
    cm: np.ndarray, regions: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """tp / fp / fn of each region (a union of classes) from a confusion matrix.

    For a region ``R``: tp = voxels with truth in ``R`` and prediction in ``R``,
    fp = truth outside ``R`` and prediction in ``R``, fn = truth in ``R`` and
    prediction outside ``R``. This is exact, not an approximation: a prediction of
    class 1 where the truth is class 3 is a true positive for WT and TC.

    Args:
        cm: ``(C, C)`` confusion matrix, rows = truth, columns = prediction.
        regions: mapping region name -> class ids.

    Returns:
        ``{name: (3,) int64 array [tp, fp, fn]}`` in the order of ``regions``.

    Raises:
        ValueError: if ``cm`` is not square or a region uses a class outside ``[0, C)``.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    regs = _check_regions(regions, cm.shape[0])
    out: dict[str, np.ndarray] = {}
    for name, cls in regs.items():
        inside = np.zeros(cm.shape[0], dtype=bool)
        inside[list(cls)] = True
        tp = cm[np.ix_(inside, inside)].sum()
        fp = cm[np.ix_(~inside, inside)].sum()
        fn = cm[np.ix_(inside, ~inside)].sum()
        out[name] = np.array([tp, fp, fn], dtype=np.int64)
    return out


def confusion_counts(pred: Any, target: Any, num_classes: int) -> np.ndarray:
    """Per-class tp / fp / fn of two label maps.

    Args:
        pred: predicted labels, integer or bool array/tensor of any shape ``S``.
        target: ground-truth labels, same shape ``S``.
        num_classes: number of classes ``C``.

    Returns:
        ``(C, 3)`` int64 array with columns ``tp, fp, fn``.

    Raises:
        ValueError: on shape mismatch, non-integer dtype or labels outside ``[0, C)``.
    """
    return counts_from_confusion(confusion_matrix(pred, target, num_classes))


# --------------------------------------------------------------------------------------
# overlap scores
# --------------------------------------------------------------------------------------


def _split_counts(counts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.asarray(counts)
    if c.ndim < 1 or c.shape[-1] != 3:
        raise ValueError(f"counts must have a last dimension of 3 (tp, fp, fn), got shape {c.shape}")
    c = c.astype(np.float64)
    if np.any(c < 0):
        raise ValueError("counts must be non-negative")
    return c[..., 0], c[..., 1], c[..., 2]


def dice_from_counts(counts: Any, empty: float = 1.0) -> np.ndarray:
    """Dice = 2 tp / (2 tp + fp + fn) from counts.

    Args:
        counts: ``(..., 3)`` array of ``tp, fp, fn`` (e.g. ``(C, 3)`` per class).
        empty: value when truth and prediction are both empty (``tp = fp = fn = 0``);
            the BraTS rule is 1. When only one of them is empty the formula gives 0.

    Returns:
        float64 array of shape ``counts.shape[:-1]``.

    Raises:
        ValueError: if the last dimension is not 3 or a count is negative.
    """
    tp, fp, fn = _split_counts(counts)
    den = 2.0 * tp + fp + fn
    out = np.full(den.shape, float(empty), dtype=np.float64)
    np.divide(2.0 * tp, den, out=out, where=den > 0)
    return out


def iou_from_counts(counts: Any, empty: float = 1.0) -> np.ndarray:
    """IoU (Jaccard) = tp / (tp + fp + fn) from counts.

    Args:
        counts: ``(..., 3)`` array of ``tp, fp, fn``.
        empty: value when truth and prediction are both empty (BraTS-style rule: 1).

    Returns:
        float64 array of shape ``counts.shape[:-1]``.

    Raises:
        ValueError: if the last dimension is not 3 or a count is negative.
    """
    tp, fp, fn = _split_counts(counts)
    den = tp + fp + fn
    out = np.full(den.shape, float(empty), dtype=np.float64)
    np.divide(tp, den, out=out, where=den > 0)
    return out


def _ratio_with_empty_rule(num: np.ndarray, den: np.ndarray, any_voxel: np.ndarray, empty: float) -> np.ndarray:
    """``num / den``; where ``den`` is 0: ``empty`` if the class is absent from both truth
    and prediction, else 0."""
    out = np.where(any_voxel, 0.0, float(empty)).astype(np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_from_counts(counts: Any, empty: float = 1.0) -> np.ndarray:
    """Precision (positive predictive value) = tp / (tp + fp) from counts.

    Args:
        counts: ``(..., 3)`` array of ``tp, fp, fn``.
        empty: value when truth and prediction are both empty (as for Dice). When only the
            prediction is empty (tp + fp = 0 < fn) the precision is 0.

    Returns:
        float64 array of shape ``counts.shape[:-1]``.

    Raises:
        ValueError: if the last dimension is not 3 or a count is negative.
    """
    tp, fp, fn = _split_counts(counts)
    return _ratio_with_empty_rule(tp, tp + fp, tp + fp + fn > 0, empty)


def recall_from_counts(counts: Any, empty: float = 1.0) -> np.ndarray:
    """Recall (sensitivity) = tp / (tp + fn) from counts.

    Args:
        counts: ``(..., 3)`` array of ``tp, fp, fn``.
        empty: value when truth and prediction are both empty (as for Dice). When only the
            truth is empty (tp + fn = 0 < fp) the recall is 0.

    Returns:
        float64 array of shape ``counts.shape[:-1]``.

    Raises:
        ValueError: if the last dimension is not 3 or a count is negative.
    """
    tp, fp, fn = _split_counts(counts)
    return _ratio_with_empty_rule(tp, tp + fn, tp + fp + fn > 0, empty)


def dice(pred: Any, target: Any, num_classes: int, empty: float = 1.0) -> np.ndarray:
    """Per-class Dice of two label maps.

    Args:
        pred: predicted labels, shape ``S``.
        target: true labels, shape ``S``.
        num_classes: number of classes ``C``.
        empty: Dice of a class absent from both (BraTS rule: 1).

    Returns:
        ``(C,)`` float64 array, background included at index 0.

    Raises:
        ValueError: see :func:`confusion_matrix`.
    """
    return dice_from_counts(confusion_counts(pred, target, num_classes), empty=empty)


def iou(pred: Any, target: Any, num_classes: int, empty: float = 1.0) -> np.ndarray:
    """Per-class IoU of two label maps.

    Args:
        pred: predicted labels, shape ``S``.
        target: true labels, shape ``S``.
        num_classes: number of classes ``C``.
        empty: IoU of a class absent from both (default 1).

    Returns:
        ``(C,)`` float64 array, background included at index 0.

    Raises:
        ValueError: see :func:`confusion_matrix`.
    """
    return iou_from_counts(confusion_counts(pred, target, num_classes), empty=empty)


def pixel_accuracy(pred: Any, target: Any) -> float:
    """Fraction of voxels whose predicted label equals the true label (background included).

    Args:
        pred: predicted labels, shape ``S``.
        target: true labels, shape ``S``.

    Returns:
        accuracy in ``[0, 1]``.

    Raises:
        ValueError: on shape mismatch, non-integer dtype or empty input.
    """
    p = _to_numpy(pred, "pred")
    t = _to_numpy(target, "target")
    _check_label_dtype(p, "pred")
    _check_label_dtype(t, "target")
    _check_pair(p, t)
    if p.size == 0:
        raise ValueError("pixel_accuracy of empty arrays is undefined")
    return float(np.count_nonzero(p == t) / p.size)


def _largest_class_id(regs: Mapping[str, tuple[int, ...]], *arrays: tuple[np.ndarray, str]) -> int:
    """Largest class id among the regions and the (named) label arrays.

    Raises:
        ValueError: a negative label, or values too large to be class ids.
    """
    top = max(max(cls) for cls in regs.values())
    for x, name in arrays:
        if x.size:
            lo, hi = _label_range(x)
            if lo < 0:
                raise ValueError(f"{name} must hold non-negative class ids, got a minimum of {lo}")
            top = max(top, hi)
    if top > 65535:
        raise ValueError(f"label values up to {top} are not class ids; map them to contiguous classes first")
    return top


def region_masks(labels: Any, regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Boolean masks of the regions (unions of classes) in a label map.

    Args:
        labels: integer label map of shape ``S`` (internal classes; BraTS ET = 3).
        regions: mapping region name -> class ids (e.g. BraTS ``{"WT": (1, 2, 3), ...}``).

    Returns:
        ``{name: bool array of shape S}``.

    Raises:
        ValueError: on a non-integer dtype or a malformed region mapping.
    """
    lab = _to_numpy(labels, "labels")
    _check_label_dtype(lab, "labels")
    regs = _check_regions(regions, None)
    if not regs:
        return {}
    top = _largest_class_id(regs, (lab, "labels"))
    idx = lab.astype(np.intp, copy=False) if lab.dtype != np.bool_ else lab.view(np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, cls in regs.items():
        lut = np.zeros(top + 1, dtype=bool)  # lookup table: much faster than np.isin
        lut[list(cls)] = True
        out[name] = lut[idx]
    return out


def region_dice(
    pred: Any, target: Any, regions: Mapping[str, Sequence[int]], empty: float = 1.0
) -> dict[str, float]:
    """Dice of each region (BraTS WT / TC / ET by default).

    Args:
        pred: predicted labels, shape ``S``.
        target: true labels, shape ``S``.
        regions: mapping region name -> class ids.
        empty: Dice when the region is empty in both (BraTS rule: 1); 0 when empty in
            only one of them.

    Returns:
        ``{name: dice}``.

    Raises:
        ValueError: on shape mismatch, non-integer dtype or a malformed region mapping.
    """
    p = _to_numpy(pred, "pred")
    t = _to_numpy(target, "target")
    _check_label_dtype(p, "pred")
    _check_label_dtype(t, "target")
    _check_pair(p, t)
    regs = _check_regions(regions, None)
    if not regs:
        return {}
    top = _largest_class_id(regs, (p, "pred"), (t, "target"))
    # one bincount over the labels present, then exact region counts from the matrix
    cm = confusion_matrix(p, t, top + 1)
    rc = region_counts_from_confusion(cm, regs)
    return {name: float(dice_from_counts(k, empty=empty)) for name, k in rc.items()}


# --------------------------------------------------------------------------------------
# surface distance
# --------------------------------------------------------------------------------------


def _binary_pair(pred_mask: Any, target_mask: Any, spacing: Any, what: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Two checked boolean masks of one shape (1-3 dimensions) and the spacing, one value per axis.

    Raises:
        ValueError: on shape mismatch, non-binary / float masks, missing or invalid spacing,
            or masks that are not 1-3 dimensional.
    """
    p = _to_numpy(pred_mask, "pred_mask")
    t = _to_numpy(target_mask, "target_mask")
    _check_label_dtype(p, "pred_mask")
    _check_label_dtype(t, "target_mask")
    _check_pair(p, t)
    if p.ndim not in (1, 2, 3):
        raise ValueError(f"{what} expects 1-D, 2-D or 3-D masks, got {p.ndim} dimensions with shape {p.shape}")
    for x, name in ((p, "pred_mask"), (t, "target_mask")):
        if x.dtype != np.bool_ and x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"{name} must be binary (bool or 0/1); for a label map use region_masks() or labels == k"
            )
    sp = _check_spacing(spacing, p.ndim)
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
        value = compute_hausdorff_distance(
            p[None, None], t[None, None], include_background=True, percentile=95, spacing=list(sp)
        )
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
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) \
            or not math.isfinite(tolerance) or tolerance < 0:
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
        value = compute_surface_dice(torch.from_numpy(np.ascontiguousarray(p))[None, None],
                                     torch.from_numpy(np.ascontiguousarray(t))[None, None],
                                     class_thresholds=[float(tolerance)], include_background=True, spacing=list(sp))
    return float(value.reshape(-1)[0])


# --------------------------------------------------------------------------------------
# per-case metrics
# --------------------------------------------------------------------------------------


def _check_key_collisions(names: Sequence[str], regions: Mapping[str, tuple[int, ...]]) -> None:
    """A region may share a name with a class only if it *is* that class (BraTS ET)."""
    for rname, cls in regions.items():
        if rname in names and cls != (names.index(rname),):
            raise ValueError(
                f"region {rname!r} has the same name as class {names.index(rname)} but covers classes "
                f"{cls}; their metric keys would collide. Rename the region or the class."
            )


def metrics_from_confusion(
    cm: np.ndarray,
    regions: Mapping[str, Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
    empty: float = 1.0,
) -> dict[str, float]:
    """Flat metric dict (see :func:`case_metrics`) from a ``(C, C)`` confusion matrix.

    Args:
        cm: confusion matrix, rows = truth, columns = prediction.
        regions: mapping region name -> class ids, or None for no region metrics.
        class_names: ``C`` names used in the keys; default ``class0 .. class{C-1}``.
        empty: Dice/IoU of a class or region absent from both truth and prediction.

    Returns:
        ``{key: value}``: ``dice_<name>``, ``iou_<name>`` per class, ``dice_mean``,
        ``iou_mean`` (foreground classes only), ``iou_mean_all`` (all classes), ``accuracy``,
        ``precision_<name>``, ``recall_<name>`` per class, ``precision_mean``,
        ``recall_mean`` (foreground classes only), then ``dice_<region>``, ``iou_<region>``,
        ``precision_<region>``, ``recall_<region>``.

    Raises:
        ValueError: if ``cm`` is malformed, has fewer than 2 classes or counts no voxel,
            or if names collide.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    c = cm.shape[0]
    if c < 2:
        raise ValueError("need at least 2 classes (background + one foreground class)")
    total = int(cm.sum())
    if total == 0:
        raise ValueError("the confusion matrix counts no voxel; metrics are undefined for empty inputs")
    names = _resolve_class_names(c, class_names)
    regs = _check_regions(regions, c)
    _check_key_collisions(names, regs)

    counts = counts_from_confusion(cm)
    d = dice_from_counts(counts, empty)
    j = iou_from_counts(counts, empty)
    out: dict[str, float] = {}
    for i, n in enumerate(names):
        out[f"dice_{n}"] = float(d[i])
    for i, n in enumerate(names):
        out[f"iou_{n}"] = float(j[i])
    out["dice_mean"] = float(d[1:].mean())
    out["iou_mean"] = float(j[1:].mean())
    out["iou_mean_all"] = float(j.mean())
    out["accuracy"] = float(np.trace(cm) / total)
    prec, rec = precision_from_counts(counts, empty), recall_from_counts(counts, empty)
    for i, n in enumerate(names):
        out[f"precision_{n}"] = float(prec[i])
    for i, n in enumerate(names):
        out[f"recall_{n}"] = float(rec[i])
    out["precision_mean"] = float(prec[1:].mean())
    out["recall_mean"] = float(rec[1:].mean())
    if regs:
        rc = region_counts_from_confusion(cm, regs)
        for metric, fn in (("dice", dice_from_counts), ("iou", iou_from_counts), ("precision", precision_from_counts),
                           ("recall", recall_from_counts)):
            for name, k in rc.items():
                out[f"{metric}_{name}"] = float(fn(k, empty))
    return out


def case_metrics(
    pred: Any,
    target: Any,
    num_classes: int,
    spacing: Any = None,
    regions: Mapping[str, Sequence[int]] | None = None,
    with_hd95: bool = False,
    class_names: Sequence[str] | None = None,
    empty: float = 1.0,
    hd95_one_empty: float = math.inf,
    surface_tolerance_mm: float | None = None,
) -> dict[str, float]:
    """All metrics of one case as a flat ``{name: float}`` dict (one CSV row).

    Keys:

    * ``dice_<class>``, ``iou_<class>`` for every class, background included
      (class names from ``class_names``; default ``class0 ..``).
    * ``dice_mean``, ``iou_mean``: mean over the **foreground classes 1..C-1 only**
      (background excluded), each absent-from-both class counting as 1.
    * ``iou_mean_all``: mean IoU over **all** classes, background included (Keras'
      ``MeanIoU``, the "mean IoU" of paper 003).
    * ``accuracy``: voxel accuracy, background included.
    * ``precision_<class>``, ``recall_<class>`` for every class; ``precision_mean``,
      ``recall_mean`` over the foreground classes (same empty rule as Dice).
    * ``dice_<region>``, ``iou_<region>``, ``precision_<region>``, ``recall_<region>`` for
      every region (BraTS: WT, TC, ET). With the default names ``dice_ET`` is both the
      class-3 and the ET-region Dice: they are the same quantity.
    * ``hd95_<region>`` (mm) if ``with_hd95``; see :func:`hd95` for the definition and
      the empty-mask rule; ``hd95_mean`` their mean (over regions, or foreground classes).
    * ``surface_dice_<region>`` if ``surface_tolerance_mm`` is given; see :func:`surface_dice`.

    The distance metrics (HD95, surface Dice) are computed per region; for a task without
    regions, per foreground class (keys ``hd95_<class>``, ``surface_dice_<class>``).

    Args:
        pred: predicted label map, shape ``S`` (a 2-D slice or 3-D volume).
        target: true label map, shape ``S``.
        num_classes: number of classes ``C`` (labels in ``[0, C)``).
        spacing: voxel size (mm), a number or one per dimension of ``S``; required when
            ``with_hd95``.
        regions: region name -> class ids, or None for tasks without regions (e.g. a
            binary task with ``num_classes=2``).
        with_hd95: also compute HD95 (slower: surface distances).
        class_names: names for the keys, length ``C``.
        empty: Dice/IoU/precision/recall/surface Dice when a class or region is absent from both.
        hd95_one_empty: HD95 when a region is empty in exactly one of the two.
        surface_tolerance_mm: also compute the surface Dice at this tolerance (units of
            ``spacing``); None (default) skips it.

    Returns:
        flat dict of floats.

    Raises:
        ValueError: on shape mismatch, out-of-range labels, float dtypes, regions using
            classes ``>= C``, a distance metric without spacing, or a negative tolerance.
    """
    c = _check_num_classes(num_classes)
    regs = _check_regions(regions, c)
    cm = confusion_matrix(pred, target, c)
    out = metrics_from_confusion(cm, regs, class_names, empty)
    if with_hd95 or surface_tolerance_mm is not None:
        p = _to_numpy(pred, "pred")
        t = _to_numpy(target, "target")
        _check_spacing(spacing, p.ndim)  # fail before any distance computation
        names = _resolve_class_names(c, class_names)
        where = regs or {names[i]: (i,) for i in range(1, c)}
        pm = region_masks(p, where)
        tm = region_masks(t, where)
        if with_hd95:
            for name in where:
                out[f"hd95_{name}"] = hd95(pm[name], tm[name], spacing, hd95_one_empty)
            out["hd95_mean"] = float(np.mean([out[f"hd95_{name}"] for name in where]))
        if surface_tolerance_mm is not None:
            for name in where:
                out[f"surface_dice_{name}"] = surface_dice(pm[name], tm[name], spacing, surface_tolerance_mm, empty)
    return out


# --------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, float, np.integer, np.floating)):
        return True
    if _is_tensor(v) and v.numel() == 1 and not v.dtype == torch.bool:
        return True
    return False


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, median and count of every numeric metric over cases.

    Non-numeric values (e.g. the ``'case'`` id) and booleans are ignored. A key missing
    from some rows is summarised over the rows that have it. NaN values propagate (a NaN
    metric is a bug to look at, not something to hide).

    Args:
        rows: one dict per case, as returned by :func:`case_metrics` or
            :meth:`MetricAccumulator.per_case`.

    Returns:
        ``{key: {"mean", "std", "median", "n"}}`` in first-seen key order; ``std`` uses
        ``ddof=1`` when ``n > 1`` and is 0 for a single case.

    Raises:
        ValueError: if ``rows`` is not a sequence of mappings.
    """
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise ValueError("rows must be a list of per-case dicts")
    values: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] is a {type(row).__name__}, expected a dict of metrics")
        for k, v in row.items():
            if _is_number(v):
                values.setdefault(str(k), []).append(float(v))
    out: dict[str, dict[str, float]] = {}
    for k, vs in values.items():
        a = np.asarray(vs, dtype=np.float64)
        n = a.size
        out[k] = {
            "mean": float(a.mean()),
            "std": float(a.std(ddof=1)) if n > 1 else 0.0,
            "median": float(np.median(a)),
            "n": int(n),
        }
    return out


class MetricAccumulator:
    """Accumulates a confusion matrix per case, so slices of a case need not be kept.

    ``update`` may be called with any number of slices / patches of a case, in any
    order; per-case metrics (class and region Dice / IoU / precision / recall, accuracy)
    are computed from the summed confusion matrix, so they equal :func:`case_metrics` on
    the whole volume. HD95 and surface Dice are not available here (they need the whole
    mask): use :func:`case_metrics` on reassembled volumes for those.

    Args:
        num_classes: number of classes ``C``.
        regions: region name -> class ids, or None.
        class_names: names for the metric keys (see :func:`case_metrics`).
        empty: Dice/IoU of a class or region absent from both.

    Raises:
        ValueError: on invalid ``num_classes``, regions or class names.

    Example::

        acc = MetricAccumulator(4, regions={"WT": (1, 2, 3)}, class_names=names)
        for batch in loader:                      # slices of many patients
            acc.update(pred_labels, batch["label"], batch["case_id"])  # one id per slice
        rows = acc.per_case(); stats = acc.summary()
    """

    def __init__(
        self,
        num_classes: int,
        regions: Mapping[str, Sequence[int]] | None = None,
        class_names: Sequence[str] | None = None,
        empty: float = 1.0,
    ) -> None:
        self.num_classes = _check_num_classes(num_classes)
        if self.num_classes < 2:
            raise ValueError("need at least 2 classes (background + one foreground class)")
        self.regions = _check_regions(regions, self.num_classes)
        self.class_names = _resolve_class_names(self.num_classes, class_names)
        self.empty = float(empty)
        _check_key_collisions(self.class_names, self.regions)
        self._cms: dict[Any, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._cms)

    def reset(self) -> None:
        """Forget all cases."""
        self._cms.clear()

    def update(self, pred: Any, target: Any, case_id: Any) -> None:
        """Add the voxels of ``pred`` / ``target`` to one or several cases.

        Args:
            pred: predicted labels, shape ``S`` or a batch ``(B, *S)``.
            target: true labels, same shape.
            case_id: a single id (str / int) for all voxels, or a sequence of ``B`` ids,
                one per item along the first dimension (a batch mixing cases).

        Raises:
            ValueError: on shape mismatch, out-of-range labels, or a case_id sequence
                whose length differs from the batch size.
        """
        if isinstance(case_id, (list, tuple)) or (
            isinstance(case_id, np.ndarray) and case_id.ndim == 1
        ) or (_is_tensor(case_id) and case_id.ndim == 1):
            ids = [cid.item() if hasattr(cid, "item") else cid for cid in case_id]
            if len(pred.shape) == 0 or pred.shape[0] != len(ids):
                raise ValueError(
                    f"got {len(ids)} case ids for a batch of shape {tuple(pred.shape)}; pass one id per item "
                    "along the first dimension, or a single id"
                )
            _check_pair(pred, target)
            # group items by case so each case is counted with one bincount
            groups: dict[Any, list[int]] = {}
            for i, cid in enumerate(ids):
                groups.setdefault(cid, []).append(i)
            for cid, idx in groups.items():
                if len(idx) == len(ids):
                    self._add(cid, confusion_matrix(pred, target, self.num_classes))
                else:
                    sel = torch.as_tensor(idx, device=pred.device) if _is_tensor(pred) else np.asarray(idx)
                    tsel = torch.as_tensor(idx, device=target.device) if _is_tensor(target) else np.asarray(idx)
                    self._add(cid, confusion_matrix(pred[sel], target[tsel], self.num_classes))
            return
        if _is_tensor(case_id) or isinstance(case_id, np.generic):
            case_id = case_id.item()
        self._add(case_id, confusion_matrix(pred, target, self.num_classes))

    def _add(self, case_id: Any, cm: np.ndarray) -> None:
        try:
            hash(case_id)
        except TypeError as exc:
            raise ValueError(f"case_id must be hashable (str or int), got {type(case_id).__name__}") from exc
        if case_id in self._cms:
            self._cms[case_id] += cm
        else:
            self._cms[case_id] = cm.astype(np.int64, copy=True)

    def confusion(self, case_id: Any) -> np.ndarray:
        """The accumulated ``(C, C)`` confusion matrix of one case (a copy).

        Raises:
            KeyError: if the case was never updated.
        """
        return self._cms[case_id].copy()

    def per_case(self) -> list[dict[str, Any]]:
        """Metrics of every case, in first-seen order.

        Returns:
            list of dicts: ``{'case': case_id, **metrics}`` with the keys of
            :func:`case_metrics` (without HD95).
        """
        rows = []
        for cid, cm in self._cms.items():
            row: dict[str, Any] = {"case": cid}
            row.update(metrics_from_confusion(cm, self.regions, self.class_names, self.empty))
            rows.append(row)
        return rows

    def summary(self) -> dict[str, dict[str, float]]:
        """:func:`summarize` of :meth:`per_case`."""
        return summarize(self.per_case())


@dataclass(frozen=True)
class ScoringRules:
    """How a data set is scored: its classes, its evaluation regions and its empty-mask rule.

    Supplied by a data format (:mod:`pdeseg.data.formats`); the metrics themselves carry
    no data-set defaults.

    Attributes:
        class_names: names of the contiguous classes ``0..C-1`` (class 0 is background).
        regions: region name -> class ids (BraTS: WT, TC, ET), or empty.
        empty: Dice/IoU when a class or region is absent from both truth and prediction.
        hd95_one_empty: HD95 when a region is empty in exactly one of them.
    """

    class_names: tuple[str, ...]
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    empty: float = 1.0
    hd95_one_empty: float = math.inf

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def accumulator(self) -> MetricAccumulator:
        """An empty per-case confusion accumulator with these rules."""
        return MetricAccumulator(self.num_classes, dict(self.regions) or None, self.class_names, self.empty)

    def case_metrics(self, pred: Any, target: Any, spacing: Any = None, with_hd95: bool = False,
                     surface_tolerance_mm: float | None = None) -> dict[str, float]:
        """:func:`case_metrics` with these rules (surface Dice only when ``surface_tolerance_mm`` is given)."""
        return case_metrics(pred, target, self.num_classes, spacing, dict(self.regions) or None, with_hd95,
                            self.class_names, self.empty, self.hd95_one_empty, surface_tolerance_mm)
