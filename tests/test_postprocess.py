"""Post-processing rules on constructed label maps, their config and checkpoint plumbing, and
out-of-fold rescoring (``pdeseg crossval``)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import tiny_config_dict
from pdeseg.build import resolve
from pdeseg.cli import main
from pdeseg.config import config_from_dict
from pdeseg.errors import ConfigError
from pdeseg.nn.postprocess import (PostProcessing, choose_min_innermost_voxels, keep_main_components,
                                          region_chain, relabel_small_innermost)
from pdeseg.metrics.segmentation import region_masks

BRATS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def _tumour_with_island() -> np.ndarray:
    v = np.zeros((20, 20, 12), dtype=np.uint8)
    v[4:12, 4:12, 3:9] = 2  # edema (384 voxels)
    v[6:10, 6:10, 4:8] = 1  # necrosis inside
    v[7:9, 7:9, 5:7] = 3  # enhancing inside
    v[17:19, 17:19, 10:12] = 2  # an 8-voxel island far away
    return v


def test_small_islands_away_from_the_tumour_are_removed():
    v = _tumour_with_island()
    out = keep_main_components(v, 0.05)
    assert out[17:19, 17:19, 10:12].max() == 0  # the island is gone
    assert np.array_equal(out[:15, :15], v[:15, :15])  # the tumour is untouched, every class kept
    assert np.array_equal(keep_main_components(v, 0.01), v)  # 8 >= 0.01 x 384: the island stays
    # full connectivity: a voxel touching the tumour only at a corner belongs to it
    v[12, 12, 9] = 2
    assert keep_main_components(v, 0.05)[12, 12, 9] == 2
    assert np.array_equal(keep_main_components(np.zeros((4, 4), np.uint8), 0.5), np.zeros((4, 4)))


def test_a_small_et_becomes_necrosis_and_tc_wt_stay():
    chain = region_chain(4, BRATS)
    v = _tumour_with_island()  # ET: 8 voxels
    out = relabel_small_innermost(v, chain, 10)
    assert (out == 3).sum() == 0 and (out == 1).sum() == (v == 1).sum() + 8
    for name in ("WT", "TC"):
        assert np.array_equal(region_masks(out, BRATS)[name], region_masks(v, BRATS)[name])
    assert np.array_equal(relabel_small_innermost(v, chain, 8), v)  # 8 voxels is not under 8
    rules = PostProcessing(0.05, 10)
    both = rules.apply(v, 4, BRATS)
    assert both[17:19, 17:19, 10:12].max() == 0 and (both == 3).sum() == 0
    assert np.array_equal(v, _tumour_with_island())  # the input is not changed


def test_the_et_threshold_maximises_mean_et_dice_over_validation_cases():
    # (predicted ET voxels, truth has no ET, ET Dice without the rule)
    vols, empty, dice = zip((5, True, 0.0), (8, True, 0.0), (300, False, 0.8), (12, False, 0.4), (0, False, 0.0))
    t, mean = choose_min_innermost_voxels(vols, empty, dice)
    assert t == 9 and mean == pytest.approx((1 + 1 + 0.8 + 0.4 + 0) / 5)
    # when every small ET is real, the rule only loses: it stays off
    assert choose_min_innermost_voxels([5, 300], [False, False], [0.6, 0.9]) == (None, pytest.approx(0.75))


@pytest.mark.parametrize("section, match", [({"min_component_fraction": 0}, "min_component_fraction"),
                                            ({"min_component_fraction": 1.5}, "min_component_fraction"),
                                            ({"min_innermost_voxels": 0}, "min_innermost_voxels")])
def test_bad_postprocess_settings_are_refused(section, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"postprocess": section})


def test_the_et_rule_needs_nested_regions(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path)
    assert resolve(config_from_dict({**cfg, "postprocess": {"min_innermost_voxels": 50}})).cfg.postprocess.min_innermost_voxels == 50
    lgg = {**cfg, "postprocess": {"min_innermost_voxels": 50}, "data": {**cfg["data"], "format": "lgg", "root": ""}}
    with pytest.raises(ConfigError, match="postprocess.min_innermost_voxels needs nested regions"):
        resolve(config_from_dict(lgg))


def _rows(path) -> dict[str, dict[str, str]]:
    return {r["case"]: r for r in csv.DictReader(path.open())}


def test_crossval_rescoring_reuses_the_saved_maps_and_applies_the_rules(phantom_root, tmp_path, capsys):
    from test_crossval import train_tiny_folds

    _, cv = train_tiny_folds(phantom_root, tmp_path)
    assert len(list((cv / "predictions").glob("*.npz"))) == 6  # every out-of-fold label map is kept
    # no rules: the saved maps give the cross-validation's own table back
    assert main(["crossval", str(cv), "--name", "same", "--no-progress"]) == 0
    same, oof = _rows(cv / "same" / "oof_cases.csv"), _rows(cv / "oof_cases.csv")
    assert set(same) == set(oof)
    for c in oof:
        for k in ("dice_WT", "dice_TC", "dice_ET", "hd95_WT"):
            assert float(same[c][k]) == pytest.approx(float(oof[c][k]))
    # the rules, with the ET threshold chosen on the other folds, and TTA by the fold models
    assert main(["crossval", str(cv), "--name", "pp", "--min-component-fraction", "1", "--min-innermost-voxels", "auto",
                 "--tta", "--against", str(cv / "same"), "--no-progress"]) == 0
    text = (cv / "pp" / "summary.md").read_text()
    assert "per fold:" in text and "pp vs same:" in text and "dice_WT" in text
    assert set(_rows(cv / "pp" / "oof_cases.csv")) == set(oof)
    assert len(list((cv / "predictions_tta").glob("*.npz"))) == 6  # kept for the next variant with --tta
    assert main(["crossval", str(cv), "--name", "fold0", "--no-progress"]) == 2  # a run folder's name
    assert main(["crossval", str(tmp_path), "--name", "x", "--no-progress"]) == 2  # not a cross-validation


def test_predict_applies_the_checkpoints_postprocessing_unless_told_not_to(phantom_root, tmp_path):
    import nibabel as nib

    from test_crossval import _checkpoint

    cfg = tiny_config_dict(phantom_root, tmp_path)
    plain = _checkpoint(cfg, tmp_path / "plain.pt", seed=6)  # this initialisation predicts ET almost everywhere
    post = _checkpoint({**cfg, "postprocess": {"min_innermost_voxels": 10**9}}, tmp_path / "post.pt", seed=6)
    case = sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]

    def run(ckpt, out, *extra):
        assert main(["predict", "--checkpoint", str(ckpt), "--input", str(case), "--output", str(tmp_path / out),
                     "--no-progress", *extra]) == 0
        return np.asarray(nib.load(next((tmp_path / out).glob("*_seg.nii.gz"))).dataobj)

    raw, kept, off = run(plain, "a"), run(post, "b"), run(post, "c", "--no-postprocess")
    assert (raw == 4).any()  # the untrained model predicts some ET (file label 4): the rule has work to do
    assert np.array_equal(off, raw)  # same weights; the rule left out
    assert np.array_equal(kept, np.where(raw == 4, 1, raw))  # every ET voxel became necrosis
