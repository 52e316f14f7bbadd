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
from pdeseg.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from pdeseg.config import config_from_dict
from pdeseg.data.readers.brats import find_cases
from pdeseg.errors import CheckpointError, RunFolderError
from pdeseg.inference.evaluate import evaluate_checkpoint
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.folder import predict_folder
from pdeseg.training.run import train_model


def _weights(path):
    return load_checkpoint(path)["state_dict"]


def test_train_resume_with_dropout_equals_uninterrupted_and_predict(phantom_root, tmp_path):
    """Resume is bit-exact even with dropout (the RNG states travel in last.pt)."""
    data = tiny_config_dict(phantom_root, tmp_path, epochs=3)
    data["models"][1]["kwargs"]["dropout"] = 0.3
    cfg = config_from_dict(data)
    model = cfg.models[1]  # pde_unet with dropout 0.3
    straight = train_model(cfg, model, tmp_path / "straight", progress=False)
    assert len(straight.history) == 3 and (tmp_path / "straight" / "metrics.csv").is_file()
    assert (tmp_path / "straight" / "tb").is_dir() and (tmp_path / "straight" / "config.yaml").is_file()

    with pytest.raises(RunFolderError, match="--resume"):
        train_model(cfg, model, tmp_path / "straight", progress=False)
    part = train_model(cfg, model, tmp_path / "resumed", progress=False, stop_after=2)
    assert len(part.history) == 2
    with pytest.raises(RunFolderError, match="no .*last.pt"):
        train_model(cfg, model, tmp_path / "never_started", resume=True, progress=False)
    resumed = train_model(cfg, model, tmp_path / "resumed", resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    rows = lambda run: [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in load_checkpoint(tmp_path / run / "last.pt")["training"]["history"]]  # noqa: E731
    assert rows("straight") == rows("resumed")
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
    report = predict_folder(tmp_path / "straight" / "best.pt", phantom_root, out, progress=False)
    assert len(report.written) == 6 and report.skipped == {}
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
        "for banned in ('pdeseg.training', 'pdeseg.training.trainer', 'pdeseg.training.run', 'pdeseg.build'):\n"
        "    sys.modules[banned] = None\n"
        "from pdeseg.inference.folder import predict_folder\n"
        f"predict_folder({str(tmp_path / 'run' / 'best.pt')!r}, {str(phantom_root)!r}, {str(tmp_path / 'p')!r}, progress=False)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert len(list((tmp_path / "p").glob("*_seg.nii.gz"))) == 6


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    meta = {"model": {"name": "unet", "kwargs": {}}, "preprocessing": {}}
    save_checkpoint({**meta, "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint({**meta, "state_dict": {"w": torch.zeros(2)}, "bad": lambda: 0}, path)  # cannot be pickled
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


def test_checkpoints_without_a_data_format_or_model_are_refused(phantom_root, tmp_path):
    """No silent BraTS fallback: a checkpoint must say what data it was trained on."""
    from pdeseg.inference.predict import Predictor

    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert Predictor.from_checkpoint(tmp_path / "run" / "best.pt").spec.format == "brats"
    no_format = {**ckpt, "preprocessing": {k: v for k, v in ckpt["preprocessing"].items() if k != "format"}}
    save_checkpoint(no_format, tmp_path / "no_format.pt")
    with pytest.raises(CheckpointError, match="format"):
        Predictor.from_checkpoint(tmp_path / "no_format.pt")
    save_checkpoint({k: v for k, v in ckpt.items() if k != "model"}, tmp_path / "no_model.pt")
    with pytest.raises(CheckpointError, match="lacks model"):
        load_checkpoint(tmp_path / "no_model.pt")
    save_checkpoint({**ckpt, "model": {"name": "unet", "kwargs": {**ckpt["model"]["kwargs"], "featurs": 3}}}, tmp_path / "bad_kwargs.pt")
    with pytest.raises(CheckpointError, match="cannot build model"):
        Predictor.from_checkpoint(tmp_path / "bad_kwargs.pt")
    assert FORMAT_VERSION == ckpt["format_version"]


def test_checkpoint_round_trip_through_the_predictor_gives_identical_logits(phantom_root, tmp_path):
    from pdeseg.build import build_network, resolve
    from pdeseg.inference.predict import Predictor

    cfg = config_from_dict(tiny_config_dict(phantom_root, tmp_path, epochs=1))
    train_model(cfg, cfg.models[1], tmp_path / "run", progress=False)
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.pt", InferenceOptions(precision="32"))
    exp = resolve(cfg)
    model = build_network(exp, cfg.models[1])
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "best.pt")["state_dict"])
    x = torch.randn(2, 4, 37, 29)  # odd sizes: the model pads and crops itself
    model = model.to(memory_format=torch.channels_last).eval()  # as the predictor runs 2D models
    with torch.no_grad():
        assert torch.equal(predictor.logits(x), model(x.contiguous(memory_format=torch.channels_last)))


def test_no_validation_split_needs_monitor_train_loss(phantom_root, tmp_path):
    from pdeseg.errors import ConfigError

    data = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    data["data"]["split"] = {"fractions": [0.75, 0.0, 0.25]}
    with pytest.raises(ConfigError, match="monitor: train_loss"):
        train_model(config_from_dict(data), config_from_dict(data).models[0], tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before any folder or data
    data["train"]["monitor"] = "train_loss"
    cfg = config_from_dict(data)
    result = train_model(cfg, cfg.models[0], tmp_path / "run", progress=False)
    assert result.best_epoch == 1 and result.best_score == -result.history[0]["train_loss"]
    assert "val_loss" not in result.history[0]


def test_train_cases_subsamples_training_side_only(phantom_root, tmp_path):
    from pdeseg.build import resolve
    from pdeseg.data.pipeline.prepare import prepare_data

    data = tiny_config_dict(phantom_root, tmp_path, epochs=1)
    data["data"]["split"] = {"fractions": [0.5, 0.17, 0.33]}
    full = resolve(config_from_dict(data))
    data["data"]["train_cases"] = 1
    small = resolve(config_from_dict(data))
    a = prepare_data(full.cfg.data, full.spec, progress=False).split
    b = prepare_data(small.cfg.data, small.spec, progress=False).split
    assert (b["val"], b["test"]) == (a["val"], a["test"]) and len(a["train"]) == 3
    assert len(b["train"]) == 1 and set(b["train"]) <= set(a["train"])
