"""``evaluate`` scores what ``predict`` writes (issue 34): on a data set that the model's
``target_spacing`` resamples, evaluate's per-case Dice equals the Dice of predict's files
against the original label files, computed here independently (nibabel + numpy)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pdeseg.cli import main

pytestmark = pytest.mark.slow  # trains a tiny model for one epoch


def dice_of_files(pred_path: Path, true_path: Path, values: list[int]) -> dict[int, float]:
    """Dice per label value of two label files, straight from the files: 1 where both are empty."""
    pred = np.rint(np.asarray(nib.load(str(pred_path)).dataobj)).astype(np.int64)
    true = np.rint(np.asarray(nib.load(str(true_path)).dataobj)).astype(np.int64)
    assert pred.shape == true.shape, f"{pred_path.name}: {pred.shape} written, {true.shape} labelled"
    out = {}
    for v in values:
        p, t = pred == v, true == v
        both = int(p.sum()) + int(t.sum())
        out[v] = 2.0 * int((p & t).sum()) / both if both else 1.0
    return out


@pytest.fixture(scope="module")
def resampled_run(tmp_path_factory):
    """A CT phantom at an anisotropic spacing (0.8 x 0.8 x 2.5 mm) and a model trained for a few
    epochs at a target spacing of 1.3 x 1.3 x 2.0 mm (every axis resampled)."""
    from pdeseg.config import config_from_dict
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset
    from pdeseg.training.run import train_model

    tmp = tmp_path_factory.mktemp("grid")
    root = write_msd_phantom_dataset(tmp / "ct", n_cases=5, kind="ct", shape=(40, 44, 16), n_test=0)
    cfg = config_from_dict(
        {
            "name": "grid",
            "output_dir": str(tmp),
            "data": {
                "root": str(root),
                "format": "msd",
                "cache_dir": str(tmp / "cache"),
                "mode": "patches",
                "spatial_size": [24, 24, 24],
                "samples_per_case": 4,
                "target_spacing": [1.3, 1.3, 2.0],
                "normalization": "ct",
                "split": {"fractions": None, "counts": [2, 1, 2], "seed": 0},
            },
            "models": [{"name": "unet", "kwargs": {"features": [4, 8, 8, 8, 8]}}],
            "train": {"epochs": 1, "batch_size": 2, "precision": "32", "val_batch_size": 2, "seed": 0},
        }
    )
    train_model(cfg, cfg.models[0], tmp / "run", progress=False)
    ckpt = tmp / "run" / "best.pt"
    _raise_foreground(ckpt, root)
    return root, ckpt, tmp


def _raise_foreground(ckpt: Path, root: Path) -> None:
    """A few epochs on a CPU leave a model that says background everywhere; raise its
    foreground logits (the head's bias) until between 5 % and 50 % of a case is foreground,
    so that the Dice compared below is neither 0 nor 1."""
    from pdeseg.checkpoint import load_checkpoint, save_checkpoint
    from pdeseg.data.formats import get_format
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    payload = load_checkpoint(ckpt)
    weights = payload["state_dict"]
    base = weights["head.bias"].clone()
    low, high = 0.0, 8.0  # the foreground share grows with the shift: bisect for a share in [5 %, 50 %]
    for _ in range(24):
        shift = (low + high) / 2
        weights["head.bias"] = base + shift * (torch.arange(base.numel()) > 0)
        save_checkpoint(payload, ckpt)
        predictor = Predictor.from_checkpoint(ckpt, InferenceOptions(device="cpu", precision="32", backend="torch"))
        case = get_format("msd").find_cases(root, predictor.modalities, True)[0]
        share = float((predictor.predict_case(case)[1].classes > 0).mean())
        if 0.05 <= share <= 0.5:
            return
        low, high = (shift, high) if share < 0.05 else (low, shift)
    raise AssertionError("no bias shift gives a partly foreground prediction")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


FP32_CPU = ["--device", "cpu", "--precision", "32", "--no-progress"]


def _evaluate(ckpt, root, out, *flags: str) -> int:
    """``pdeseg evaluate`` of every case of ``root`` into ``out``."""
    return main(["evaluate", "--checkpoint", str(ckpt), "--split", "all", "--data", str(root), "--out", str(out), *flags])


def test_evaluate_per_case_dice_is_the_dice_of_predicts_files(resampled_run):
    root, ckpt, tmp = resampled_run
    out, pred = tmp / "eval", tmp / "pred"
    assert _evaluate(ckpt, root, out, *FP32_CPU) == 0
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(root / "imagesTr"), "--output", str(pred), *FP32_CPU]) == 0
    rows = _rows(out / "per_case.csv")
    assert len(rows) == 5
    keys = [k for k in next(iter(rows.values())) if k.startswith("dice_") and k not in ("dice_background", "dice_mean")]
    names = dict(enumerate(keys, start=1))  # the foreground classes, in the order of their label values
    assert len(names) == 2, keys
    nontrivial = 0
    for case, row in rows.items():
        label_file = root / "labelsTr" / f"{case}.nii.gz"
        assert nib.load(str(label_file)).shape == (40, 44, 16)  # the input grid, not the 25 x 27 x 20 cache grid
        dice = dice_of_files(pred / f"{case}.nii.gz", label_file, list(names))
        for value, key in names.items():
            assert float(row[key]) == pytest.approx(dice[value], abs=1e-6), (case, key)
        assert float(row["dice_mean"]) == pytest.approx(np.mean(list(dice.values())), abs=1e-6)
        nontrivial += sum(0 < d < 1 for d in dice.values())
    assert nontrivial >= 2, "the predictions should overlap the labels partly"


def test_the_cache_grid_stays_available_by_name_and_differs_here(resampled_run):
    root, ckpt, tmp = resampled_run
    out = tmp / "eval_cache"
    assert _evaluate(ckpt, root, out, "--grid", "cache", *FP32_CPU) == 0
    assert "cache grid" in (out / "summary.md").read_text()
    cache = _rows(out / "per_case.csv")
    inputs = _rows(tmp / "eval" / "per_case.csv") if (tmp / "eval").is_dir() else None
    assert len(cache) == 5
    if inputs is not None:  # resampled: the two grids give (slightly) different numbers
        assert any(abs(float(cache[c]["dice_mean"]) - float(inputs[c]["dice_mean"])) > 1e-9 for c in cache)


def test_slices_scope_is_refused_on_the_input_grid(resampled_run, caplog):
    root, ckpt, tmp = resampled_run
    code = _evaluate(ckpt, root, tmp / "eval_slices", "--scope", "slices", "--grid", "input", "--no-progress")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and errors and "--grid cache" in errors[0], errors


def test_object_size_options_are_refused_where_they_cannot_apply(resampled_run, caplog):
    root, ckpt, tmp = resampled_run
    assert _evaluate(ckpt, root, tmp / "e1", "--grid", "cache", "--diameter", "20", "--no-progress") == 2
    assert _evaluate(ckpt, root, tmp / "e2", "--diameter", "20", "--no-progress") == 2  # not a cell model
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "input grid" in errors[0] and "cell model" in errors[1], errors
