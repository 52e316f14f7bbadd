"""Cell-instance scoring and instance extraction: DSB score, boundary F1, splits and merges.

Everything here works on **instance label images**: integer arrays of shape ``S`` (2-D
``(H, W)``, or 3-D ``(H, W, D)`` where noted), where 0 is background and every positive
integer is one object. Labels need not be contiguous (``{0, 3, 17, 1000}`` is fine) and
their order means nothing. Float arrays and negative labels are rejected with a
``ValueError`` naming the argument, never rounded or clipped silently. Numpy arrays and
torch tensors (moved to the CPU) are accepted; this module does not import torch itself.

Scoring (see ``DESIGN.md``, "Cell-instance scoring"):

* :func:`match_instances`: the IoU of every (predicted, true) pair of objects, counted
  with one :func:`numpy.bincount` over the pixels where both are foreground, so images
  with thousands of objects are fast.
* :func:`dsb_score`: the Data Science Bowl 2018 score, the mean over IoU thresholds
  ``t = 0.5, 0.55, ..., 0.95`` of ``TP / (TP + FP + FN)`` after one-to-one matching.
  :func:`ap50` is that ratio at ``t = 0.5`` alone: the DSB/StarDist "AP", **not** COCO's
  ranked average precision (no confidence scores are involved).
* :func:`split_merge_counts`: over-segmented (split) true cells and under-segmented
  (merged) predicted instances, by a majority-overlap rule stated there.
* :func:`boundary_f1`, :func:`boundary_f1_scores`: precision / recall / F1 of boundary
  pixels within a distance tolerance.
* :func:`instance_metrics`: one row of numbers per image.

Extraction (the network outputs a mask, or three classes background / interior / boundary),
defined in :mod:`pdeseg.data.pipeline.label_geometry` (where the training targets are made) and re-exported
here:

* :func:`instances_from_mask`: connected components of a binary mask.
* :func:`instances_from_boundary_classes`: marker-controlled watershed, markers = connected
  components of the interior class, flooded over interior + boundary; this separates
  touching cells that the network split with a boundary line.
* :func:`boundary_targets`: the 3-class training target made from an instance label image.

Boundary pixels (one rule throughout this module, :func:`skimage.segmentation.find_boundaries`
with ``mode='inner'`` and ``connectivity=1``): a pixel is a boundary pixel when it belongs to
an object and at least one of its face neighbours (4 in 2-D, 6 in 3-D) inside the image has
a different label (background or another object). **The image border is not a boundary**:
pixels outside the image are not neighbours, so an object cut by the image frame has no
boundary along the frame, and a mask that fills the whole image has no boundary at all
(:func:`boundary_f1` can count the frame instead, ``image_border=True``).

Dependencies: numpy, scipy (``ndimage``, ``optimize``); scikit-image through :mod:`pdeseg.data.pipeline.label_geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from pdeseg.data.pipeline.label_geometry import (
    _boundary,
    _labels,
    _relabel,
    boundary_targets,
    instances_from_boundary_classes,
    instances_from_mask,
)
from pdeseg.metrics.segmentation._inputs import check_spacing as segmentation_spacing

__all__ = [
    "DSB_THRESHOLDS",
    "ap50",
    "boundary_f1",
    "boundary_matches",
    "boundary_f1_scores",
    "boundary_targets",
    "dsb_score",
    "instance_metrics",
    "instances_from_boundary_classes",
    "instances_from_mask",
    "match_instances",
    "split_merge_counts",
]

#: The DSB 2018 IoU thresholds 0.5, 0.55, ..., 0.95, rounded to two decimals so that an IoU
#: of exactly 0.6 (e.g. 60 / 100 pixels) compares equal to the threshold 0.6 rather than to
#: ``np.arange``'s 0.6000000000000001.
DSB_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2))


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, true: np.ndarray, pred_name: str, true_name: str) -> None:
    if pred.shape != true.shape:
        raise ValueError(f"{pred_name} and {true_name} must have the same shape, got {pred.shape} and {true.shape}")


def _instance_pair(pred_inst: Any, true_inst: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _labels(pred_inst, "pred_inst")
    t = _labels(true_inst, "true_inst")
    _check_pair(p, t, "pred_inst", "true_inst")
    return p, t


def _check_fraction(value: Any, name: str, lo_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > 0 if lo_open else v >= 0) and v <= 1
    if not ok:
        interval = "(0, 1]" if lo_open else "[0, 1]"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _check_spacing(spacing: Any, ndim: int) -> np.ndarray:
    """One positive, finite voxel size per axis (``None`` -> all 1, distances in pixels); the
    rules of :func:`pdeseg.metrics.hd95` (one number for every axis, or one per axis)."""
    if spacing is None:
        return np.ones(ndim)
    return np.asarray(segmentation_spacing(spacing, ndim))


# --------------------------------------------------------------------------------------
# overlaps
# --------------------------------------------------------------------------------------


class _Overlap:
    """Objects of a (pred, true) pair and the pixel counts of every overlapping pair of objects.

    ``pi``, ``ti`` (0-based object indices) and ``inter`` list only the pairs that share at
    least one pixel (sparse); ``iou`` is their intersection over union.
    """

    def __init__(self, pred: np.ndarray, true: np.ndarray):
        p, self.pred_labels, self.pred_areas = _relabel(pred)
        t, self.true_labels, self.true_areas = _relabel(true)
        n_p, n_t = self.pred_labels.size, self.true_labels.size
        both = (p > 0) & (t > 0)
        codes = (p[both] - 1).astype(np.int64) * max(n_t, 1) + (t[both] - 1)
        if n_p * n_t <= 4 * codes.size + (1 << 20):
            counts = np.bincount(codes, minlength=n_p * n_t)
            pair = np.flatnonzero(counts)
            inter = counts[pair]
        else:  # many objects, few overlapping pixels: sort instead of a dense table
            pair, inter = np.unique(codes, return_counts=True)
        self.pi, self.ti = np.divmod(pair, max(n_t, 1))
        self.inter = inter.astype(np.int64)
        union = self.pred_areas[self.pi] + self.true_areas[self.ti] - self.inter
        self.iou = self.inter / union

    @property
    def n_pred(self) -> int:
        return int(self.pred_labels.size)

    @property
    def n_true(self) -> int:
        return int(self.true_labels.size)

    def dense_iou(self) -> np.ndarray:
        m = np.zeros((self.n_pred, self.n_true), dtype=np.float64)
        m[self.pi, self.ti] = self.iou
        return m

    def true_positives(self, t: float) -> int:
        """Pairs matched one-to-one with IoU > ``t``.

        For ``t >= 0.5`` no matching is needed: a predicted object with IoU > 0.5 with two
        disjoint true objects would have more than half of its pixels in each, so every
        object has at most one partner above the threshold and TP is just the number of
        pairs above it. Below 0.5 pairs can compete; the assignment that maximises the
        number of pairs above ``t`` (ties broken by the larger total IoU) is found with
        :func:`scipy.optimize.linear_sum_assignment`, as StarDist does.
        """
        above = self.iou > t
        if t >= 0.5:
            return int(np.count_nonzero(above))
        if not above.any():
            return 0
        rows, r = np.unique(self.pi[above], return_inverse=True)
        cols, c = np.unique(self.ti[above], return_inverse=True)
        gain = np.zeros((rows.size, cols.size))
        gain[r, c] = 1.0 + self.iou[above] / (2.0 * min(rows.size, cols.size))  # count first, then IoU
        ri, ci = linear_sum_assignment(gain, maximize=True)
        return int(np.count_nonzero(gain[ri, ci] > 0))


def _check_thresholds(thresholds: Any) -> np.ndarray:
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if th.ndim != 1 or th.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence of IoU values, got {thresholds!r}")
    if not np.all(np.isfinite(th)) or np.any(th < 0) or np.any(th >= 1):
        raise ValueError(f"thresholds must lie in [0, 1), got {th.tolist()}")
    return th


def _dsb_per_threshold(ov: _Overlap, th: np.ndarray) -> np.ndarray:
    if ov.n_pred == 0 and ov.n_true == 0:
        return np.ones(th.size)
    out = np.empty(th.size)
    for k, t in enumerate(th):
        tp = ov.true_positives(float(t))
        fp, fn = ov.n_pred - tp, ov.n_true - tp
        out[k] = tp / (tp + fp + fn)
    return out


# --------------------------------------------------------------------------------------
# instance scores
# --------------------------------------------------------------------------------------


def match_instances(pred_inst: Any, true_inst: Any, return_labels: bool = False):
    """IoU of every pair of predicted and true objects.

    Args:
        pred_inst: predicted instance labels, integer array of shape ``S`` (2-D or 3-D);
            0 is background, each positive value one object (not necessarily contiguous).
        true_inst: true instance labels, same shape ``S``.
        return_labels: also return the object labels that index the rows and columns.

    Returns:
        ``iou`` of shape ``(n_pred, n_true)``, float64: ``iou[i, j]`` is the IoU of the
        ``i``-th predicted and the ``j``-th true object, objects taken in increasing label
        order. With ``return_labels``: ``(iou, pred_labels, true_labels)``, the labels as
        int64 arrays of lengths ``n_pred`` and ``n_true``.

    Raises:
        ValueError: on shape mismatch, float dtype, negative labels, or input that is not
            2-D or 3-D (the message names the argument).
    """
    p, t = _instance_pair(pred_inst, true_inst)
    ov = _Overlap(p, t)
    iou = ov.dense_iou()
    if return_labels:
        return iou, ov.pred_labels.copy(), ov.true_labels.copy()
    return iou


def dsb_score(pred_inst: Any, true_inst: Any, thresholds: Sequence[float] = DSB_THRESHOLDS,
              return_per_threshold: bool = False):
    """The Data Science Bowl 2018 score of one image.

    For each IoU threshold ``t``, objects are matched one-to-one; a match is a true
    positive when its IoU is **strictly greater** than ``t`` (the DSB rule; StarDist uses
    ``>=``). Unmatched predictions are false positives, unmatched true objects false
    negatives, and the image scores ``TP / (TP + FP + FN)`` at ``t``. The DSB score is the
    mean of that over the thresholds. For ``t >= 0.5`` matches above the threshold are
    unique by construction, so no matching algorithm is needed: an object with IoU > 0.5
    with two disjoint objects would have more than half of its pixels in each. Thresholds
    below 0.5 are allowed; there the matching maximises the number of pairs above ``t``
    (ties broken by the larger total IoU, :func:`scipy.optimize.linear_sum_assignment`).

    Empty images: 1.0 at every threshold when both have no objects, 0.0 when exactly one has.

    Args:
        pred_inst: predicted instance labels, integer array of shape ``S`` (2-D or 3-D).
        true_inst: true instance labels, same shape ``S``.
        thresholds: IoU thresholds in ``[0, 1)``; by default :data:`DSB_THRESHOLDS`
            (0.5, 0.55, ..., 0.95).
        return_per_threshold: also return the ratio at each threshold.

    Returns:
        the score, a float in ``[0, 1]``; with ``return_per_threshold``
        ``(score, per_threshold)``, ``per_threshold`` a float array aligned with ``thresholds``.

    Raises:
        ValueError: see :func:`match_instances`; or thresholds outside ``[0, 1)``.
    """
    th = _check_thresholds(thresholds)
    p, t = _instance_pair(pred_inst, true_inst)
    per = _dsb_per_threshold(_Overlap(p, t), th)
    score = float(per.mean())
    return (score, per) if return_per_threshold else score


def ap50(pred_inst: Any, true_inst: Any) -> float:
    """``TP / (TP + FP + FN)`` at IoU > 0.5: the DSB 2018 / StarDist "AP" at 0.5.

    This is **not** COCO's AP50 (area under a precision-recall curve of detections ranked by
    confidence); no scores are involved. It is :func:`dsb_score` with the single threshold
    0.5, with the same empty rules (1.0 when both are empty, 0.0 when one is).

    Args:
        pred_inst: predicted instance labels, integer array of shape ``S`` (2-D or 3-D).
        true_inst: true instance labels, same shape ``S``.

    Raises:
        ValueError: see :func:`match_instances`.
    """
    return dsb_score(pred_inst, true_inst, thresholds=(0.5,))


def _split_merge(ov: _Overlap, min_cover: float) -> tuple[int, int]:
    inter = ov.inter
    # predicted object i is a fragment of true object j: more than half of i lies in j
    # (so i is a fragment of at most one j) and i covers at least min_cover of j
    frag = (2 * inter > ov.pred_areas[ov.pi]) & (inter >= min_cover * ov.true_areas[ov.ti])
    n_frag = np.bincount(ov.ti[frag], minlength=ov.n_true)
    # true object j is absorbed by predicted object i: more than half of j lies in i
    absorbed = 2 * inter > ov.true_areas[ov.ti]
    n_abs = np.bincount(ov.pi[absorbed], minlength=ov.n_pred)
    return int(np.count_nonzero(n_frag >= 2)), int(np.count_nonzero(n_abs >= 2))


def split_merge_counts(pred_inst: Any, true_inst: Any, min_cover: float = 0.1) -> dict[str, int]:
    """Number of split true cells and of merged predicted instances.

    The rule (all areas in pixels):

    * **split**: a true cell ``T`` is split when at least two predicted instances ``P``
      are *fragments* of it, a fragment being a ``P`` with more than half of its own
      pixels inside ``T`` (``|P & T| > |P| / 2``, so a ``P`` is a fragment of at most one
      cell) that also covers at least ``min_cover`` of the cell (``|P & T| >= min_cover
      * |T|``, so a speck does not count). ``n_split`` counts true cells.
    * **merge**: a predicted instance ``P`` is merged when it holds more than half of each
      of at least two true cells (``|P & T| > |T| / 2`` for two or more ``T``).
      ``n_merged`` counts predicted instances (a blob swallowing three cells is 1 merge).

    Both conditions are majority rules, so a boundary drawn a pixel or two off (a prediction
    bleeding into its neighbour) is neither a split nor a merge.

    Args:
        pred_inst: predicted instance labels, integer array of shape ``S`` (2-D or 3-D).
        true_inst: true instance labels, same shape ``S``.
        min_cover: the smallest share of a true cell a fragment must cover, in ``(0, 1]``.

    Returns:
        ``{"n_split": int, "n_merged": int}``.

    Raises:
        ValueError: see :func:`match_instances`; or ``min_cover`` outside ``(0, 1]``.
    """
    mc = _check_fraction(min_cover, "min_cover", lo_open=True)
    p, t = _instance_pair(pred_inst, true_inst)
    n_split, n_merged = _split_merge(_Overlap(p, t), mc)
    return {"n_split": n_split, "n_merged": n_merged}


def instance_metrics(pred_inst: Any, true_inst: Any, thresholds: Sequence[float] = DSB_THRESHOLDS,
                     min_cover: float = 0.1) -> dict[str, float | int]:
    """All instance numbers of one image, from one overlap count.

    Args:
        pred_inst: predicted instance labels, integer array of shape ``S`` (2-D or 3-D).
        true_inst: true instance labels, same shape ``S``.
        thresholds: IoU thresholds of the DSB score (see :func:`dsb_score`).
        min_cover: see :func:`split_merge_counts`.

    Returns:
        ``{"dsb_score", "ap50", "n_true", "n_pred", "n_split", "n_merged"}``: the DSB score
        (:func:`dsb_score`), the DSB-style AP at IoU 0.5 (:func:`ap50`), the object counts
        and the split / merge counts (:func:`split_merge_counts`).

    Raises:
        ValueError: see :func:`dsb_score` and :func:`split_merge_counts`.
    """
    th = _check_thresholds(thresholds)
    mc = _check_fraction(min_cover, "min_cover", lo_open=True)
    p, t = _instance_pair(pred_inst, true_inst)
    ov = _Overlap(p, t)
    n_split, n_merged = _split_merge(ov, mc)
    return {
        "dsb_score": float(_dsb_per_threshold(ov, th).mean()),
        "ap50": float(_dsb_per_threshold(ov, np.array([0.5]))[0]),
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
        "n_split": n_split,
        "n_merged": n_merged,
    }


# --------------------------------------------------------------------------------------
# boundary F1
# --------------------------------------------------------------------------------------


def _check_tolerance(tolerance: Any) -> None:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)) \
            or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite distance >= 0, got {tolerance!r}")


def boundary_f1(pred_mask: Any, true_mask: Any, tolerance: float, spacing: Any = None,
                image_border: bool = False) -> dict[str, float]:
    """Boundary precision, recall and F1 of two masks at a distance tolerance.

    Boundary pixels follow the module rule: pixels of the mask with a face neighbour
    (4 in 2-D, 6 in 3-D) inside the image that is outside the mask, via
    ``skimage.segmentation.find_boundaries(mode='inner', connectivity=1)``. Instance label
    images are accepted too: then a pixel next to a *different* object is also a boundary
    pixel, so the line between touching cells counts. The image border is not a boundary
    unless ``image_border=True`` (then pixels on the frame are boundary pixels too).

    With ``B_p``, ``B_t`` the boundary pixels and ``d`` the Euclidean distance (in pixels,
    or in the units of ``spacing``): precision = share of ``B_p`` with ``d(x, B_t) <=
    tolerance``, recall = share of ``B_t`` with ``d(y, B_p) <= tolerance``, F1 = their
    harmonic mean (0 when both are 0). With ``tolerance=0`` only coinciding pixels count.

    Empty rule, on the boundary sets: both empty -> precision = recall = F1 = 1; exactly
    one empty -> all 0. (A mask that fills the whole image has an empty boundary.)

    Args:
        pred_mask: predicted mask, bool / 0-1 integers, or an instance label image, of
            shape ``S`` (2-D or 3-D).
        true_mask: true mask or label image, same shape ``S``.
        tolerance: the largest distance (``>= 0``) at which a boundary pixel is matched.
        spacing: pixel size, a number or one per axis of ``S``; ``None`` for pixels.
        image_border: count pixels on the image frame as boundary pixels.

    Returns:
        ``{"precision": float, "recall": float, "f1": float}``.

    Raises:
        ValueError: on shape mismatch, float dtype, negative labels, input that is not 2-D
            or 3-D, a negative or non-finite tolerance, or invalid spacing.
    """
    bp, bt, p_ok, t_ok = boundary_matches(pred_mask, true_mask, tolerance, spacing, image_border)
    has_p, has_t = bool(bp.any()), bool(bt.any())
    if not has_p and not has_t:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    if has_p != has_t:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision = float(np.count_nonzero(p_ok) / np.count_nonzero(bp))
    recall = float(np.count_nonzero(t_ok) / np.count_nonzero(bt))
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": float(f1)}


def boundary_matches(pred_mask: Any, true_mask: Any, tolerance: float, spacing: Any = None,
                     image_border: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The boundary pixels of both masks and which of them :func:`boundary_f1` matches.

    Returns:
        bool maps of the masks' shape ``(B_p, B_t, matched_p, matched_t)``: the predicted and
        true boundary pixels, the predicted ones within ``tolerance`` of a true one, and the
        true ones within ``tolerance`` of a predicted one (none matched when the other
        boundary is empty).

    Raises:
        ValueError: as :func:`boundary_f1`.
    """
    _check_tolerance(tolerance)
    p = _labels(pred_mask, "pred_mask")
    t = _labels(true_mask, "true_mask")
    _check_pair(p, t, "pred_mask", "true_mask")
    sp = _check_spacing(spacing, p.ndim)
    bp, bt = _boundary(p, image_border), _boundary(t, image_border)
    p_ok, t_ok = np.zeros_like(bp), np.zeros_like(bt)
    if not (bp.any() and bt.any()):
        return bp, bt, p_ok, t_ok
    # every nearest boundary pixel lies in the bounding box of both boundaries: crop (exact)
    nz = np.nonzero(bp | bt)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)
    tol = float(tolerance) * (1 + 1e-9)  # distances such as sqrt(2) * s are not exact in floats
    p_ok[box] = bp[box] & (ndi.distance_transform_edt(~bt[box], sampling=sp) <= tol)
    t_ok[box] = bt[box] & (ndi.distance_transform_edt(~bp[box], sampling=sp) <= tol)
    return bp, bt, p_ok, t_ok


