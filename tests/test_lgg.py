"""Kaggle LGG (kaggle_3m) reader, binary mode end to end, per-volume Dice and overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pdeseg.config import config_from_dict
from pdeseg.data.formats import FORMATS
from pdeseg.data.phantoms.brats import write_lgg_phantom_dataset
from pdeseg.data.readers.lgg import LggDataError, find_lgg_cases, load_lgg_case
from conftest import ce_dice as CEDiceLoss  # noqa: N812
from pdeseg.nn.output import class_probabilities, output_channels, predicted_classes
from pdeseg.viz.overlays import GREEN, RED, YELLOW, overlay

from conftest import TINY_FEATURES

PID = "TCGA_CS_4941_19960909"


def _write_patient(root, n_slices=11, pid=PID, size=(16, 16)):
    """A patient folder in the exact kaggle_3m naming: RGB uint8 slices, 0/255 masks.
    Slice n has red channel = n so that the order can be checked."""
    folder = root / "kaggle_3m" / pid
    folder.mkdir(parents=True)
    for n in range(1, n_slices + 1):
        img = np.zeros((*size, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = n, 100, 200
        tifffile.imwrite(folder / f"{pid}_{n}.tif", img, photometric="rgb")
        mask = np.zeros(size, np.uint8)
        mask[2:5, 3:7] = 255 if n % 2 else 0
        tifffile.imwrite(folder / f"{pid}_{n}_mask.tif", mask)
    return folder


def test_reader_orders_slices_numerically_and_maps_channels_and_masks(tmp_path):
    _write_patient(tmp_path)
    (tmp_path / "kaggle_3m" / "data.csv").write_text("Patient,RNASeqCluster\n")  # the set ships extra files
    cases = find_lgg_cases(tmp_path)  # the parent of kaggle_3m works as well
    assert [c.case_id for c in cases] == [PID] and cases[0].numbers == tuple(range(1, 12))
    loaded = load_lgg_case(cases[0])
    assert loaded.image.shape == (3, 16, 16, 11) and loaded.label.shape == (16, 16, 11)
    assert loaded.image[0, 0, 0].tolist() == list(range(1, 12))  # _10 and _11 come after _9
    assert loaded.image[1].max() == 100 and loaded.image[2].max() == 200
    assert set(np.unique(loaded.label)) == {0, 1} and loaded.label[..., 0].sum() == 12 and loaded.label[..., 1].sum() == 0
    flair = load_lgg_case(cases[0], ["flair"])
    assert flair.image.shape == (1, 16, 16, 11) and flair.image.max() == 100


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: (f / f"{PID}_3_mask.tif").unlink(), "no mask"),
        (lambda f: (f / f"{PID}_4.tif").unlink() or (f / f"{PID}_4_mask.tif").unlink(), r"_4.tif is missing"),
        (lambda f: (f / f"{PID}_2.tif").unlink(), "mask without its image"),
        (lambda f: (f / f"{PID}_5.tif").write_bytes(b"II*\x00garbage"), "cannot read TIFF"),
        (lambda f: tifffile.imwrite(f / f"{PID}_6.tif", np.zeros((16, 16), np.uint8)), r"expected an RGB slice"),
        (lambda f: tifffile.imwrite(f / f"{PID}_7.tif", np.zeros((20, 16, 3), np.uint8), photometric="rgb"), "slice size"),
        (lambda f: tifffile.imwrite(f / f"{PID}_8_mask.tif", np.full((16, 16), 128, np.uint8)), "unexpected mask values"),
        (lambda f: tifffile.imwrite(f / f"{PID}_9_mask.tif", np.zeros((8, 8), np.uint8)), "mask shape"),
        (lambda f: tifffile.imwrite(f / "scan_1.tif", np.zeros((16, 16, 3), np.uint8)), "unexpected file name"),
    ],
)
def test_bad_files_give_errors_naming_the_file(tmp_path, damage, match):
    folder = _write_patient(tmp_path)
    damage(folder)
    with pytest.raises(LggDataError, match=match) as err:
        for case in find_lgg_cases(tmp_path):
            load_lgg_case(case)
    assert PID in str(err.value) or "scan_1" in str(err.value)


def test_missing_or_empty_folders_and_unknown_modalities(tmp_path):
    with pytest.raises(LggDataError, match="not found"):
        find_lgg_cases(tmp_path / "nope")
    (tmp_path / "kaggle_3m" / "empty").mkdir(parents=True)
    with pytest.raises(LggDataError, match="no LGG cases"):
        find_lgg_cases(tmp_path)
    _write_patient(tmp_path)
    with pytest.raises(LggDataError, match="unknown modality"):
        find_lgg_cases(tmp_path, ["t2"])


def test_unlabelled_patients_are_readable_for_prediction(tmp_path):
    folder = _write_patient(tmp_path, n_slices=3)
    for m in folder.glob("*_mask.tif"):
        m.unlink()
    with pytest.raises(LggDataError, match="no mask"):
        find_lgg_cases(tmp_path)
    case = find_lgg_cases(tmp_path, require_label=False)[0]
    assert case.masks is None and load_lgg_case(case).label is None


def test_dice_is_per_volume_not_a_mean_over_slices():
    """Buda et al. score each patient's whole volume: 2|A n B| / (|A| + |B|) over all its slices."""
    truth = np.zeros((8, 8, 3), np.int64)
    pred = np.zeros_like(truth)
    truth[:4, :4, 0] = 1  # 16 voxels, found exactly
    pred[:4, :4, 0] = 1
    truth[:, :, 1] = 1  # 64 voxels, half found
    pred[:4, :, 1] = 1
    pred[0, 0, 2] = 1  # a false positive on a slice without tumour
    from pdeseg.metrics import ScoringRules

    m = ScoringRules(FORMATS["lgg"].class_names).case_metrics(pred, truth)
    assert m["dice_tumour"] == pytest.approx(2 * (16 + 32) / ((16 + 64) + (16 + 32 + 1)))
    assert m["dice_mean"] == m["dice_tumour"]
    per_slice = np.mean([1.0, 2 * 32 / (64 + 32), 0.0])
    assert abs(m["dice_tumour"] - per_slice) > 0.05


