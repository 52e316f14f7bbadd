"""Fingerprints on data sets with known shapes, spacings, intensities and components; format
detection from folder layouts; the CLI commands fingerprint and plan on phantoms."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pdeseg.cli import main
from pdeseg.data.detect import detect_format
from pdeseg.data.fingerprint import fingerprint_dataset
from pdeseg.errors import DataError


def _write_task(root, cases, channel="CT", background=-1000.0):
    """A v2 task: ``cases`` is a list of (shape, spacing, [(class, slices), ...], foreground value)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, (shape, spacing, blobs, value) in enumerate(cases):
        image = np.full(shape, background, np.float32)
        label = np.zeros(shape, np.uint8)
        for k, sl in blobs:
            label[sl] = k
        image[label > 0] = value
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": channel}, "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return root


def test_fingerprint_values_on_a_task_with_known_geometry(tmp_path):
    s = np.s_
    cases = [
        ((20, 22, 18), (0.8, 0.8, 2.5), [(1, s[2:4, 2:4, 2:4]), (1, s[10:13, 10:13, 10:13]), (2, s[15:17, 15:17, 2:3])], 100.0),
        ((20, 24, 16), (0.8, 0.8, 2.5), [(1, s[5:9, 5:9, 5:9])], 200.0),
        ((20, 22, 20), (0.7, 0.7, 3.0), [(1, s[0:2, 0:2, 0:2]), (2, s[10:12, 10:12, 10:12])], 300.0),
    ]
    root = _write_task(tmp_path / "Dataset001_Known", cases)
    fp = fingerprint_dataset("msd", root, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert fp.n_cases == 3 and fp.spatial_dims == 3 and fp.spacing_known
    assert fp.shape_median == [20, 22, 18]
    assert fp.spacing_median == pytest.approx([0.8, 0.8, 2.5]) and fp.spacing_p90[2] > 2.5
    assert fp.anisotropy == pytest.approx(2.5 / 0.8)
    ct = fp.channels[0]
    assert ct.kind == "ct" and ct.minimum == -1000 and ct.maximum == 300
    # foreground voxels: 8 + 27 + 4 at 100, 64 at 200, 8 + 8 at 300
    values = np.repeat([100.0, 200.0, 300.0], [39, 64, 16])
    assert ct.fg_mean == pytest.approx(values.mean(), rel=1e-5) and ct.fg_sd == pytest.approx(values.std(), rel=1e-5)
    organ, lesion = fp.classes[1], fp.classes[2]
    total = 20 * 22 * 18 + 20 * 24 * 16 + 20 * 22 * 20
    assert organ.voxel_fraction == pytest.approx((8 + 27 + 64 + 8) / total)
    assert organ.smallest_component == 8 and organ.median_components == 1.0 and organ.cases_present == 3
    assert lesion.smallest_component == 4 and lesion.cases_present == 2
    # the largest component's share of the foreground: 27/39, 1, 8/16
    assert fp.largest_component_share == pytest.approx(27 / 39)
    assert fp.zero_fraction == 0.0
    # cached: a second call reads the JSON (a changed file would change the key)
    again = fingerprint_dataset("msd", root, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert again.to_dict() == fp.to_dict()
    assert len(list((tmp_path / "cache").glob("fingerprint-*.json"))) == 1


def test_mr_and_parallel_workers_agree(tmp_path):
    s = np.s_
    cases = [((16, 16, 16), (1.0, 1.0, 1.0), [(1, s[4:8, 4:8, 4:8])], 50.0 + i) for i in range(4)]
    root = _write_task(tmp_path / "Dataset002_Mr", cases, channel="T2", background=0.0)
    one = fingerprint_dataset("msd", root, cache_dir=tmp_path / "a", workers=1, progress=False)
    two = fingerprint_dataset("msd", root, cache_dir=tmp_path / "b", workers=2, progress=False)
    assert one.to_dict() == two.to_dict()
    assert one.channels[0].kind == "mr" and one.zero_fraction == pytest.approx(1 - 64 / 16**3)
    assert one.channels[0].bright_on_dark == 1.0


def test_detect_format_from_layouts(tmp_path):
    from pdeseg.data.phantoms.brats import write_lgg_phantom_dataset, write_phantom_dataset
    from pdeseg.data.phantoms.cells import write_cell_phantom
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    write_phantom_dataset(tmp_path / "brats", n_cases=1, shape=(32, 32, 16))
    write_lgg_phantom_dataset(tmp_path / "lgg", n_cases=1, shape=(32, 32, 16))
    write_msd_phantom_dataset(tmp_path / "msd", n_cases=1)
    write_cell_phantom(tmp_path / "cells", n_per_type=1)
    assert detect_format(tmp_path / "brats") == "brats"
    assert detect_format(tmp_path / "lgg") == "lgg"
    assert detect_format(tmp_path / "msd") == "msd"
    assert detect_format(tmp_path / "cells") == "livecell"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        detect_format(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="--format"):
        detect_format(tmp_path / "odd")


def test_cli_refusals_exit_2(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["plan", "--data", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert main(["fingerprint", "--data", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert main(["train", "--no-progress"]) == 2
    # an output below a file: one line, exit 2, nothing written
    (tmp_path / "afile").write_text("x")
    root0 = _write_task(tmp_path / "Dataset004_Json", [((16, 16, 16), (1, 1, 1), [(1, np.s_[2:5, 2:5, 2:5])], 9.0)] * 2)
    assert main(["fingerprint", "--data", str(root0), "--json", str(tmp_path / "afile" / "fp.json"), "--no-progress",
                 "--cache-dir", str(tmp_path / "c")]) == 2
    assert "afile is a file, not a folder; choose another --json" in caplog.text  # before the data set is measured
    # mixed channel counts: an MSD v1 task whose cases hold 1 and 2 channels
    root = tmp_path / "Task09_Mixed"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, channels in enumerate((1, 2)):
        shape = (16, 16, 16) if channels == 1 else (16, 16, 16, 2)
        nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.uint8), np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "T1", "1": "T2"}, "labels": {"0": "background", "1": "x"}, "numTraining": 2,
        "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(2)]}))
    assert main(["fingerprint", "--data", str(root), "--no-progress", "--cache-dir", str(tmp_path / "c")]) == 2
    # labels missing for some cases
    root2 = _write_task(tmp_path / "Dataset003_Missing", [((16, 16, 16), (1, 1, 1), [(1, np.s_[2:5, 2:5, 2:5])], 9.0)] * 2)
    (root2 / "labelsTr" / "case1.nii.gz").unlink()
    assert main(["plan", "--data", str(root2), "--no-progress", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "case1" in caplog.text and "no label file" in caplog.text


@pytest.mark.slow
def test_plan_and_train_one_epoch_on_a_phantom(tmp_path, capsys):
    """The whole path: pdeseg plan measures real steps on this device and writes a config that
    validates; train --config runs it (one epoch here)."""
    import yaml

    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    task = write_msd_phantom_dataset(tmp_path / "task", n_cases=6, shape=(24, 24, 16))
    out = tmp_path / "plan.yaml"
    assert main(["plan", "--data", str(task), "--out", str(out), "--time-budget", "2h", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    text = out.read_text()
    assert "# patch 24x24x16" in text.replace("patch ", "# patch ", 1) or "data.spatial_size" not in text
    cfg = yaml.safe_load(text)
    assert cfg["data"]["mode"] == "patches" and cfg["data"]["spatial_size"] == [24, 24, 16]
    assert "# " in text.split("spatial_size:")[1].splitlines()[0]  # a reason beside the choice
    printed = capsys.readouterr().out
    assert "expected on cpu" in printed and "per epoch" in printed
    assert main(["train", "--config", str(out), "--no-progress", "--out", str(tmp_path / "runs"),
                 "--set", "train.epochs=1", "train.warmup_epochs=0", "data.samples_per_case=1"]) == 0
    assert list((tmp_path / "runs").rglob("best.pt"))
