"""`predict` loses nothing and hides nothing: it never replaces an input file, replaces
earlier outputs only with --overwrite, writes through temporary names, and skips (and
reports) a bad case instead of stopping the folder."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import TINY_FEATURES, tiny_config_dict
from pdeseg.cli import main
from pdeseg.config import config_from_dict
from pdeseg.data.files import write_atomically
from pdeseg.data.phantoms.brats import write_lgg_phantom_dataset
from pdeseg.errors import RunFolderError
from pdeseg.inference.folder import PredictionReport, predict_folder
from pdeseg.training.run import train_model


@pytest.fixture(scope="module")
def brats_checkpoint(phantom_root, tmp_path_factory) -> Path:
    """A tiny UNet trained for one epoch on the phantom (once for this module)."""
    out = tmp_path_factory.mktemp("brats_run")
    cfg = config_from_dict(tiny_config_dict(phantom_root, out, epochs=1))
    train_model(cfg, cfg.models[0], out / "run", progress=False)
    return out / "run" / "best.pt"


@pytest.fixture(scope="module")
def lgg_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny binary UNet trained for one epoch on an LGG phantom; ``(checkpoint, kaggle_3m)``."""
    out = tmp_path_factory.mktemp("lgg_run")
    write_lgg_phantom_dataset(out / "data", n_cases=2, seed=1, shape=(32, 32, 16))
    cfg = config_from_dict({
        "name": "lgg", "num_classes": 2, "output": "sigmoid",
        "data": {"root": str(out / "data"), "format": "lgg", "modalities": ["pre", "flair", "post"],
                 "normalization": "scale255", "slices": "all", "cache_dir": str(out / "cache"),
                 "split": {"fractions": [0.5, 0.0, 0.5], "seed": 0}},
        "models": [{"name": "unet", "kwargs": {"features": TINY_FEATURES}}],
        "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "precision": "32", "monitor": "train_loss"},
    })
    train_model(cfg, cfg.models[0], out / "run", progress=False)
    return out / "run" / "best.pt", out / "data" / "kaggle_3m"


