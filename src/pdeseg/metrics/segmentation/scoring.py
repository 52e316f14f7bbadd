"""Scoring a case and a data set: flat per-case metric rows, their summary, the accumulator and the rules.

:func:`case_metrics` turns one predicted and one true label map into the flat ``{name: float}`` row a CSV holds
(per class and per region overlap scores, optionally HD95 and surface Dice); :func:`metrics_from_confusion` does
the overlap part from a confusion matrix, which is what :class:`MetricAccumulator` sums slice by slice per case.
:func:`summarize` gives mean, sd, median and count over cases. :class:`ScoringRules` is what a data format supplies
(class names, regions, empty-mask rule), so validation, ``evaluate``, ``compare`` and ``ablate`` score alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdeseg.metrics.segmentation._inputs import (
    check_num_classes,
    check_pair,
    check_regions,
    check_spacing,
    is_tensor,
    resolve_class_names,
    to_numpy,
    torch,
)
from pdeseg.metrics.segmentation.overlap import (
    confusion_matrix,
    counts_from_confusion,
    dice_from_counts,
    iou_from_counts,
    precision_from_counts,
    recall_from_counts,
    region_counts_from_confusion,
    region_masks,
)
from pdeseg.metrics.segmentation.surface import hd95, surface_dice


__all__ = [
    "MetricAccumulator",
    "ScoringRules",
    "case_metrics",
    "metrics_from_confusion",
    "summarize",
]


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
    names = resolve_class_names(c, class_names)
    regs = check_regions(regions, c)
    _check_key_collisions(names, regs)

    counts = counts_from_confusion(cm)
    d = dice_from_counts(counts, empty)
    j = iou_from_counts(counts, empty)
    prec, rec = precision_from_counts(counts, empty), recall_from_counts(counts, empty)
    out: dict[str, float] = {}

    def per_class(**values: np.ndarray) -> None:
        for metric, v in values.items():
            out.update({f"{metric}_{n}": float(v[i]) for i, n in enumerate(names)})

    per_class(dice=d, iou=j)
    out["dice_mean"] = float(d[1:].mean())
    out["iou_mean"] = float(j[1:].mean())
    out["iou_mean_all"] = float(j.mean())
    out["accuracy"] = float(np.trace(cm) / total)
    per_class(precision=prec, recall=rec)
    out["precision_mean"] = float(prec[1:].mean())
    out["recall_mean"] = float(rec[1:].mean())
    if regs:
        rc = region_counts_from_confusion(cm, regs)
        for metric, fn in (
            ("dice", dice_from_counts),
            ("iou", iou_from_counts),
            ("precision", precision_from_counts),
            ("recall", recall_from_counts),
        ):
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
    c = check_num_classes(num_classes)
    regs = check_regions(regions, c)
    cm = confusion_matrix(pred, target, c)
    out = metrics_from_confusion(cm, regs, class_names, empty)
    if with_hd95 or surface_tolerance_mm is not None:
        p = to_numpy(pred, "pred")
        t = to_numpy(target, "target")
        check_spacing(spacing, p.ndim)  # fail before any distance computation
        names = resolve_class_names(c, class_names)
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
    if is_tensor(v) and v.numel() == 1 and not v.dtype == torch.bool:
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
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes < 2:
            raise ValueError("need at least 2 classes (background + one foreground class)")
        self.regions = check_regions(regions, self.num_classes)
        self.class_names = resolve_class_names(self.num_classes, class_names)
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
        if (
            isinstance(case_id, (list, tuple))
            or (isinstance(case_id, np.ndarray) and case_id.ndim == 1)
            or (is_tensor(case_id) and case_id.ndim == 1)
        ):
            ids = [cid.item() if hasattr(cid, "item") else cid for cid in case_id]
            if len(pred.shape) == 0 or pred.shape[0] != len(ids):
                raise ValueError(
                    f"got {len(ids)} case ids for a batch of shape {tuple(pred.shape)}; pass one id per item "
                    "along the first dimension, or a single id"
                )
            check_pair(pred, target)
            # group items by case so each case is counted with one bincount
            groups: dict[Any, list[int]] = {}
            for i, cid in enumerate(ids):
                groups.setdefault(cid, []).append(i)
            for cid, idx in groups.items():
                if len(idx) == len(ids):
                    self._add(cid, confusion_matrix(pred, target, self.num_classes))
                else:
                    sel = torch.as_tensor(idx, device=pred.device) if is_tensor(pred) else np.asarray(idx)
                    tsel = torch.as_tensor(idx, device=target.device) if is_tensor(target) else np.asarray(idx)
                    self._add(cid, confusion_matrix(pred[sel], target[tsel], self.num_classes))
            return
        if is_tensor(case_id) or isinstance(case_id, np.generic):
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

    def case_metrics(
        self, pred: Any, target: Any, spacing: Any = None, with_hd95: bool = False, surface_tolerance_mm: float | None = None
    ) -> dict[str, float]:
        """:func:`case_metrics` with these rules (surface Dice only when ``surface_tolerance_mm`` is given)."""
        return case_metrics(
            pred,
            target,
            self.num_classes,
            spacing,
            dict(self.regions) or None,
            with_hd95,
            self.class_names,
            self.empty,
            self.hd95_one_empty,
            surface_tolerance_mm,
        )
