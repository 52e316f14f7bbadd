"""COCO mask AP (pdeseg.metrics.coco): closed forms, LIVECell's detection limit, and agreement
with pycocotools' own file-based path (loadRes + COCOeval.summarize)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from pdeseg.metrics.coco import CocoMaskAP, coco_mask_ap, encode_instances, instance_confidences

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools, numpy 2


def grid_cells(n_rows: int, n_cols: int, size: int = 6, step: int = 8, first_id: int = 1) -> np.ndarray:
    """An instance image of ``n_rows x n_cols`` square cells of ``size`` px, ids from ``first_id``."""
    inst = np.zeros((n_rows * step, n_cols * step), np.int64)
    k = first_id
    for r in range(n_rows):
        for c in range(n_cols):
            inst[r * step + 1:r * step + 1 + size, c * step + 1:c * step + 1 + size] = k
            k += 1
    return inst


def test_perfect_prediction_of_more_cells_than_coco_default_limit_scores_one():
    truth = grid_cells(20, 20)  # 400 cells: COCO's default limit of 100 detections would cap recall at 0.25
    assert coco_mask_ap([(truth, truth)]) == {"mask_ap": 1.0, "mask_ap50": 1.0, "mask_ap75": 1.0}
    capped = coco_mask_ap([(truth, truth)], max_dets=(1, 10, 100))
    assert capped["mask_ap"] == pytest.approx(26 / 101)  # recall 0.25 reached: recall points 0..0.25


def test_half_the_cells_found_gives_coco_101_point_interpolation():
    truth = grid_cells(10, 10)
    pred = np.where(truth % 2 == 0, truth, 0)  # 50 of 100 cells, exactly
    assert coco_mask_ap([(pred, truth)])["mask_ap"] == pytest.approx(51 / 101)


def test_iou_between_thresholds_splits_ap50_and_ap75():
    truth = grid_cells(6, 6, size=10, step=14)
    pred = np.zeros_like(truth)
    pred[:, 3:] = truth[:, :-3]  # each 10x10 cell shifted by 3 px: IoU = 70 / 130 = 0.538
    r = coco_mask_ap([(pred, truth)])
    assert r["mask_ap50"] == 1.0 and r["mask_ap75"] == 0.0
    assert r["mask_ap"] == pytest.approx(0.1)  # matched at IoU 0.50 only, 1 of 10 thresholds


def test_confidence_ranks_a_false_positive():
    truth = grid_cells(4, 4)
    pred = truth.copy()
    pred[0, 0] = 99  # one spurious one-pixel object at the corner (background in truth)
    cells = {int(i): 0.5 for i in np.unique(truth)[1:]}
    low = coco_mask_ap([(pred, truth, {**cells, 99: 0.1})])["mask_ap"]
    high = coco_mask_ap([(pred, truth, {**cells, 99: 0.9})])["mask_ap"]
    assert low == 1.0  # ranked last, after every true cell was found
    assert high == pytest.approx(16 / 17)  # ranked first: precision k / (k + 1), interpolated from the right


def test_instance_confidences_are_the_mean_probability_of_each_cell():
    inst = np.array([[1, 1, 0], [2, 0, 0]])
    prob = np.array([[0.2, 0.6, 0.9], [0.7, 0.1, 0.0]])
    assert instance_confidences(inst, prob) == pytest.approx({1: 0.4, 2: 0.7})
    with pytest.raises(ValueError, match="shape"):
        instance_confidences(inst, prob[:, :2])


def test_empty_images_and_bad_input():
    empty = np.zeros((8, 8), np.int32)
    assert coco_mask_ap([(empty, empty)])["mask_ap"] == 1.0
    assert coco_mask_ap([(grid_cells(1, 1), np.zeros((8, 8), int))])["mask_ap"] == 0.0
    assert coco_mask_ap([(empty, grid_cells(1, 1))])["mask_ap"] == 0.0
    with pytest.raises(ValueError, match="integers"):
        coco_mask_ap([(empty.astype(float), empty)])
    with pytest.raises(ValueError, match="2-D"):
        coco_mask_ap([(empty[None], empty[None])])


def test_ids_beyond_uint16_are_encoded_each_as_one_object():
    truth = grid_cells(4, 4, first_id=70_000)
    ids, rles = encode_instances(truth)
    assert ids == list(range(70_000, 70_016)) and len(rles) == 16
    assert coco_mask_ap([(truth, truth)])["mask_ap"] == 1.0


def test_per_image_and_pooled_from_one_evaluation():
    truth = grid_cells(10, 10)
    half = np.where(truth % 2 == 0, truth, 0)
    acc = CocoMaskAP()
    acc.add(half, truth)
    acc.add(truth, truth)
    pooled, per_image = acc.results()
    assert per_image[0]["mask_ap"] == pytest.approx(51 / 101) and per_image[1]["mask_ap"] == 1.0
    assert pooled["mask_ap"] == pytest.approx(coco_mask_ap([(half, truth), (truth, truth)])["mask_ap"])
    assert per_image[0]["mask_ap"] < pooled["mask_ap"] < 1.0  # pooled: 150 of 200 cells found


def test_agrees_with_pycocotools_file_path(tmp_path):
    """The same images through pycocotools' documented route: a ground-truth json read by
    COCO(), results by loadRes(), COCOeval with LIVECell's limits, summarize()'s stats."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images = []
    for k in range(3):
        truth = grid_cells(8, 9, size=5, step=7)
        pred = np.roll(truth, k % 2, axis=1)  # image 2 shifted by 1 px: IoU 20 / 30
        pred[pred == rng.integers(1, 70)] = 0  # one cell missed
        pred[0, 0] = 500  # one spurious speck
        conf = {int(i): float(rng.random()) for i in np.unique(pred) if i}
        images.append((pred, truth, conf))
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    res = []
    for k, (pred, truth, conf) in enumerate(images, start=1):
        gt["images"].append({"id": k, "height": truth.shape[0], "width": truth.shape[1]})
        for i in np.unique(truth)[1:]:
            rle = mask_utils.encode(np.asfortranarray((truth == i).astype(np.uint8)))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": k, "category_id": 1, "iscrowd": 0,
                                      "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle)),
                                      "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        for i in np.unique(pred)[1:]:
            rle = mask_utils.encode(np.asfortranarray((pred == i).astype(np.uint8)))
            res.append({"image_id": k, "category_id": 1, "score": conf[int(i)],
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    (tmp_path / "gt.json").write_text(json.dumps(gt, default=float))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(res), iouType="segm")
        ev.params.maxDets = [100, 500, 2000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = coco_mask_ap(images)
    assert ours["mask_ap"] == pytest.approx(ev.stats[0], abs=1e-9)
    assert ours["mask_ap50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert ours["mask_ap75"] == pytest.approx(ev.stats[2], abs=1e-9)
    assert 0.3 < ours["mask_ap"] < 0.99  # a non-trivial case