def boundary_f1_scores(pred_mask: Any, true_mask: Any, tolerances: Sequence[float] = (1, 2, 3),
                       spacing: Any = None, image_border: bool = False) -> dict[str, float]:
    """Boundary F1 at several tolerances: ``{"bf1_1": f1, "bf1_2": f1, ...}``.

    Keys are ``f"bf1_{tolerance:g}"`` (``0.5 -> "bf1_0.5"``, ``2.0 -> "bf1_2"``); values are
    the ``f1`` of :func:`boundary_f1` with the same arguments.

    Raises:
        ValueError: see :func:`boundary_f1`; or duplicate tolerances (equal keys).
    """
    tols = [tolerances] if np.ndim(tolerances) == 0 else list(np.asarray(tolerances, dtype=object).ravel())
    if not tols:
        raise ValueError("tolerances must hold at least one distance")
    for t in tols:
        _check_tolerance(t)
    keys = [f"bf1_{float(t):g}" for t in tols]
    if len(set(keys)) != len(keys):
        raise ValueError(f"tolerances must be distinct, got {tols!r}")
    return {k: boundary_f1(pred_mask, true_mask, t, spacing=spacing, image_border=image_border)["f1"]
            for k, t in zip(keys, tols)}


# --------------------------------------------------------------------------------------
# instance extraction
# --------------------------------------------------------------------------------------


