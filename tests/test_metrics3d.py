"""Closed-form 3D metric values with anisotropic spacing: HD95, precision / recall, surface Dice.

The boxes: ``A`` covers voxels 1..3 along every axis (3x3x3); ``B`` is ``A`` moved by one
voxel along one axis. The spacing (1, 1, 3) mm makes a step along the last axis three
times longer than one along the others, so every value below depends on using the right
spacing for the right axis.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from pdeseg.data.readers.brats import CLASS_NAMES, HD95_ONE_EMPTY_MM
from pdeseg.data.readers.brats import REGIONS as BRATS_REGIONS
from pdeseg.metrics.segmentation import (
    MetricAccumulator,
    ScoringRules,
    case_metrics,
    hd95,
    precision_from_counts,
    recall_from_counts,
    surface_dice,
)

SPACING = (1.0, 1.0, 3.0)
BRATS = ScoringRules(CLASS_NAMES, BRATS_REGIONS, 1.0, HD95_ONE_EMPTY_MM)


def _box(shape=(6, 6, 7), start=(1, 1, 1), size=(3, 3, 3)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return m


def _shifted(axis: int, by: int = 1) -> np.ndarray:
    start = [1, 1, 1]
    start[axis] += by
    return _box(start=tuple(start))


# ----------------------------------------------------------------------------- HD95


@pytest.mark.parametrize("axis, expected", [(0, 1.0), (1, 1.0), (2, 3.0)])
def test_hd95_of_boxes_one_voxel_apart_uses_the_spacing_of_that_axis(axis, expected):
    """Shifted along z, 9 of each box's 26 boundary voxels lie one step (3 mm) from the other
    boundary and the rest 0 or 1 mm away, so the 95th percentile is 3 mm; along x it is 1 mm."""
    a, b = _box(), _shifted(axis)
    assert hd95(a, b, SPACING) == pytest.approx(expected, rel=1e-6)
    assert hd95(b, a, SPACING) == pytest.approx(expected, rel=1e-6)


def test_hd95_in_case_metrics_takes_the_case_spacing_per_axis():
    target = _box().astype(np.int64)
    pred = _shifted(2).astype(np.int64)
    m = case_metrics(pred, target, 2, SPACING, {"FG": (1,)}, with_hd95=True)
    assert m["hd95_FG"] == pytest.approx(3.0, rel=1e-6)
    m = case_metrics(pred, target, 2, SPACING[::-1], {"FG": (1,)}, with_hd95=True)  # spacing along the wrong axes
    assert m["hd95_FG"] == pytest.approx(1.0, rel=1e-6)


# ----------------------------------------------------------------------------- precision / recall


def test_precision_and_recall_of_nested_boxes_are_volume_ratios():
    outer = _box((8, 8, 8), (1, 1, 1), (4, 4, 4)).astype(np.int64)  # 64 voxels
    inner = _box((8, 8, 8), (2, 2, 2), (2, 2, 2)).astype(np.int64)  # 8 voxels, inside outer
    m = case_metrics(inner, outer, 2, regions={"FG": (1,)})
    assert m["precision_class1"] == 1.0 and m["recall_class1"] == pytest.approx(8 / 64)
    assert m["precision_FG"] == 1.0 and m["recall_FG"] == pytest.approx(8 / 64)
    assert m["precision_mean"] == 1.0 and m["recall_mean"] == pytest.approx(8 / 64)
    # background: truth 512 - 64 voxels, prediction 512 - 8, of which 448 agree
    assert m["precision_class0"] == pytest.approx(448 / 504) and m["recall_class0"] == 1.0
    m = case_metrics(outer, inner, 2)
    assert m["precision_class1"] == pytest.approx(8 / 64) and m["recall_class1"] == 1.0


def test_precision_and_recall_of_brats_regions_count_unions_of_classes():
    """Truth: a 4x4x4 tumour of oedema (2) with a 2x2x2 enhancing core (3). Prediction: the
    whole tumour called necrosis (1). WT = {1,2,3} is found exactly; TC = {1,3} is
    over-segmented (8 of 64 right); ET is missed."""
    truth = 2 * _box((8, 8, 8), (1, 1, 1), (4, 4, 4)).astype(np.int64)
    truth[_box((8, 8, 8), (2, 2, 2), (2, 2, 2))] = 3
    pred = _box((8, 8, 8), (1, 1, 1), (4, 4, 4)).astype(np.int64)
    m = BRATS.case_metrics(pred, truth)
    assert (m["precision_WT"], m["recall_WT"]) == (1.0, 1.0)
    assert m["precision_TC"] == pytest.approx(8 / 64) and m["recall_TC"] == 1.0
    assert (m["precision_ET"], m["recall_ET"]) == (0.0, 0.0)
    # NCR is predicted but absent from the truth: precision 0 / 64 and recall 0 / 0, which the
    # empty rule makes 0 (only one of truth and prediction is empty)
    assert (m["precision_NCR"], m["recall_NCR"]) == (0.0, 0.0)
    assert (m["precision_background"], m["recall_background"]) == (1.0, 1.0)


@pytest.mark.parametrize("empty", [1.0, 0.0, float("nan")])
def test_precision_and_recall_follow_the_dice_empty_rule(empty):
    both_empty, only_truth, only_pred = [0, 0, 0], [0, 0, 5], [0, 5, 0]
    for fn in (precision_from_counts, recall_from_counts):
        out = fn(np.array([both_empty, only_truth, only_pred]), empty=empty)
        np.testing.assert_equal(out, [empty, 0.0, 0.0])
    np.testing.assert_allclose(precision_from_counts([3, 1, 2]), 3 / 4)
    np.testing.assert_allclose(recall_from_counts([3, 1, 2]), 3 / 5)
    zeros = np.zeros((4, 4, 4), dtype=np.int64)
    m = case_metrics(zeros, zeros, 2, regions={"FG": (1,)}, empty=empty)
    for key in ("precision_class1", "recall_class1", "precision_FG", "recall_FG", "dice_FG"):
        np.testing.assert_equal(m[key], empty)


def test_accumulated_slices_give_the_volume_precision_and_recall():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(7, 6, 5))
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 4, size=truth.shape))
    acc = MetricAccumulator(4, BRATS_REGIONS, CLASS_NAMES)
    for z in range(truth.shape[-1]):
        acc.update(pred[..., z], truth[..., z], "case")
    row = acc.per_case()[0]
    whole = BRATS.case_metrics(pred, truth)
    for key in whole:
        if key.startswith(("precision_", "recall_")):
            assert row[key] == pytest.approx(whole[key]), key


# ----------------------------------------------------------------------------- surface Dice


def _reference_surface_dice(a: np.ndarray, b: np.ndarray, spacing, tol: float) -> float:
    """By brute force: boundary = mask minus its erosion (face connectivity, outside empty),
    all pairwise distances in mm."""
    def boundary(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing)

    pa, pb = boundary(a), boundary(b)
    d = cdist(pa, pb)
    return float(((d.min(axis=1) <= tol).sum() + (d.min(axis=0) <= tol).sum()) / (len(pa) + len(pb)))


def test_surface_dice_of_identical_masks_is_one():
    a = _box()
    assert surface_dice(a, a.copy(), SPACING, 0.0) == 1.0
    assert surface_dice(a, a.copy(), SPACING, 5.0) == 1.0


def test_surface_dice_of_boxes_shifted_along_z_by_hand():
    """Each box has 26 boundary voxels (all but its centre). Shifted by one voxel along z
    (3 mm): the 9 voxels of each box's outer z face are 3 mm from the other boundary; of the
    other 17, 16 lie on the other boundary and the one that is the other box's centre lies
    1 mm from it. So within 1 mm: (17 + 17) / 52; within 0 mm: (16 + 16) / 52; within 3 mm: all."""
    a, b = _box(), _shifted(2)
    assert surface_dice(a, b, SPACING, 1.0) == pytest.approx(34 / 52, abs=1e-6)
    assert surface_dice(a, b, SPACING, 2.9) == pytest.approx(34 / 52, abs=1e-6)
    assert surface_dice(a, b, SPACING, 0.0) == pytest.approx(32 / 52, abs=1e-6)
    assert surface_dice(a, b, SPACING, 3.0) == pytest.approx(1.0, abs=1e-6)
    # the same shift along x is only 1 mm
    assert surface_dice(a, _shifted(0), SPACING, 1.0) == pytest.approx(1.0, abs=1e-6)
    assert surface_dice(a, _shifted(0), SPACING, 0.5) == pytest.approx(32 / 52, abs=1e-6)


def test_surface_dice_of_boxes_further_apart_than_the_tolerance_is_below_one():
    a, b = _box(shape=(6, 6, 9)), _box(shape=(6, 6, 9), start=(1, 1, 3))  # 2 voxels = 6 mm along z
    value = surface_dice(a, b, SPACING, 2.0)
    assert value < 1
    assert value == pytest.approx(_reference_surface_dice(a, b, SPACING, 2.0), abs=1e-6)
    # one layer overlaps, a full face of both boxes: its 9 voxels lie on both boundaries, and
    # every other boundary voxel is at least 3 mm from the other boundary
    assert value == pytest.approx((9 + 9) / 52, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_surface_dice_matches_a_brute_force_reference_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    spacing = (0.8, 1.3, 2.5)
    a = ndimage.binary_opening(rng.random((9, 8, 7)) < 0.55)
    b = ndimage.binary_opening(rng.random((9, 8, 7)) < 0.55)
    assert a.any() and b.any()
    for tol in (0.0, 1.0, 2.6):
        assert surface_dice(a, b, spacing, tol) == pytest.approx(_reference_surface_dice(a, b, spacing, tol), abs=1e-6)


def test_surface_dice_empty_rules_and_bad_tolerance():
    empty, a = np.zeros((4, 4, 4), dtype=bool), _box((4, 4, 4), (1, 1, 1), (2, 2, 2))
    assert surface_dice(empty, empty, SPACING, 1.0) == 1.0
    assert surface_dice(empty, empty, SPACING, 1.0, empty=0.0) == 0.0
    assert surface_dice(a, empty, SPACING, 1.0) == 0.0
    assert surface_dice(empty, a, SPACING, 1.0) == 0.0
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="tolerance"):
            surface_dice(a, a, SPACING, bad)
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(a, a, None, 1.0)


def test_case_metrics_adds_surface_dice_only_when_asked():
    target = _box().astype(np.int64)
    pred = _shifted(2).astype(np.int64)
    plain = case_metrics(pred, target, 2, SPACING, {"FG": (1,)})
    assert not [k for k in plain if k.startswith(("surface_dice_", "hd95_"))]
    m = case_metrics(pred, target, 2, SPACING, {"FG": (1,)}, surface_tolerance_mm=1.0)
    assert m["surface_dice_FG"] == pytest.approx(34 / 52, abs=1e-6)
    assert "hd95_FG" not in m
    # a task without regions: the distance metrics are per foreground class
    m = case_metrics(pred, target, 2, SPACING, None, with_hd95=True, surface_tolerance_mm=3.0, class_names=["bg", "fg"])
    assert m["hd95_fg"] == pytest.approx(3.0, rel=1e-6) and m["surface_dice_fg"] == pytest.approx(1.0, abs=1e-6)
    assert "hd95_bg" not in m and "surface_dice_bg" not in m


def test_scoring_rules_pass_the_tolerance_and_keep_the_brats_empty_rules():
    truth = np.zeros((6, 6, 7), dtype=np.int64)
    truth[_box()] = 2  # oedema only: TC and ET empty in the truth
    pred = np.zeros_like(truth)
    pred[_shifted(2)] = 2  # the tumour one voxel (3 mm) higher ...
    pred[_shifted(2) & ~_box()] = 3  # ... with an ET layer on top, absent from the truth
    m = BRATS.case_metrics(pred, truth, SPACING, with_hd95=True, surface_tolerance_mm=1.0)
    assert m["surface_dice_TC"] == 0.0 and m["hd95_TC"] == HD95_ONE_EMPTY_MM  # predicted, absent from the truth
    assert (m["precision_ET"], m["recall_ET"]) == (0.0, 0.0)
    assert m["surface_dice_WT"] == pytest.approx(34 / 52, abs=1e-6)
    assert m["hd95_WT"] == pytest.approx(3.0, rel=1e-6)


def test_evaluation_tables_take_rows_with_new_and_missing_keys(tmp_path):
    from pdeseg.inference.evaluate import summary_markdown, write_results
    from pdeseg.metrics.segmentation import summarize

    rows = [{"case": "a", "dice_mean": 0.5, "precision_mean": 0.4}, {"case": "b", "dice_mean": 0.7, "surface_dice_WT": 0.9}]
    summary = {"scope": "volume", "split": "test", "checkpoint": "c.pt", "cases": 2,
               "inference": {"tta": True, "overlap": 0.5, "stitch": "auto", "surface_tolerance_mm": 2.0},
               "metrics": summarize(rows)}
    write_results(rows, summary, tmp_path)
    header = (tmp_path / "per_case.csv").read_text().splitlines()[0].split(",")
    assert header == ["case", "dice_mean", "precision_mean", "surface_dice_WT"]
    md = (tmp_path / "summary.md").read_text()
    assert "| precision_mean |" in md and "| surface_dice_WT |" in md
    assert "test-time mirroring" in md and "surface Dice at 2 mm" in md
    assert summary_markdown({**summary, "inference": None}).count("With") == 0
    assert math.isfinite(summary["metrics"]["dice_mean"]["mean"])
