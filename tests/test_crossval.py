"""Patient-level k-fold cross-validation: fold splits and ``pdeseg train --folds K``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import TINY_FEATURES, tiny_config_dict
from pdeseg.cli import main
from pdeseg.data.pipeline.splits import kfold_splits
from pdeseg.inference.options import InferenceOptions


@pytest.mark.parametrize("n, k", [(16, 5), (12, 4), (7, 7), (5, 2)])
def test_folds_are_disjoint_by_patient_and_test_every_case_once(n, k):
    ids = [f"case{i:02d}" for i in range(n)]
    folds = kfold_splits(ids, k, seed=3, val_fraction=0.1)
    assert len(folds) == k
    tested = [c for f in folds for c in f["test"]]
    assert sorted(tested) == ids  # every case is a test case exactly once
    sizes = [len(f["test"]) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for f in folds:
        train, val, test = set(f["train"]), set(f["val"]), set(f["test"])
        assert not (train & val or train & test or val & test) and train | val | test == set(ids)
        assert len(val) == max(1, round(0.1 * n)) and train
    assert kfold_splits(ids, k, seed=3, val_fraction=0.1) == folds  # deterministic
    assert kfold_splits(ids, k, seed=4, val_fraction=0.1) != folds


def test_bad_fold_settings_are_refused():
    ids = [f"c{i}" for i in range(4)]
    for k in (1, 5, 2.0, True):
        with pytest.raises(ValueError, match="folds must be a whole number from 2"):
            kfold_splits(ids, k)
    with pytest.raises(ValueError, match="duplicate"):
        kfold_splits(["a", "a", "b"], 2)
    with pytest.raises(ValueError, match="no training case"):
        kfold_splits(["a", "b"], 2, val_fraction=0.5)


def train_tiny_folds(phantom_root, tmp_path, folds: int = 3):
    """``pdeseg train --folds`` on the phantom with the tiny UNet, one epoch: ``(config path, cv folder)``."""
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    cfg["models"] = cfg["models"][:1]
    cfg["data"]["split"] = {"fractions": [0.7, 0.15, 0.15], "seed": 0}
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--folds", str(folds), "--no-progress"]) == 0
    return path, tmp_path / "tiny" / "unet" / f"cv{folds}"


def test_train_folds_scores_every_case_out_of_fold(phantom_root, tmp_path, capsys):
    path, out = train_tiny_folds(phantom_root, tmp_path)
    folds = json.loads((out / "folds.json").read_text())
    rows = list(csv.DictReader((out / "oof_cases.csv").open()))
    assert sorted(r["case"] for r in rows) == sorted(c for f in folds for c in f["test"])
    assert len(rows) == 6 and len({r["case"] for r in rows}) == 6  # the phantom's 6 cases, once each
    for r in rows:  # each case scored by the fold that tested it, a model that never saw it
        fold = folds[int(r["fold"])]
        assert r["case"] in fold["test"] and r["case"] not in fold["train"] + fold["val"]
        assert 0 <= float(r["dice_mean"]) <= 1 and "hd95_WT" in r
    for i in range(3):
        assert (out / f"fold{i}" / "best.pt").is_file()
        assert json.loads((out / f"fold{i}" / "split.json").read_text()) == folds[i]
    assert "3-fold cross-validation, 6 cases" in capsys.readouterr().out
    # a second call continues (nothing left to train) and keeps the same folds
    assert main(["train", "--config", str(path), "--folds", "3", "--no-progress"]) == 0
    assert json.loads((out / "folds.json").read_text()) == folds
    assert main(["train", "--config", str(path), "--folds", "2", "--no-progress"]) == 0  # its own folder, cv2


def test_train_folds_refuses_settings_that_fix_the_split(phantom_root, tmp_path, caplog):
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    cfg["data"]["train_cases"] = 2
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--folds", "3", "--no-progress"]) == 2
    assert "data.train_cases" in caplog.text
    cfg["data"].pop("train_cases")
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--folds", "3", "--stop-after", "1", "--no-progress"]) == 2
    assert "takes no --stop-after" in caplog.text


def _checkpoint(cfg_dict: dict, path, seed: int, model_index: int = 0):
    """A freshly initialised model saved as a pdeseg checkpoint (no training needed)."""
    from pdeseg.build import build_network, checkpoint_meta, resolve
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.config import config_from_dict
    from pdeseg.runtime import seed_everything

    exp = resolve(config_from_dict(cfg_dict))
    m = exp.cfg.models[model_index]
    seed_everything(seed)
    model = build_network(exp, m)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({**checkpoint_meta(exp, m, model), "state_dict": plain_state_dict(model), "training": {"epoch": 0}}, path)
    return path


def test_an_ensemble_averages_class_probabilities(phantom_root, tmp_path):
    import numpy as np
    import torch

    from pdeseg.errors import CheckpointError
    from pdeseg.inference.ensemble import EnsembleModel
    from pdeseg.inference.predict import Predictor
    from pdeseg.nn.output import class_probabilities

    cfg = tiny_config_dict(phantom_root, tmp_path)
    a = _checkpoint(cfg, tmp_path / "runs" / "fold0" / "best.pt", seed=1)
    b = _checkpoint(cfg, tmp_path / "runs" / "fold1" / "best.pt", seed=2)
    image = np.random.default_rng(0).normal(size=(4, 40, 36, 3)).astype(np.float32)
    options = InferenceOptions(device="cpu", precision="32")
    pa, pb = (Predictor.from_checkpoint(p, options).predict_logits(image) for p in (a, b))
    ensemble = Predictor.from_checkpoints(tmp_path / "runs", options)  # a folder: every best.pt below it
    assert isinstance(ensemble.model, EnsembleModel) and len(ensemble.model.members) == 2
    mean = (class_probabilities(pa[None]) + class_probabilities(pb[None])) / 2
    assert torch.allclose(class_probabilities(ensemble.predict_logits(image)[None]), mean, atol=1e-5)
    assert not torch.allclose(class_probabilities(pa[None]), mean, atol=1e-3)  # the members really differ
    one = Predictor.from_checkpoints([a], options)
    assert not isinstance(one.model, EnsembleModel) and torch.allclose(one.predict_logits(image), pa)
    other = dict(cfg, data={**cfg["data"], "modalities": ["flair", "t1ce"]})
    c = _checkpoint(other, tmp_path / "c.pt", seed=3)
    with pytest.raises(CheckpointError, match="modalities.*an ensemble needs one preprocessing"):
        Predictor.from_checkpoints([a, c], options)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="must hold best.pt files"):
        Predictor.from_checkpoints(tmp_path / "empty", options)


def test_predict_cli_takes_several_checkpoints(phantom_root, tmp_path):
    cfg = tiny_config_dict(phantom_root, tmp_path)
    a = _checkpoint(cfg, tmp_path / "a.pt", seed=1)
    b = _checkpoint(cfg, tmp_path / "b.pt", seed=2)
    case = sorted(p for p in phantom_root.iterdir() if p.is_dir())[0]
    assert main(["predict", "--checkpoint", str(a), str(b), "--input", str(case), "--output", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert list((tmp_path / "out").glob("*_seg.nii.gz"))


def test_evaluate_scores_an_ensemble_on_other_data_only(phantom_root, tmp_path, caplog):
    cfg = tiny_config_dict(phantom_root, tmp_path)
    a = _checkpoint(cfg, tmp_path / "runs" / "fold0" / "best.pt", seed=1)
    _checkpoint(cfg, tmp_path / "runs" / "fold1" / "best.pt", seed=2)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "runs"), "--split", "test", "--no-progress"]) == 2
    assert "no common held-out split" in caplog.text
    out = tmp_path / "ens_eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "runs"), "--split", "all", "--data", str(phantom_root),
                 "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 6 and len(summary["checkpoint"]) == 2
    assert summary["inference"]["models"].startswith("ensemble of 2")
    assert main(["evaluate", "--checkpoint", str(a), "--split", "all", "--data", str(phantom_root), "--out",
                 str(tmp_path / "one"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["checkpoint"] == str(a)


def _drive_folder(root, n: int = 6, size: int = 48):
    """A DRIVE-layout folder: noisy images with bright vessel-like lines, their masks, and a
    disk-shaped field of view that leaves the corners outside."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "1st_manual", "mask"):
        (root / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    fov = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size * 0.42) ** 2).astype(np.uint8) * 255
    for i in range(21, 21 + n):
        vessel = np.zeros((size, size), np.uint8)
        vessel[rng.integers(4, size - 4), :] = 255
        vessel[:, rng.integers(4, size - 4)] = 255
        image = (rng.normal(80, 20, (size, size, 3)) + (vessel[..., None] > 0) * 90).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}_training.tif")
        Image.fromarray(vessel).save(root / "1st_manual" / f"{i:02d}_manual1.gif")
        Image.fromarray(fov).save(root / "mask" / f"{i:02d}_training_mask.gif")
    return root