def _copy_cases(root: Path, dest: Path, n: int) -> list[Path]:
    """Copies of the first ``n`` phantom case folders under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copytree(f, dest / f.name)) for f in sorted(root.iterdir())[:n]]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _predict(checkpoint, input_dir, output_dir, *extra) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), "--input", str(input_dir), "--output", str(output_dir),
                 "--no-progress", "--device", "cpu", *extra])


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("overwrite", [False, True])
def test_predict_into_the_input_case_refuses_and_keeps_the_label(brats_checkpoint, phantom_root, tmp_path, caplog, overwrite):
    (case,) = _copy_cases(phantom_root, tmp_path / "data", 1)
    label = case / f"{case.name}_seg.nii.gz"
    before = _sha(label)
    code = _predict(brats_checkpoint, case, case, *(["--overwrite"] if overwrite else []))
    assert code == 2
    assert _sha(label) == before
    (message,) = _errors(caplog)
    assert str(label) in message and "input file" in message and "choose another --output" in message
    assert "\n" not in message
    assert not _temporaries(case)


def test_a_second_predict_refuses_without_overwrite_and_replaces_with_it(brats_checkpoint, phantom_root, tmp_path, caplog):
    data, out = tmp_path / "data", tmp_path / "pred"
    _copy_cases(phantom_root, data, 2)
    assert _predict(brats_checkpoint, data, out) == 0
    written = sorted(out.glob("*_seg.nii.gz"))
    assert len(written) == 2
    for p in written:
        os.utime(p, (1_000_000, 1_000_000))
    caplog.clear()
    assert _predict(brats_checkpoint, data, out) == 2
    (message,) = _errors(caplog)
    assert str(written[0]) in message and "2 of the 2 output files exist" in message and "--overwrite" in message
    assert all(p.stat().st_mtime == 1_000_000 for p in written)
    assert _predict(brats_checkpoint, data, out, "--overwrite") == 0
    assert all(p.stat().st_mtime > 1_000_000 for p in written)
    assert sorted(out.iterdir()) == written  # no temporary files left


def test_an_output_below_a_file_exits_2_with_one_line(brats_checkpoint, phantom_root, tmp_path, caplog):
    _copy_cases(phantom_root, tmp_path / "data", 1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert _predict(brats_checkpoint, tmp_path / "data", blocker / "pred") == 2
    (message,) = _errors(caplog)
    assert str(blocker) in message and "is a file" in message and "\n" not in message
    assert blocker.read_text() == "not a folder"


def _truncate(case: Path, modality: str = "t1") -> None:
    path = case / f"{case.name}_{modality}.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _wrong_shape(case: Path, modality: str = "t2") -> None:
    path = case / f"{case.name}_{modality}.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), path)


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "cannot read NIfTI"),
    (lambda case: (case / f"{case.name}_flair.nii.gz").unlink(), "missing modality"),
    (_wrong_shape, "differs from"),
])
def test_a_bad_case_is_skipped_and_the_others_written(brats_checkpoint, phantom_root, tmp_path, caplog, damage, reason):
    cases = _copy_cases(phantom_root, tmp_path / "data", 3)
    bad = cases[1]
    damage(bad)
    out = tmp_path / "pred"
    assert _predict(brats_checkpoint, tmp_path / "data", out) == 1
    assert sorted(p.name for p in out.iterdir()) == [f"{c.name}_seg.nii.gz" for c in (cases[0], cases[2])]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"skipped case {bad.name}: ") and reason in m for m in messages)
    assert any(m.startswith(f"wrote 2, skipped 1: {bad.name} (") for m in messages)
    assert not _temporaries(tmp_path)

    report = predict_folder(brats_checkpoint, tmp_path / "data", tmp_path / "api", progress=False)
    assert isinstance(report, PredictionReport)
    assert [p.name for p in report.written] == [f"{c.name}_seg.nii.gz" for c in (cases[0], cases[2])]
    assert list(report.skipped) == [bad.name] and reason in report.skipped[bad.name]


def test_no_case_written_exits_2(brats_checkpoint, phantom_root, tmp_path, caplog):
    (case,) = _copy_cases(phantom_root, tmp_path / "data", 1)
    _truncate(case)
    assert _predict(brats_checkpoint, case, tmp_path / "pred") == 2
    (message,) = _errors(caplog)
    assert case.name in message and "no segmentation written" in message
    assert not list((tmp_path / "pred").glob("*"))


@pytest.mark.parametrize("label_bytes", [
    lambda: b"this is not a NIfTI file",
    lambda: _nifti_bytes(np.full((32, 32, 16), 7, np.int16)),  # impossible label values
    lambda: _nifti_bytes(np.zeros((5, 5, 5), np.int16)),  # wrong shape
])
def test_a_broken_label_does_not_stop_prediction(brats_checkpoint, phantom_root, tmp_path, label_bytes):
    (case,) = _copy_cases(phantom_root, tmp_path / "data", 1)
    (case / f"{case.name}_seg.nii.gz").write_bytes(label_bytes())
    report = predict_folder(brats_checkpoint, case, tmp_path / "pred", progress=False)
    assert report.skipped == {} and [p.name for p in report.written] == [f"{case.name}_seg.nii.gz"]
    seg = nib.load(str(report.written[0]))
    assert seg.shape == (32, 32, 16) and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}


def _nifti_bytes(data: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())


def test_a_write_killed_midway_leaves_the_old_file_and_no_temporary(brats_checkpoint, phantom_root, tmp_path, monkeypatch):
    (case,) = _copy_cases(phantom_root, tmp_path / "data", 1)
    out = tmp_path / "pred"
    (first,) = predict_folder(brats_checkpoint, case, out, progress=False).written
    before = _sha(first)

    def killed(img, filename):
        Path(filename).write_bytes(b"half a segmentation")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(brats_checkpoint, case, out, progress=False, overwrite=True)
    assert _sha(first) == before and sorted(out.iterdir()) == [first]


def test_write_atomically_keeps_the_extension_and_cleans_up(tmp_path):
    seen = []
    path = write_atomically(tmp_path / "x_seg.nii.gz", lambda tmp: seen.append(tmp) or tmp.write_bytes(b"ok"))
    assert path.read_bytes() == b"ok" and seen[0].name.startswith(".x_seg.tmp-") and seen[0].name.endswith(".nii.gz")
    with pytest.raises(OSError):
        write_atomically(tmp_path / "x_seg.nii.gz", lambda tmp: (_ for _ in ()).throw(OSError("disk full")))
    assert path.read_bytes() == b"ok" and sorted(tmp_path.iterdir()) == [path]


def test_lgg_masks_obey_the_same_rules(lgg_checkpoint, tmp_path, caplog):
    checkpoint, kaggle = lgg_checkpoint
    data = Path(shutil.copytree(kaggle, tmp_path / "kaggle_3m"))
    patients = sorted(p for p in data.iterdir() if p.is_dir())
    manual = sorted(patients[0].glob("*_mask.tif"))
    manual_sha = [_sha(m) for m in manual]
    manual[0].write_bytes(b"not a TIFF")  # a broken manual mask is not read for prediction
    manual_sha[0] = _sha(manual[0])
    out = tmp_path / "masks"

    assert _predict(checkpoint, data, out) == 0
    written = sorted(out.rglob("*_mask.png"))
    assert len(written) == 2 * 16
    caplog.clear()
    assert _predict(checkpoint, data, out) == 2
    (message,) = _errors(caplog)
    assert "32 of the 32 output files exist" in message and "--overwrite" in message
    for p in written:
        os.utime(p, (1_000_000, 1_000_000))
    assert _predict(checkpoint, data, out, "--overwrite") == 0
    assert all(p.stat().st_mtime > 1_000_000 for p in written) and not _temporaries(out)

    # tif masks into the input folder would replace the manual masks: refused, even with --overwrite
    caplog.clear()
    assert _predict(checkpoint, data, data, "--mask-format", "tif", "--overwrite") == 2
    (message,) = _errors(caplog)
    assert "input file" in message and "choose another --output" in message
    assert [_sha(m) for m in manual] == manual_sha and not _temporaries(data)


def test_refusals_happen_before_any_case_is_read(brats_checkpoint, phantom_root, tmp_path, monkeypatch):
    from pdeseg.data.readers import brats

    (case,) = _copy_cases(phantom_root, tmp_path / "data", 1)
    monkeypatch.setattr(brats, "load_case", lambda *a, **k: pytest.fail("a case was read before the refusal"))
    with pytest.raises(RunFolderError, match="input file"):
        predict_folder(brats_checkpoint, case, case, progress=False, overwrite=True)