def test_sigmoid_head_probabilities_labels_and_loss():
    assert output_channels(2, "sigmoid") == 1 and output_channels(4) == 4
    with pytest.raises(ValueError, match="2 classes"):
        output_channels(4, "sigmoid")
    z = torch.tensor([[[[-2.0, 0.5], [3.0, -0.1]]]])  # (1, 1, 2, 2)
    y = torch.tensor([[[0, 1], [1, 1]]])
    p = class_probabilities(z)
    assert p.shape == (1, 2, 2, 2) and torch.allclose(p.sum(1), torch.ones(1, 2, 2))
    assert predicted_classes(z).tolist() == [[[0, 1], [1, 0]]]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.float())
    assert torch.isclose(CEDiceLoss(1.0, 0.0)(z, y), bce)
    # a two-class softmax head with logits (0, z) is the same model: same CE and Dice
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert torch.isclose(CEDiceLoss()(z, y), CEDiceLoss()(two, y), atol=1e-6)
    assert torch.equal(predicted_classes(two), predicted_classes(z))


def test_overlay_colours_truth_red_prediction_green_overlap_yellow():
    image = np.linspace(0, 1, 100).reshape(10, 10)
    truth = np.zeros((10, 10), int)
    pred = np.zeros((10, 10), int)
    truth[1:4, 1:4] = 1
    pred[6:9, 6:9] = 1
    truth[5, 0:3] = 2  # any class counts
    pred[5, 0:3] = 1
    out = overlay(image, truth, pred)
    assert tuple(out[1, 1]) == RED and tuple(out[2, 2]) != RED  # outline only, interior keeps the image
    assert tuple(out[6, 6]) == GREEN and tuple(out[5, 1]) == YELLOW
    assert out[0, 0, 0] == out[0, 0, 1] == out[0, 0, 2]  # grey elsewhere
    with pytest.raises(ValueError, match="differ"):
        overlay(image, truth[:5], pred)


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_binary_mode_trains_evaluates_and_writes_masks(tmp_path, output):
    from pdeseg.inference.evaluate import evaluate_checkpoint
    from pdeseg.inference.folder import predict_folder
    from pdeseg.training.run import train_model

    write_lgg_phantom_dataset(tmp_path / "data", n_cases=4, seed=1, shape=(32, 32, 16))
    cfg = config_from_dict({
        "name": "lgg", "num_classes": 2, "output": output,
        "data": {"root": str(tmp_path / "data"), "format": "lgg", "modalities": ["pre", "flair", "post"],
                 "normalization": "scale255", "slices": "all", "cache_dir": str(tmp_path / "cache"),
                 "split": {"fractions": [0.5, 0.25, 0.25], "seed": 0}},
        "models": [{"name": "unet", "kwargs": {"features": TINY_FEATURES}}],
        "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "precision": "32"},
    })
    run = tmp_path / "run"
    result = train_model(cfg, cfg.models[0], run, progress=False)
    row = result.history[-1]
    for key in ("train_accuracy", "train_iou_mean_all", "train_dice_mean", "val_accuracy", "val_iou_mean_all", "val_dice_mean"):
        assert 0 <= row[key] <= 1, key
    assert 0 < row["val_loss"] < 3 and 0 < row["train_loss"] < 3  # CE + Dice of a fresh binary net is about 1.4
    assert "val_dice_WT" not in row  # no BraTS regions in a binary task
    summary = evaluate_checkpoint(run / "best.pt", tmp_path / "eval", split="test", progress=False, figures=1)
    assert summary["cases"] == 1 and set(summary["metrics"]) >= {"dice_tumour", "dice_mean", "iou_mean_all"}
    assert len(list((tmp_path / "eval" / "figures" / "overlays").glob("*.png"))) == 1
    chosen = json.loads((run / "split.json").read_text())["train"][0]
    evaluate_checkpoint(run / "best.pt", tmp_path / "eval2", split="train", progress=False, figure_cases=[chosen])
    assert [p.name.split("_z")[0] for p in (tmp_path / "eval2" / "figures" / "overlays").glob("*.png")] == [chosen]
    with pytest.raises(ValueError, match="not among the cases"):
        evaluate_checkpoint(run / "best.pt", tmp_path / "eval3", split="test", progress=False, figure_cases=["TCGA_XX"])
    folders = predict_folder(run / "best.pt", tmp_path / "data" / "kaggle_3m", tmp_path / "pred", progress=False).written
    assert len(folders) == 4
    masks = sorted(folders[0].glob("*_mask.png"))
    assert len(masks) == 16 and masks[0].name.startswith(folders[0].name + "_")
    values = np.stack([np.asarray(Image.open(m)) for m in masks])
    assert values.shape == (16, 32, 32) and set(np.unique(values)) <= {0, 255}
