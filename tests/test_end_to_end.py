"""Tiny real runs on phantom NIfTI data: train, checkpoint, resume, evaluate, predict."""

import json
import pickle
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_config_dict
from pdeseg.config import config_from_dict
from pdeseg.data.brats import find_cases
from pdeseg.inference.evaluate import evaluate_checkpoint
from pdeseg.inference.predict import predict_folder
from pdeseg.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pdeseg.training.trainer import train_model


def _weights(path):
    return load_checkpoint(path)["state_dict"]


def test_train_resume_equals_uninterrupted_and_predict(phantom_root, tmp_path):
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=3))
    model = cfg.models[1]  # pde_unet
    straight = train_model(cfg, model, tmp_path / "straight", progress=False)
    assert len(straight.history) == 3 and (tmp_path / "straight" / "metrics.csv").is_file()
    assert (tmp_path / "straight" / "tb").is_dir() and (tmp_path / "straight" / "config.yaml").is_file()

    with pytest.raises(FileExistsError, match="--resume"):
        train_model(cfg, model, tmp_path / "straight", progress=False)
    part = train_model(cfg, model, tmp_path / "resumed", progress=False, stop_after=2)
    assert len(part.history) == 2
    with pytest.raises(FileNotFoundError, match="no .*last.pt"):
        train_model(cfg, model, tmp_path / "never_started", resume=True, progress=False)
    resumed = train_model(cfg, model, tmp_path / "resumed", resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert json.loads((tmp_path / "straight" / "split.json").read_text()) == json.loads((tmp_path / "resumed" / "split.json").read_text())

    # best checkpoint: self-describing, loadable with weights_only=True
    raw = torch.load(tmp_path / "straight" / "best.pt", weights_only=True)
    assert raw["model"]["name"] == "pde_unet" and raw["preprocessing"]["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert raw["training"]["best_epoch"] == straight.best_epoch

    # predict whole volumes in the input's geometry and label convention
    out = tmp_path / "pred"
    paths = predict_folder(tmp_path / "straight" / "best.pt", phantom_root, out, progress=False)
    assert len(paths) == 6
    case = find_cases(phantom_root)[0]
    ref = nib.load(str(case.images["flair"]))
    seg = nib.load(str(out / f"{case.case_id}_seg.nii.gz"))
    assert seg.shape == ref.shape
    assert np.allclose(seg.affine, ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    predict_folder(tmp_path / "straight" / "best.pt", case.folder, tmp_path / "pred23", convention="brats2023", progress=False)
    assert set(np.unique(np.asarray(nib.load(str(tmp_path / "pred23" / f"{case.case_id}_seg.nii.gz")).dataobj))) <= {0, 1, 2, 3}

    # evaluation on the held-out split, whole volumes and the config's slices
    for scope in ("volume", "slices"):
        summary = evaluate_checkpoint(tmp_path / "straight" / "best.pt", tmp_path / f"eval_{scope}", split="test", scope=scope, progress=False)
        assert summary["cases"] == 2
        for key in ("dice_mean", "iou_mean", "accuracy", "dice_WT", "dice_TC", "dice_ET"):
            assert 0.0 <= summary["metrics"][key]["mean"] <= 1.0
        assert (tmp_path / f"eval_{scope}" / "per_case.csv").read_text().count("\n") == 3


def test_prediction_needs_no_training_code(phantom_root, tmp_path):
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    script = (
        "import sys\n"
        "for banned in ('pdeseg.training.trainer', 'pdeseg.data.setup', 'pdeseg.data.transforms'):\n"
        "    sys.modules[banned] = None\n"
        "from pdeseg.inference.predict import predict_folder\n"
        f"predict_folder({str(tmp_path / 'run' / 'best.pt')!r}, {str(phantom_root)!r}, {str(tmp_path / 'p')!r}, progress=False)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert len(list((tmp_path / "p").glob("*_seg.nii.gz"))) == 6


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "bad": lambda: 0}, path)  # cannot be pickled
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_training_learns_on_phantom(phantom_root, tmp_path):
    """An untrained model fails and a few epochs of training succeed on the phantom."""
    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=10, lr=1e-2, batch_size=2))
    result = train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    first, best = result.history[0]["val_dice_WT"], max(r["val_dice_WT"] for r in result.history)
    assert best > 0.5 and best > first + 0.2, [r["val_dice_WT"] for r in result.history]
