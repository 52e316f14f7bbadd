"""Cell-instance scoring and extraction (pdeseg.metrics.instances) on hand-made images whose
answers are worked out in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from pdeseg.metrics.instances import (
    DSB_THRESHOLDS,
    ap50,
    boundary_f1,
    boundary_f1_scores,
    boundary_targets,
    dsb_score,
    instance_metrics,
    instances_from_boundary_classes,
    instances_from_mask,
    match_instances,
    split_merge_counts,
)


def rect(shape, r0, r1, c0, c1, label=1, out=None):
    """Label ``label`` on rows r0..r1-1, cols c0..c1-1 (half-open), drawn into ``out``."""
    a = np.zeros(shape, dtype=np.int64) if out is None else out
    a[r0:r1, c0:c1] = label
    return a


def disk(shape, cy, cx, r, label=1, out=None):
    a = np.zeros(shape, dtype=np.int64) if out is None else out
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    a[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label
    return a


def same_partition(a, b):
    """True when a and b hold the same objects up to their numbering (IoU matrix a permutation of 1s)."""
    iou = match_instances(a, b)
    return iou.shape[0] == iou.shape[1] and np.array_equal(np.sort(iou.max(axis=1)), np.ones(iou.shape[0])) \
        and np.array_equal(np.sort(iou.max(axis=0)), np.ones(iou.shape[1]))


# --------------------------------------------------------------------------------------
# matching and the DSB score
# --------------------------------------------------------------------------------------


def test_default_thresholds_are_the_dsb_ones():
    assert DSB_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_match_instances_non_contiguous_labels():
    # truth: label 7 = 2x2 block (4 px), label 3 = 2x4 block (8 px); prediction: label 40 covers
    # the whole of 7 plus 2 px of background -> IoU 4 / 6; label 5 = left half of 3 -> IoU 4 / 8
    true = rect((6, 8), 0, 2, 0, 2, 7)
    rect((6, 8), 4, 6, 0, 4, 3, out=true)
    pred = rect((6, 8), 0, 3, 0, 2, 40)
    rect((6, 8), 4, 6, 0, 2, 5, out=pred)
    iou, pl, tl = match_instances(pred, true, return_labels=True)
    assert pl.tolist() == [5, 40] and tl.tolist() == [3, 7]  # rows / columns in increasing label order
    np.testing.assert_allclose(iou, [[0.5, 0.0], [0.0, 4 / 6]])


def test_prediction_equal_to_truth_scores_one():
    true = rect((20, 20), 1, 6, 1, 6, 2)
    disk((20, 20), 13, 13, 4, 9, out=true)
    pred = np.where(true == 2, 100, np.where(true == 9, 1, 0))  # other numbering, same objects
    assert dsb_score(pred, true) == 1.0
    assert ap50(pred, true) == 1.0
    m = instance_metrics(pred, true)
    assert m == {"dsb_score": 1.0, "ap50": 1.0, "n_true": 2, "n_pred": 2, "n_split": 0, "n_merged": 0}


def test_shifted_rectangle_iou_06_scores_02():
    # truth 10 x 8 px (80), prediction shifted 2 columns: intersection 10 x 6 = 60, union 100,
    # IoU = 0.6 exactly. IoU > t holds for t = 0.5, 0.55 only (0.6 > 0.6 is false): 2 / 10 = 0.2
    true = rect((12, 14), 1, 11, 1, 9)
    pred = rect((12, 14), 1, 11, 3, 11)
    assert match_instances(pred, true)[0, 0] == 0.6
    score, per = dsb_score(pred, true, return_per_threshold=True)
    assert score == pytest.approx(0.2)
    assert per.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert ap50(pred, true) == 1.0


def test_extra_false_positive():
    # as above plus an unmatched 2x2 prediction. t = 0.5, 0.55: TP 1, FP 1, FN 0 -> 1/2;
    # t >= 0.6: TP 0, FP 2, FN 1 -> 0. DSB = 2 * 0.5 / 10 = 0.1, AP50 = 0.5
    true = rect((12, 14), 1, 11, 1, 9)
    pred = rect((12, 14), 1, 11, 3, 11)
    rect((12, 14), 0, 1, 12, 14, 2, out=pred)
    assert dsb_score(pred, true) == pytest.approx(0.1)
    assert ap50(pred, true) == 0.5


def test_one_pixel_bleed_scores_and_is_neither_split_nor_merge():
    # truths T0 (cols 0-9), T1 (cols 10-19), 10 x 10 each; prediction P0 = T0 + column 10,
    # P1 = columns 11-19. IoU(P0, T0) = 100 / 110 = 0.909, IoU(P1, T1) = 90 / 100 = 0.9.
    # t = 0.5 .. 0.85 (8 thresholds): both match -> 1; t = 0.9: P0 only (0.9 > 0.9 false):
    # TP 1, FP 1, FN 1 -> 1/3; t = 0.95: 0. DSB = (8 + 1/3) / 10
    true = rect((10, 20), 0, 10, 0, 10, 1)
    rect((10, 20), 0, 10, 10, 20, 2, out=true)
    pred = rect((10, 20), 0, 10, 0, 11, 1)
    rect((10, 20), 0, 10, 11, 20, 2, out=pred)
    assert dsb_score(pred, true) == pytest.approx((8 + 1 / 3) / 10)
    # P0 holds 10% of T1 (not > 50%): no merge; T1's only fragment is P1: no split
    assert split_merge_counts(pred, true) == {"n_split": 0, "n_merged": 0}


def test_thresholds_below_half_use_an_optimal_one_to_one_matching():
    # T1 = cols 0-9, T2 = cols 10-19 (10 rows, 100 px each). P1 = cols 3-14 (120 px):
    # IoU(P1, T1) = 70 / 150 = 0.467, IoU(P1, T2) = 50 / 170 = 0.294; P2 = cols 0-2 (30 px):
    # IoU(P2, T1) = 30 / 100 = 0.3. Greedy by IoU would take P1-T1 and leave P2 unmatched;
    # the best matching at t = 0.1 is P1-T2, P2-T1: TP 2 -> 1.0. At t = 0.5 nothing passes.
    true = rect((10, 20), 0, 10, 0, 10, 1)
    rect((10, 20), 0, 10, 10, 20, 2, out=true)
    pred = rect((10, 20), 0, 10, 3, 15, 1)
    rect((10, 20), 0, 10, 0, 3, 2, out=pred)
    assert dsb_score(pred, true, thresholds=(0.1,)) == 1.0
    assert dsb_score(pred, true, thresholds=(0.4,)) == pytest.approx(1 / 3)  # P1-T1 only: 1 / (1 + 1 + 1)
    assert ap50(pred, true) == 0.0


def test_empty_rules():
    empty = np.zeros((8, 8), dtype=np.int32)
    one = rect((8, 8), 2, 5, 2, 5)
    assert dsb_score(empty, empty) == 1.0 and ap50(empty, empty) == 1.0
    assert dsb_score(one, empty) == 0.0 and dsb_score(empty, one) == 0.0
    assert ap50(empty, one) == 0.0
    assert match_instances(empty, one).shape == (0, 1)
    assert instance_metrics(empty, empty) == {"dsb_score": 1.0, "ap50": 1.0, "n_true": 0, "n_pred": 0,
                                              "n_split": 0, "n_merged": 0}
    assert instance_metrics(empty, one)["n_true"] == 1 and instance_metrics(empty, one)["dsb_score"] == 0.0


def test_thousand_instances_and_huge_labels():
    # a 40 x 25 grid of 4 x 4 cells (1000 objects) with shuffled, non-contiguous labels
    rng = np.random.default_rng(0)
    ids = np.arange(1000).reshape(40, 25)
    grid = np.kron(ids, np.ones((4, 4), dtype=np.int64))
    true = rng.permutation(1000)[grid] * 7 + 3
    pred = rng.permutation(1000)[grid] + 2 ** 40  # labels far beyond the pixel count
    pred[:4, :4] = 0  # one missed cell: 999 TP, 1 FN at every threshold
    iou = match_instances(pred, true)
    assert iou.shape == (999, 1000) and np.count_nonzero(iou) == 999 and np.all(iou[iou > 0] == 1.0)
    m = instance_metrics(pred, true)
    assert m["dsb_score"] == pytest.approx(999 / 1000) and m["n_pred"] == 999 and m["n_true"] == 1000


def test_torch_and_bool_inputs():
    torch = pytest.importorskip("torch")
    true = rect((12, 14), 1, 11, 1, 9)
    pred = rect((12, 14), 1, 11, 3, 11)
    assert dsb_score(torch.from_numpy(pred), torch.from_numpy(true)) == pytest.approx(0.2)
    assert dsb_score(pred.astype(bool), true.astype(bool)) == pytest.approx(0.2)  # a mask is one object


# --------------------------------------------------------------------------------------
# splits and merges
# --------------------------------------------------------------------------------------


def test_merged_pair_counts_one_merge():
    # two touching 5x5 cells, one 5x10 prediction over both: it holds 100% (> 50%) of each -> 1 merge.
    # IoU with each is 25 / 50 = 0.5, not > 0.5: TP 0, FP 1, FN 2 -> DSB 0
    true = rect((5, 10), 0, 5, 0, 5, 1)
    rect((5, 10), 0, 5, 5, 10, 2, out=true)
    pred = rect((5, 10), 0, 5, 0, 10, 4)
    assert split_merge_counts(pred, true) == {"n_split": 0, "n_merged": 1}
    assert dsb_score(pred, true) == 0.0
    m = instance_metrics(pred, true)
    assert (m["n_true"], m["n_pred"], m["n_split"], m["n_merged"]) == (2, 1, 0, 1)
    # swapping the roles turns the merge into a split
    assert split_merge_counts(true, pred) == {"n_split": 1, "n_merged": 0}


def test_blob_over_three_cells_is_one_merge():
    true = np.zeros((5, 15), dtype=np.int64)
    for k in range(3):
        rect(true.shape, 0, 5, 5 * k, 5 * k + 5, k + 1, out=true)
    pred = rect(true.shape, 0, 5, 0, 15, 1)
    assert split_merge_counts(pred, true) == {"n_split": 0, "n_merged": 1}


def test_split_cell_counted_and_specks_ignored():
    # one 10x10 cell predicted as two 10x5 halves: each lies wholly inside it and covers 50% -> 1 split
    true = rect((10, 10), 0, 10, 0, 10, 1)
    pred = rect((10, 10), 0, 10, 0, 5, 1)
    rect((10, 10), 0, 10, 5, 10, 2, out=pred)
    assert split_merge_counts(pred, true) == {"n_split": 1, "n_merged": 0}
    # the whole cell but a 2x2 corner speck (4 px = 4% of the cell < min_cover 10%): no split
    pred = rect((10, 10), 0, 10, 0, 10, 1)
    rect((10, 10), 0, 2, 0, 2, 2, out=pred)
    assert split_merge_counts(pred, true) == {"n_split": 0, "n_merged": 0}
    assert split_merge_counts(pred, true, min_cover=0.03) == {"n_split": 1, "n_merged": 0}


# --------------------------------------------------------------------------------------
# boundary F1
# --------------------------------------------------------------------------------------


def test_boundary_f1_square_shifted_by_one_pixel():
    # 4x4 square (rows/cols 2-5) and the same shifted right by one column (cols 3-6). Each
    # boundary is the 12-pixel ring. They share the top and bottom rows' 3 common pixels each
    # (cols 3-5): 6 of 12 -> precision = recall = F1 = 0.5 at tolerance 0. Every other ring
    # pixel is one column away from the other ring -> 1.0 at tolerance 1.
    true = rect((10, 10), 2, 6, 2, 6)
    pred = rect((10, 10), 2, 6, 3, 7)
    assert boundary_f1(pred, true, tolerance=0) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert boundary_f1(pred, true, tolerance=0.9)["f1"] == 0.5
    assert boundary_f1(pred, true, tolerance=1) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert boundary_f1_scores(pred, true) == {"bf1_1": 1.0, "bf1_2": 1.0, "bf1_3": 1.0}
    assert boundary_f1_scores(pred, true, tolerances=(0, 0.5, 2.0)) == {"bf1_0": 0.5, "bf1_0.5": 0.5, "bf1_2": 1.0}
    assert boundary_f1_scores(pred, true, tolerances=np.array([1.0])) == {"bf1_1": 1.0}
    # columns 2 units wide, rows 1: at tolerance 1 the 6 shared pixels match, and so do the
    # prediction's left-column pixels (3, 3), (4, 3), one row from the true top / bottom rows;
    # its right-column pixels (rows 2-5, col 6) are >= 2 units away: 8 / 12 both ways
    assert boundary_f1(pred, true, tolerance=1, spacing=(1, 2))["f1"] == pytest.approx(2 / 3)
    assert boundary_f1(pred, true, tolerance=2, spacing=(1, 2))["f1"] == 1.0


def test_boundary_f1_precision_and_recall_differ():
    # truth: 6x6 square (20-pixel ring); prediction: the same square plus a 2x2 block far away
    # (4 boundary pixels, all > 3 px from the truth). Precision 20 / 24, recall 1, F1 = 2*p*r/(p+r)
    true = rect((20, 20), 1, 7, 1, 7)
    pred = rect((20, 20), 1, 7, 1, 7)
    rect((20, 20), 15, 17, 15, 17, out=pred)
    r = boundary_f1(pred, true, tolerance=3)
    p = 20 / 24
    assert r["precision"] == pytest.approx(p) and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(2 * p / (p + 1))


def test_boundary_f1_empty_and_image_border_rules():
    empty = np.zeros((6, 6), dtype=bool)
    full = np.ones((6, 6), dtype=bool)
    square = rect((6, 6), 1, 4, 1, 4)
    assert boundary_f1(empty, empty, 1) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert boundary_f1(square, empty, 1) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert boundary_f1(empty, square, 1)["f1"] == 0.0
    # the image frame is not a boundary: a full mask has none, like an empty one
    assert boundary_f1(full, empty, 1)["f1"] == 1.0
    # ... unless image_border=True: the full mask's boundary is then the 20-pixel frame
    assert boundary_f1(full, empty, 1, image_border=True)["f1"] == 0.0
    assert boundary_f1(full, full, 0, image_border=True)["f1"] == 1.0
    # left half of the image: only column 2 (6 px) is a boundary; with the frame, 6 + 2 + 2 + 4 = 14 px
    half = rect((6, 6), 0, 6, 0, 3)
    assert boundary_f1(half, rect((6, 6), 0, 6, 0, 2), 0)["f1"] == 0.0  # columns 2 vs 1 do not coincide
    assert boundary_f1(half, rect((6, 6), 0, 6, 0, 2), 0, image_border=True)["precision"] == pytest.approx(8 / 14)


def test_boundary_f1_sees_the_line_between_touching_cells():
    # as label images, two touching cells have boundary pixels on both sides of their contact
    two = rect((6, 10), 1, 5, 1, 5, 1)
    rect((6, 10), 1, 5, 5, 9, 2, out=two)
    one = (two > 0).astype(np.int64)
    assert boundary_f1(one, two, tolerance=0)["precision"] == 1.0
    assert boundary_f1(one, two, tolerance=0)["recall"] < 1.0


def test_boundary_f1_3d():
    true = np.zeros((8, 8, 8), dtype=bool)
    true[2:6, 2:6, 2:6] = True
    pred = np.roll(true, 1, axis=2)
    assert boundary_f1(pred, true, 1)["f1"] == 1.0
    assert boundary_f1(pred, true, 0)["f1"] < 1.0


# --------------------------------------------------------------------------------------
# instance extraction
# --------------------------------------------------------------------------------------


def touching_squares_classes():
    """Two 5x4 cells side by side (rows 1-5, cols 1-4 and 5-8) as classes: 2 = boundary ring of
    each cell (so columns 4 and 5 form a double separating line), 1 = the 3x2 interiors."""
    c = np.zeros((7, 10), dtype=np.int64)
    c[1:6, 1:9] = 2
    c[2:5, 2:4] = 1
    c[2:5, 6:8] = 1
    return c


def test_touching_squares_two_instances_from_boundary_classes_one_from_mask():
    c = touching_squares_classes()
    assert instances_from_mask(c > 0).max() == 1  # the foreground is one component
    inst = instances_from_boundary_classes(c)
    assert inst.dtype == np.int32 and inst.max() == 2
    assert np.array_equal(inst > 0, c > 0)  # every foreground pixel is assigned
    assert inst[3, 2] != inst[3, 7]
    # each boundary pixel goes to the nearer interior: columns 1-4 left, 5-8 right
    assert len(np.unique(inst[1:6, 1:5])) == 1 and len(np.unique(inst[1:6, 5:9])) == 1
    # the same from probabilities (3, H, W): one-hot smoothed a little
    prob = np.stack([(c == k).astype(np.float32) for k in range(3)]) * 0.8 + 0.1
    assert same_partition(instances_from_boundary_classes(prob), inst)


def test_boundary_classes_keep_cells_without_interior_and_drop_small():
    c = touching_squares_classes()
    c[0, 0] = 2  # a 1-pixel "cell" of boundary class only: kept as its own instance
    assert instances_from_boundary_classes(c).max() == 3
    assert instances_from_boundary_classes(c, min_size=2).max() == 2


def test_instances_from_mask_connectivity_and_min_size():
    m = np.zeros((6, 6), dtype=bool)
    m[0:2, 0:2] = True  # 4 px
    m[2, 2] = True  # 1 px, touches the block only at a corner
    m[4:6, 3:6] = True  # 6 px
    assert instances_from_mask(m).max() == 3  # 4-connectivity: the corner pixel is separate
    assert instances_from_mask(m, connectivity=2).max() == 2  # 8-connectivity joins it
    inst = instances_from_mask(m, min_size=2)
    assert inst.max() == 2 and inst[2, 2] == 0 and inst[0, 0] == 1 and inst[5, 5] == 2
    vol = np.zeros((4, 4, 4), dtype=np.uint8)
    vol[0, 0, 0] = vol[3, 3, 3] = 1
    assert instances_from_mask(vol).max() == 2


def test_boundary_targets_by_hand():
    # a 4x4 square: its 12-pixel ring is boundary, the 2x2 centre interior
    inst = rect((6, 6), 1, 5, 1, 5, 7)
    t = boundary_targets(inst)
    assert t.dtype == np.uint8
    assert np.count_nonzero(t == 2) == 12 and np.count_nonzero(t == 1) == 4 and t[2, 2] == 1
    # width 2 peels the centre too
    assert np.count_nonzero(boundary_targets(inst, width=2) == 2) == 16
    # two touching cells: both sides of the contact are boundary, the interiors do not touch
    two = rect((7, 10), 1, 6, 1, 5, 1)
    rect((7, 10), 1, 6, 5, 9, 2, out=two)
    t = boundary_targets(two)
    assert np.array_equal(t, touching_squares_classes())


@pytest.mark.parametrize("touching", [False, True])
def test_boundary_targets_round_trip(touching):
    shape = (40, 40)
    inst = disk(shape, 10, 10, 6, 3)
    rect(shape, 24, 34, 5, 17, 8, out=inst)
    if touching:
        disk(shape, 10, 19, 5, 5, out=inst)  # overlaps disk 3 and overwrites part of it: a shared contact line
        rect(shape, 24, 34, 17, 30, 9, out=inst)  # touches rectangle 8 along column 17
    else:
        disk(shape, 12, 30, 5, 5, out=inst)
        rect(shape, 24, 34, 22, 30, 9, out=inst)
    assert instances_from_mask(inst > 0).max() == (2 if touching else 4)
    back = instances_from_boundary_classes(boundary_targets(inst))
    assert same_partition(back, inst)
    assert dsb_score(back, inst) == 1.0


def test_boundary_targets_round_trip_3d():
    vol = np.zeros((10, 10, 10), dtype=np.int64)
    vol[1:9, 1:5, 1:9] = 1
    vol[1:9, 5:9, 1:9] = 2  # touching along a face
    back = instances_from_boundary_classes(boundary_targets(vol))
    assert same_partition(back, vol)


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    a = rect((8, 8), 2, 5, 2, 5)
    with pytest.raises(ValueError, match="pred_inst and true_inst must have the same shape"):
        dsb_score(a, a[:7])
    with pytest.raises(ValueError, match="true_inst has negative labels"):
        ap50(a, -a)
    with pytest.raises(ValueError, match="pred_inst must be an integer label image.*float64"):
        match_instances(a.astype(float), a)
    with pytest.raises(ValueError, match="true_inst must be an integer label image"):
        match_instances(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="pred_inst must be 2-D or 3-D"):
        instance_metrics(a[0], a[0])
    with pytest.raises(ValueError, match="thresholds must lie in"):
        dsb_score(a, a, thresholds=(0.5, 1.0))
    with pytest.raises(ValueError, match="min_cover"):
        split_merge_counts(a, a, min_cover=0)
    with pytest.raises(ValueError, match="pred_mask must be an integer label image"):
        boundary_f1(a.astype(np.float32), a, 1)
    with pytest.raises(ValueError, match="pred_mask and true_mask must have the same shape"):
        boundary_f1(a, a[:, :7], 1)
    with pytest.raises(ValueError, match="tolerance"):
        boundary_f1(a, a, -1)
    with pytest.raises(ValueError, match="spacing has 3 entries"):
        boundary_f1(a, a, 1, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="tolerances must be distinct"):
        boundary_f1_scores(a, a, tolerances=(1, 1.0))
    with pytest.raises(ValueError, match="tolerance must be a finite distance"):
        boundary_f1_scores(a, a, tolerances=(1, "2"))
    with pytest.raises(ValueError, match="mask must be binary"):
        instances_from_mask(a * 2)
    with pytest.raises(ValueError, match="connectivity"):
        instances_from_mask(a, connectivity=3)
    with pytest.raises(ValueError, match="min_size"):
        instances_from_mask(a, min_size=-1)
    with pytest.raises(ValueError, match="class axis first"):
        instances_from_boundary_classes(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="2 channels"):
        instances_from_boundary_classes(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="interior and boundary must be different"):
        instances_from_boundary_classes(a, interior=1, boundary=1)
    with pytest.raises(ValueError, match="instances has negative labels"):
        boundary_targets(-a)
    with pytest.raises(ValueError, match="width"):
        boundary_targets(a, width=0)
