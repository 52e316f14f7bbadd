"""Closed-form and analytic-geometry tests for pdeseg.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from pdeseg.data.readers.brats import CLASS_NAMES, HD95_ONE_EMPTY_MM
from pdeseg.data.readers.brats import REGIONS as BRATS_REGIONS
from pdeseg.metrics import (
    MetricAccumulator,
    ScoringRules,
    case_metrics,
    confusion_counts,
    confusion_matrix,
    dice,
    dice_from_counts,
    hd95,
    iou,
    iou_from_counts,
    pixel_accuracy,
    region_counts_from_confusion,
    region_dice,
    region_masks,
    summarize,
)

BRATS = ScoringRules(CLASS_NAMES, BRATS_REGIONS, 1.0, HD95_ONE_EMPTY_MM)


def _random_case(shape, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 4, size=shape).astype(np.int64)
    pred = target.copy()
    flip = rng.random(shape) < 0.3
    pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
    return pred, target


# ----------------------------------------------------------------------------- counts / dice / iou


def test_counts_dice_iou_closed_form():
    # class 1: truth {0}, prediction {0, 1} -> tp 1, fp 1, fn 0 -> dice 2/3, iou 1/2
    # class 0: truth {1, 2, 3}, prediction {2, 3} -> tp 2, fp 0, fn 1 -> dice 4/5, iou 2/3
    target = np.array([1, 0, 0, 0])
    pred = np.array([1, 1, 0, 0])
    counts = confusion_counts(pred, target, 2)
    np.testing.assert_array_equal(counts, [[2, 0, 1], [1, 1, 0]])
    assert counts.dtype == np.int64 and counts.shape == (2, 3)
    np.testing.assert_allclose(dice(pred, target, 2), [4 / 5, 2 / 3])
    np.testing.assert_allclose(iou(pred, target, 2), [2 / 3, 1 / 2])
    assert pixel_accuracy(pred, target) == pytest.approx(0.75)
    # tp = fp = fn = 1 -> dice 1/2, iou 1/3
    assert dice_from_counts(np.array([1, 1, 1])) == pytest.approx(0.5)
    assert iou_from_counts(np.array([1, 1, 1])) == pytest.approx(1 / 3)


def test_confusion_matrix_layout_and_2d():
    target = np.array([[0, 1], [2, 3]])
    pred = np.array([[0, 2], [2, 1]])
    cm = confusion_matrix(pred, target, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[1, 2] = expected[2, 2] = expected[3, 1] = 1
    np.testing.assert_array_equal(cm, expected)
    # tp, fp, fn per class
    np.testing.assert_array_equal(
        confusion_counts(pred, target, 4), [[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]]
    )


def test_from_counts_formula_and_empty_rule():
    counts = np.array([[3, 1, 2], [0, 0, 0], [0, 4, 0], [0, 0, 5]])
    np.testing.assert_allclose(dice_from_counts(counts), [6 / 9, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(iou_from_counts(counts), [3 / 6, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(dice_from_counts(counts, empty=float("nan"))[1], np.nan)
    with pytest.raises(ValueError, match="tp, fp, fn"):
        dice_from_counts(np.zeros((2, 2)))


def test_both_empty_is_one_and_one_empty_is_zero():
    zeros = np.zeros((3, 3), dtype=np.int64)
    some = zeros.copy()
    some[1, 1] = 1
    # class 1 absent from both -> 1; background perfect
    np.testing.assert_allclose(dice(zeros, zeros, 2), [1.0, 1.0])
    np.testing.assert_allclose(iou(zeros, zeros, 2), [1.0, 1.0])
    # only prediction has class 1 / only truth has class 1 -> 0
    assert dice(some, zeros, 2)[1] == 0.0
    assert dice(zeros, some, 2)[1] == 0.0
    assert iou(zeros, some, 2)[1] == 0.0
    assert region_dice(zeros, zeros, BRATS_REGIONS) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    assert region_dice(some, zeros, BRATS_REGIONS) == {"WT": 0.0, "TC": 0.0, "ET": 1.0}  # class 1 is in WT and TC
    assert region_dice(2 * some, zeros, BRATS_REGIONS) == {"WT": 0.0, "TC": 1.0, "ET": 1.0}  # class 2 only in WT


def test_torch_and_bool_inputs_match_numpy():
    pred, target = _random_case((5, 6, 7), seed=1)
    cm = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 4), cm)
    np.testing.assert_array_equal(confusion_matrix(pred.astype(np.uint8), target.astype(np.int16), 4), cm)
    b = confusion_matrix(pred > 1, target > 1, 2)
    assert b.sum() == pred.size and b[1, 1] == np.count_nonzero((pred > 1) & (target > 1))


# ----------------------------------------------------------------------------- regions


def test_region_mapping():
    labels = np.array([0, 1, 2, 3])
    masks = region_masks(labels, BRATS_REGIONS)
    assert list(masks) == ["WT", "TC", "ET"]
    np.testing.assert_array_equal(masks["WT"], [False, True, True, True])
    np.testing.assert_array_equal(masks["TC"], [False, True, False, True])
    np.testing.assert_array_equal(masks["ET"], [False, False, False, True])
    # a class-3 voxel counts in WT, TC and ET; a class-2 voxel only in WT
    assert {k: bool(v[3]) for k, v in masks.items()} == {"WT": True, "TC": True, "ET": True}
    assert {k: bool(v[2]) for k, v in masks.items()} == {"WT": True, "TC": False, "ET": False}


def test_region_dice_closed_form():
    target = np.array([3, 3, 2, 0])
    pred = np.array([1, 0, 2, 2])
    # WT: truth {0,1,2}, pred {0,2,3} -> tp 2, fp 1, fn 1 -> 2/3
    # TC: truth {0,1}, pred {0}       -> tp 1, fp 0, fn 1 -> 2/3
    # ET: truth {0,1}, pred {}        -> 0
    out = region_dice(pred, target, BRATS_REGIONS)
    assert out["WT"] == pytest.approx(2 / 3)
    assert out["TC"] == pytest.approx(2 / 3)
    assert out["ET"] == 0.0
    rc = region_counts_from_confusion(confusion_matrix(pred, target, 4), BRATS_REGIONS)
    np.testing.assert_array_equal(rc["WT"], [2, 1, 1])
    np.testing.assert_array_equal(rc["TC"], [1, 0, 1])
    np.testing.assert_array_equal(rc["ET"], [0, 0, 2])


def test_region_dice_matches_masks_on_random_volume():
    pred, target = _random_case((6, 7, 8), seed=2)
    out = region_dice(pred, target, BRATS_REGIONS)
    for name, classes in BRATS_REGIONS.items():
        a, b = np.isin(pred, classes), np.isin(target, classes)
        ref = 2 * np.count_nonzero(a & b) / (a.sum() + b.sum())
        assert out[name] == pytest.approx(ref)


# ----------------------------------------------------------------------------- case metrics


def test_case_metrics_keys_and_values():
    pred, target = _random_case((4, 9, 10), seed=3)
    m = BRATS.case_metrics(pred, target)
    for n in CLASS_NAMES:
        assert f"dice_{n}" in m and f"iou_{n}" in m
    for r in BRATS_REGIONS:
        assert f"dice_{r}" in m and f"iou_{r}" in m
    assert not any(k.startswith("hd95") for k in m)
    d = dice(pred, target, 4)
    assert m["dice_mean"] == pytest.approx(d[1:].mean())  # foreground classes only
    assert m["iou_mean"] == pytest.approx(iou(pred, target, 4)[1:].mean())
    assert m["accuracy"] == pytest.approx(pixel_accuracy(pred, target))
    assert m["dice_WT"] == pytest.approx(region_dice(pred, target, BRATS_REGIONS)["WT"])
    # the ET region is exactly class 3
    assert m["dice_ET"] == pytest.approx(d[3])
    assert all(isinstance(v, float) for v in m.values())


def test_case_metrics_binary_task_and_hd95():
    target = np.zeros((9, 9), dtype=np.int64)
    pred = np.zeros((9, 9), dtype=np.int64)
    target[4, 4] = 1
    pred[5, 5] = 1
    m = case_metrics(pred, target, num_classes=2, regions=None)
    assert set(m) == {
        "dice_class0", "dice_class1", "iou_class0", "iou_class1", "dice_mean", "iou_mean", "iou_mean_all", "accuracy",
        "precision_class0", "precision_class1", "recall_class0", "recall_class1", "precision_mean", "recall_mean",
    }
    # Keras-style mean IoU includes the background: class 0 has 79 hits of 81 pixels, class 1 none
    assert m["iou_mean_all"] == pytest.approx((79 / 81 + 0.0) / 2)
    m = case_metrics(pred, target, num_classes=2, regions={"FG": (1,)}, with_hd95=True, spacing=(2.0, 0.5))
    assert m["hd95_FG"] == pytest.approx(math.hypot(2.0, 0.5), rel=1e-6)
    with pytest.raises(ValueError, match="spacing is required"):
        case_metrics(pred, target, num_classes=2, regions={"FG": (1,)}, with_hd95=True)


# ----------------------------------------------------------------------------- hd95


def test_hd95_single_voxels_diagonal_3d():
    a = np.zeros((5, 5, 5), dtype=bool)
    b = np.zeros_like(a)
    a[2, 2, 2] = True
    b[3, 3, 3] = True
    assert hd95(a, b, 1.0) == pytest.approx(math.sqrt(3), rel=1e-6)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(math.sqrt(3), rel=1e-6)
    assert hd95(a, b, 2.0) == pytest.approx(2 * math.sqrt(3), rel=1e-6)
    assert hd95(a, b, (1.0, 2.0, 3.0)) == pytest.approx(math.sqrt(1 + 4 + 9), rel=1e-6)
    assert hd95(torch.from_numpy(a), torch.from_numpy(b), 1.0) == pytest.approx(math.sqrt(3), rel=1e-6)


def test_hd95_empty_rules():
    a = np.zeros((4, 4, 4), dtype=bool)
    b = a.copy()
    b[1, 1, 1] = True
    assert hd95(a, a, 1.0) == 0.0
    assert hd95(a, b, 1.0) == math.inf  # no data-set default
    assert hd95(a, b, 1.0, one_empty=HD95_ONE_EMPTY_MM) == 373.13
    assert hd95(b, a, 1.0, one_empty=HD95_ONE_EMPTY_MM) == 373.13
    assert hd95(b, b, 1.0) == 0.0


def _reference_hd95(a, b, spacing):
    """Independent implementation: edge voxels by erosion, max of directed 95th percentiles."""

    def edges(m):
        m = np.pad(m, 1)
        e = m & ~ndimage.binary_erosion(m)
        return np.argwhere(e) * np.asarray(spacing, dtype=np.float64)

    ea, eb = edges(a), edges(b)
    d = cdist(ea, eb)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 0.7, 2.5)])
def test_hd95_matches_independent_reference(spacing):
    z, y, x = np.ogrid[:16, :18, :14]
    a = (z - 8) ** 2 + (y - 9) ** 2 + (x - 7) ** 2 <= 25
    b = ((z - 7) ** 2 / 2 + (y - 10) ** 2 + (x - 6) ** 2 <= 16) | ((z == 2) & (y == 2) & (x == 2))
    assert hd95(a, b, spacing) == pytest.approx(_reference_hd95(a, b, spacing), rel=1e-5)


def test_hd95_bad_input():
    a = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="same shape"):
        hd95(a, np.zeros((4, 5), dtype=bool), 1.0)
    with pytest.raises(ValueError, match="spacing is required"):
        hd95(a, a, None)
    with pytest.raises(ValueError, match="entries"):
        hd95(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(a, a, (1.0, 0.0))
    with pytest.raises(ValueError, match="binary"):
        hd95(a.astype(np.int64) + 2, a.astype(np.int64), 1.0)


# ----------------------------------------------------------------------------- errors


def test_errors_on_bad_labels():
    a = np.zeros((3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="same shape"):
        confusion_counts(a, np.zeros((3, 4), dtype=np.int64), 4)
    with pytest.raises(ValueError, match=r"outside|allows only"):
        confusion_counts(a + 4, a, 4)  # raw BraTS label 4 not mapped to 3
    with pytest.raises(ValueError, match="allows only"):
        confusion_counts(a, a - 1, 4)
    with pytest.raises(ValueError, match="integer class labels"):
        dice(a.astype(np.float32), a, 4)
    with pytest.raises(ValueError, match="num_classes"):
        dice(a, a, 0)
    with pytest.raises(ValueError, match="same shape"):
        pixel_accuracy(a, a[:2])
    with pytest.raises(ValueError, match="same shape"):
        region_dice(a, a[:2], BRATS_REGIONS)
    with pytest.raises(ValueError, match="outside"):
        MetricAccumulator(num_classes=3, regions=BRATS_REGIONS)  # BraTS regions need class 3


# ----------------------------------------------------------------------------- summarize / accumulator


def test_summarize_known_numbers():
    rows = [{"case": "a", "dice": 1.0, "x": 2}, {"case": "b", "dice": 2.0}, {"case": "c", "dice": 6.0}]
    s = summarize(rows)
    assert set(s) == {"dice", "x"}
    assert s["dice"]["mean"] == pytest.approx(3.0)
    assert s["dice"]["std"] == pytest.approx(math.sqrt(7.0))  # ((4 + 1 + 9) / 2) ** 0.5
    assert s["dice"]["median"] == pytest.approx(2.0)
    assert s["dice"]["n"] == 3
    assert s["x"] == {"mean": 2.0, "std": 0.0, "median": 2.0, "n": 1}
    assert summarize([]) == {}


def test_accumulator_slices_equal_stacked_volume():
    pa, ta = _random_case((3, 8, 9), seed=4)
    pb, tb = _random_case((2, 8, 9), seed=5)
    acc = BRATS.accumulator()
    for k in range(3):
        acc.update(pa[k], ta[k], "A")
    acc.update(torch.from_numpy(pb[0]), torch.from_numpy(tb[0]), "B")
    acc.update(pb[1], tb[1], "B")
    rows = acc.per_case()
    assert [r["case"] for r in rows] == ["A", "B"]
    for row, (p, t) in zip(rows, [(pa, ta), (pb, tb)]):
        ref = BRATS.case_metrics(p, t)
        assert set(row) == set(ref) | {"case"}
        for k, v in ref.items():
            assert row[k] == pytest.approx(v), k
    assert "dice_WT" in rows[0] and "dice_TC" in rows[0]
    s = acc.summary()
    assert s["dice_WT"]["n"] == 2
    assert s["dice_WT"]["mean"] == pytest.approx((rows[0]["dice_WT"] + rows[1]["dice_WT"]) / 2)


def test_accumulator_batch_with_mixed_case_ids():
    pa, ta = _random_case((4, 6, 6), seed=6)
    ids = ["A", "B", "A", "B"]
    acc = BRATS.accumulator()
    acc.update(pa, ta, ids)
    ref = BRATS.accumulator()
    for i, cid in enumerate(ids):
        ref.update(pa[i], ta[i], cid)
    np.testing.assert_array_equal(acc.confusion("A"), ref.confusion("A"))
    np.testing.assert_array_equal(acc.confusion("B"), confusion_matrix(pa[[1, 3]], ta[[1, 3]], 4))
    assert len(acc) == 2
    with pytest.raises(ValueError, match="case ids"):
        acc.update(pa, ta, ["A", "B"])
    acc.reset()
    assert acc.per_case() == []


def test_metrics_carry_no_data_set_defaults():
    """A 4-class task is not BraTS unless its format says so: generic names, no regions."""
    pred = np.array([[0, 1], [2, 3]])
    m = case_metrics(pred, pred, 4)
    assert "dice_class3" in m and "dice_ET" not in m and "dice_WT" not in m
    assert MetricAccumulator(4).regions == {}
    assert case_metrics(np.zeros((2, 2), int), np.zeros((2, 2), int), 2, empty=0.0)["dice_class1"] == 0.0
