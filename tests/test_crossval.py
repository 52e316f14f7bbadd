"""Patient-level k-fold cross-validation: fold splits and ``pdeseg train --folds K``."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from conftest import tiny_config_dict
from pdeseg.cli import main
from pdeseg.data.splits import kfold_splits


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


def test_train_folds_scores_every_case_out_of_fold(phantom_root, tmp_path, capsys):
    cfg = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    cfg["models"] = cfg["models"][:1]
    cfg["data"]["split"] = {"fractions": [0.7, 0.15, 0.15], "seed": 0}
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--folds", "3", "--no-progress"]) == 0
    out = tmp_path / "tiny" / "unet" / "cv3"
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