def test_crossval_rescoring_and_evaluate_agree_on_a_field_of_view(tmp_path):
    """The kept out-of-fold maps, scored again by ``pdeseg crossval``, give each case the
    same row as ``pdeseg evaluate`` of its fold's model: field of view and boundary F1 too."""
    root = _drive_folder(tmp_path / "drive")
    cfg = {"name": "drive", "output_dir": str(tmp_path / "runs"),
           "data": {"root": str(root), "format": "drive", "modalities": ["red", "green", "blue"],
                    "normalization": "zscore_all", "mode": "slices", "slices": "all", "spatial_size": [48, 48],
                    "cache_dir": str(tmp_path / "cache"), "split": {"fractions": [0.7, 0.15, 0.15], "seed": 0}},
           "models": [{"name": "unet", "kwargs": {"features": TINY_FEATURES}}],
           "train": {"epochs": 1, "batch_size": 2, "lr": 1e-2, "precision": "32", "seed": 0}}
    path = tmp_path / "drive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--folds", "2", "--no-progress"]) == 0
    cv = tmp_path / "runs" / "drive" / "unet" / "cv2"
    assert main(["crossval", str(cv), "--name", "again", "--tta", "--no-progress"]) == 0  # the fold models segment again
    from PIL import Image

    from pdeseg.experiments.crossval import load_labels

    fov = np.asarray(Image.open(root / "mask" / "21_training_mask.gif")) > 0
    rescored = {r["case"]: r for r in csv.DictReader((cv / "again" / "oof_cases.csv").open())}
    folds = json.loads((cv / "folds.json").read_text())
    outside_foreground = 0
    for i, fold in enumerate(folds):
        out = tmp_path / f"eval{i}"
        assert main(["evaluate", "--checkpoint", str(cv / f"fold{i}" / "best.pt"), "--split", "test", "--hd95",
                     "--tta", "--out", str(out), "--no-progress"]) == 0
        for row in csv.DictReader((out / "per_case.csv").open()):
            mine = rescored[row["case"]]
            assert set(row) <= set(mine), sorted(set(row) - set(mine))  # bf1_* included
            for key, value in row.items():
                if key not in ("case", "domain"):
                    assert float(mine[key]) == pytest.approx(float(value), abs=1e-9), (row["case"], key)
        for case in fold["test"]:
            kept = load_labels(cv / "predictions_tta" / f"{case}.npz")[..., 0]
            outside_foreground += int(kept[~fov].sum())
    assert outside_foreground  # the kept maps hold foreground outside the field of view: it matters to the scores
