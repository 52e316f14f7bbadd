"""Overlap metrics from voxel counts: the confusion matrix, Dice, IoU, precision, recall, accuracy and regions.

One :func:`numpy.bincount` (or :func:`torch.bincount` on the tensor's own device) over ``target * C + pred`` gives
the ``(C, C)`` confusion matrix (:func:`confusion_matrix`). Per-class tp / fp / fn
(:func:`counts_from_confusion`) and the tp / fp / fn of any region, a union of classes such as BraTS WT
(:func:`region_counts_from_confusion`), follow exactly from it, and the scores follow from the counts:
Dice 2 tp / (2 tp + fp + fn), IoU tp / (tp + fp + fn), precision tp / (tp + fp), recall tp / (tp + fn), each with
an ``empty`` value for a class absent from both truth and prediction. :func:`dice`, :func:`iou`,
:func:`pixel_accuracy`, :func:`region_masks` and :func:`region_dice` take label maps directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pdeseg.metrics.segmentation._inputs import (
    check_label_dtype,
    check_num_classes,
    check_pair,
    check_range,
    check_regions,
    is_tensor,
    label_range,
    to_numpy,
    torch,
)


__all__ = [
    "confusion_counts",
    "confusion_matrix",
    "counts_from_confusion",
    "dice",
    "dice_from_counts",
    "iou",
    "iou_from_counts",
    "pixel_accuracy",
    "precision_from_counts",
    "recall_from_counts",
    "region_counts_from_confusion",
    "region_dice",
    "region_masks",
]


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
    c = check_num_classes(num_classes)
    if is_tensor(pred) and is_tensor(target) and (pred.device.type != "cpu" or target.device.type != "cpu"):
        # accelerator tensors: count where they live (CPU tensors take the faster numpy path)
        check_label_dtype(pred, "pred")
        check_label_dtype(target, "target")
        check_pair(pred, target)
        if pred.device != target.device:
            raise ValueError(f"pred and target are on different devices ({pred.device} and {target.device})")
        if pred.numel() == 0:
            return np.zeros((c, c), dtype=np.int64)
        p = pred.reshape(-1).long()
        t = target.reshape(-1).long()
        for x, name in ((p, "pred"), (t, "target")):
            lo, hi = torch.aminmax(x)
            check_range(int(lo), int(hi), name, c)
        cm = torch.bincount(t * c + p, minlength=c * c)
        return cm.reshape(c, c).cpu().numpy().astype(np.int64, copy=False)

    p = to_numpy(pred, "pred")
    t = to_numpy(target, "target")
    check_label_dtype(p, "pred")
    check_label_dtype(t, "target")
    check_pair(p, t)
    if p.size == 0:
        return np.zeros((c, c), dtype=np.int64)
    for x, name in ((p, "pred"), (t, "target")):
        lo, hi = label_range(x)
        check_range(lo, hi, name, c)
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


def region_counts_from_confusion(cm: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
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
    regs = check_regions(regions, cm.shape[0])
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
    p = to_numpy(pred, "pred")
    t = to_numpy(target, "target")
    check_label_dtype(p, "pred")
    check_label_dtype(t, "target")
    check_pair(p, t)
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
            lo, hi = label_range(x)
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
    lab = to_numpy(labels, "labels")
    check_label_dtype(lab, "labels")
    regs = check_regions(regions, None)
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


def region_dice(pred: Any, target: Any, regions: Mapping[str, Sequence[int]], empty: float = 1.0) -> dict[str, float]:
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
    p = to_numpy(pred, "pred")
    t = to_numpy(target, "target")
    check_label_dtype(p, "pred")
    check_label_dtype(t, "target")
    check_pair(p, t)
    regs = check_regions(regions, None)
    if not regs:
        return {}
    top = _largest_class_id(regs, (p, "pred"), (t, "target"))
    # one bincount over the labels present, then exact region counts from the matrix
    cm = confusion_matrix(p, t, top + 1)
    rc = region_counts_from_confusion(cm, regs)
    return {name: float(dice_from_counts(k, empty=empty)) for name, k in rc.items()}
