"""COCO mask average precision of instance label images: LIVECell's own metric.

The LIVECell authors (Edlund et al., Nat. Methods 2021) score instance segmentation with the
COCO evaluator of ``pycocotools`` on masks, with the per-image detection limit raised from
COCO's 100 to 2,000 because their images hold many hundreds of cells. This module turns
instance label images into the evaluator's input and reads its result back:

* every object of a label image (``0`` background, each positive id one object; 2-D
  ``(H, W)``) becomes one COCO annotation with a compressed RLE mask;
* predicted objects carry a confidence (the ranking COCO's precision-recall curve needs):
  :func:`instance_confidences` gives each cell the mean of a probability map over its pixels
  (the model's cell probability); without one every cell scores 1 and ties are ranked by id;
* :func:`coco_mask_ap` runs ``COCOeval`` (``iouType='segm'``, one category, ``maxDets``
  ``(100, 500, 2000)``) and returns, at the largest limit and over all object areas, the
  mean AP over IoU 0.50:0.05:0.95 (``mask_ap``), AP at IoU 0.5 (``mask_ap50``) and at 0.75
  (``mask_ap75``). This is COCO's *ranked* AP (area under the interpolated precision-recall
  curve), not the DSB-style ``TP / (TP + FP + FN)`` of :mod:`pdeseg.metrics.instances`.

LIVECell also reports AP per object-size range (its own small / medium / large limits);
those are not computed here. Given several images, the result is the data set's pooled AP
(as LIVECell publishes it), not the mean of per-image APs. An image set with no true object
has no defined AP in COCO (``-1``); here it is 1.0 when nothing is predicted either and 0.0
otherwise, so a per-image table never holds ``-1``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["LIVECELL_MAX_DETS", "CocoMaskAP", "coco_mask_ap", "encode_instances", "instance_confidences"]

#: The detection limits of LIVECell's evaluator (COCO's are 1, 10, 100); AP is read at the last.
LIVECELL_MAX_DETS: tuple[int, int, int] = (100, 500, 2000)


def _labels(instances: Any, name: str) -> np.ndarray:
    a = np.asarray(instances)
    if a.ndim != 2:
        raise ValueError(f"{name}: COCO mask AP takes 2-D instance images (H, W), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise ValueError(f"{name}: instance labels must be integers, got {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{name}: instance labels must be >= 0, got {a.min()}")
    return a.astype(np.int64, copy=False)


def encode_instances(instances: Any) -> tuple[list[int], list[dict]]:
    """The objects of an instance image ``(H, W)`` as ``(ids, compressed RLEs)``, in id order.

    Each object is encoded on the whole image grid (COCO's RLE covers the image), filled from
    its bounding box only, so the cost is one pass over the image plus one small write per object.
    """
    from pycocotools import mask as mask_utils

    inst = _labels(instances, "instances")
    ids, rles = [], []
    for i, box in enumerate(ndi.find_objects(inst), start=1):
        if box is None:
            continue
        m = np.zeros(inst.shape, np.uint8, order="F")
        m[box] = inst[box] == i
        ids.append(i)
        rles.append(mask_utils.encode(m))
    return ids, rles


def instance_confidences(instances: Any, probability: Any) -> dict[int, float]:
    """The confidence of every object: the mean of ``probability`` ``(H, W)`` over its pixels.

    Raises:
        ValueError: shapes differ, or the probabilities are not finite.
    """
    inst = _labels(instances, "instances")
    prob = np.asarray(probability, dtype=np.float64)
    if prob.shape != inst.shape:
        raise ValueError(f"probability {prob.shape} and instances {inst.shape} differ in shape")
    if not np.isfinite(prob).all():
        raise ValueError("probability holds NaN or inf")
    n = int(inst.max(initial=0))
    sums = np.bincount(inst.ravel(), weights=prob.ravel(), minlength=n + 1)
    counts = np.bincount(inst.ravel(), minlength=n + 1)
    return {i: float(sums[i] / counts[i]) for i in range(1, n + 1) if counts[i]}


class CocoMaskAP:
    """Accumulates images, then scores them together with ``COCOeval`` (see the module docstring).

    Only the compressed RLEs are kept per image (a few kB for hundreds of cells), so a whole
    test set fits in memory. Picklable (plain lists and dicts), for gathering across processes.
    """

    def __init__(self, max_dets: Sequence[int] = LIVECELL_MAX_DETS):
        if len(max_dets) != 3 or any(int(m) < 1 for m in max_dets) or list(max_dets) != sorted(max_dets):
            raise ValueError(f"max_dets must be three increasing limits >= 1, got {tuple(max_dets)}")
        self.max_dets = [int(m) for m in max_dets]
        self.images: list[dict] = []
        self.truth: list[dict] = []
        self.detections: list[dict] = []

    def add(self, pred_inst: Any, true_inst: Any, confidences: dict[int, float] | None = None) -> None:
        """Add one image: predicted and true instance images ``(H, W)``, and optionally each
        predicted object's confidence (id -> score; missing ids score 1)."""
        pred, true = _labels(pred_inst, "pred_inst"), _labels(true_inst, "true_inst")
        if pred.shape != true.shape:
            raise ValueError(f"pred_inst {pred.shape} and true_inst {true.shape} differ in shape")
        from pycocotools import mask as mask_utils

        image_id = len(self.images) + 1
        h, w = true.shape
        self.images.append({"id": image_id, "height": int(h), "width": int(w)})
        _, rles = encode_instances(true)
        for rle in rles:
            self.truth.append({"id": len(self.truth) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                               "segmentation": rle, "area": float(mask_utils.area(rle)),
                               "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        ids, rles = encode_instances(pred)
        for i, rle in zip(ids, rles):
            score = 1.0 if confidences is None else float(confidences.get(i, 1.0))
            self.detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": score,
                                    "area": float(mask_utils.area(rle)),
                                    "bbox": [float(v) for v in mask_utils.toBbox(rle)]})

    def merge(self, other: CocoMaskAP) -> None:
        """Append another accumulator's images (image ids renumbered)."""
        offset = len(self.images)
        self.images += [{**im, "id": im["id"] + offset} for im in other.images]
        self.truth += [{**a, "id": len(self.truth) + k + 1, "image_id": a["image_id"] + offset}
                       for k, a in enumerate(other.truth)]
        self.detections += [{**d, "image_id": d["image_id"] + offset} for d in other.detections]

    def result(self) -> dict[str, float]:
        """``{"mask_ap", "mask_ap50", "mask_ap75"}`` over every image added (see the module docstring)."""
        return self.results(per_image=False)[0]

    def results(self, per_image: bool = True) -> tuple[dict[str, float], list[dict[str, float]]]:
        """The pooled AP over every image added and, with ``per_image``, each image's own AP
        (in the order added), from one ``COCOeval.evaluate`` (the matching is done once; only
        the precision-recall accumulation is repeated per image)."""
        n = len(self.images)
        if not self.truth or not self.detections:
            return self._degenerate(self.truth, self.detections), [
                self._degenerate([a for a in self.truth if a["image_id"] == i + 1],
                                 [d for d in self.detections if d["image_id"] == i + 1])
                for i in range(n if per_image else 0)]
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        categories = [{"id": 1, "name": "cell"}]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt, dt = COCO(), COCO()
            gt.dataset = {"images": list(self.images), "annotations": list(self.truth), "categories": categories}
            dt.dataset = {"images": list(self.images), "categories": categories,
                          "annotations": [{**d, "id": k + 1, "iscrowd": 0} for k, d in enumerate(self.detections)]}
            gt.createIndex()
            dt.createIndex()
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.maxDets = list(self.max_dets)
            ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]  # every object size, one range
            ev.evaluate()
            ev.accumulate()
            pooled = self._read(ev)
            images = []
            for i in range(n if per_image else 0):
                has_truth = any(a["image_id"] == i + 1 for a in self.truth)
                if not has_truth:
                    images.append(self._degenerate([], [d for d in self.detections if d["image_id"] == i + 1]))
                    continue
                # accumulate() finds an image by its position in params.imgIds, read as a position in
                # the evaluated (sorted) ids 1..n: image i + 1 must stand at index i, the rest unused
                ev.params.imgIds = [-1] * i + [i + 1]
                ev.accumulate()
                images.append(self._read(ev))
        return pooled, images

    @staticmethod
    def _degenerate(truth: list, detections: list) -> dict[str, float]:
        value = 0.0 if truth or detections else 1.0  # nothing to find and nothing found: perfect
        return {"mask_ap": value, "mask_ap50": value, "mask_ap75": value}

    @staticmethod
    def _read(ev: Any) -> dict[str, float]:
        precision = ev.eval["precision"][:, :, 0, 0, -1]  # (IoU thresholds, recall points), area all, max dets
        thresholds = np.round(ev.params.iouThrs, 2)

        def mean_ap(rows: np.ndarray) -> float:
            valid = rows[rows > -1]
            return float(valid.mean()) if valid.size else 0.0

        return {"mask_ap": mean_ap(precision), "mask_ap50": mean_ap(precision[thresholds == 0.5]),
                "mask_ap75": mean_ap(precision[thresholds == 0.75])}


def coco_mask_ap(images: Iterable[tuple[Any, Any] | tuple[Any, Any, dict[int, float] | None]],
                 max_dets: Sequence[int] = LIVECELL_MAX_DETS) -> dict[str, float]:
    """COCO mask AP of ``(pred_inst, true_inst[, confidences])`` images, pooled over all of them.

    Returns:
        ``{"mask_ap", "mask_ap50", "mask_ap75"}`` (see the module docstring).

    Raises:
        ValueError: an image that is not 2-D, not integer, negative, or of mismatched shapes.
    """
    acc = CocoMaskAP(max_dets)
    for item in images:
        acc.add(*item)
    return acc.result()
