"""nnU-Net v2 export: every case read back by pdeseg's own msd reader gives the same arrays,
labels and classes (BraTS-like 4-channel 3D, MSD v1 with CT and with duplicate float
channels, 2D cells), the v2 dataset.json and split files, safe case names, and the folders
the export refuses."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import shared_data
from pdeseg.data.export_nnunet import (
    export_nnunet,
    nnunet_case_names,
    nnunet_label_names,
    parse_dataset_folder,
    storage_dtype,
)
from pdeseg.data.formats import get_format
from pdeseg.data.phantoms.brats import write_phantom_dataset
from pdeseg.data.phantoms.cells import write_cell_phantom
from pdeseg.data.phantoms.msd import write_msd_phantom_dataset
from pdeseg.errors import ConfigError, DataError, RunFolderError


def _assert_round_trip(fmt: str, root: Path, report, modalities=None, options=None) -> None:
    """The export read with the msd format gives each source case's arrays, labels and geometry."""
    src_fmt = get_format(fmt)
    options = options or {}
    info = src_fmt.dataset_info(root, options)
    mods = list(modalities or src_fmt.default_modalities or info.modalities)
    source = {c.case_id: c for c in src_fmt.find_cases(root, mods, True, **options)}
    msd = get_format("msd")
    back_info = msd.dataset_info(report.out_dir)
    assert back_info.class_names[1:] == info.class_names[1:] and back_info.class_names[0] == "background"
    back = {c.case_id: c for c in msd.find_cases(report.out_dir, None, True)}
    assert sorted(back) == sorted(report.cases.values())
    for cid, name in report.cases.items():
        a = source[cid].load(mods)
        b = back[name].load(back_info.modalities)
        assert b.image.dtype == np.float32 and b.label.dtype == np.uint8
        np.testing.assert_array_equal(b.image, a.image, err_msg=cid)
        np.testing.assert_array_equal(b.label, a.label, err_msg=cid)
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-5, err_msg=cid)
        assert b.spacing == pytest.approx(a.spacing)


def _json(path: Path):
    return json.loads(path.read_text())


def test_brats_phantom_round_trip_with_split(tmp_path, caplog):
    root = tmp_path / "brats"
    write_phantom_dataset(root, n_cases=4, seed=1, shape=(16, 16, 16))
    ids = [c.case_id for c in get_format("brats").find_cases(root, ["flair"], True)]
    split = {"train": ids[:2], "val": ids[2:3], "test": ids[3:]}
    out = tmp_path / "nnUNet_raw" / "Dataset501_BratsPhantom"
    caplog.set_level("INFO", logger="pdeseg")
    report = export_nnunet("brats", root, out, split)  # progress: log lines (no terminal under pytest)

    assert report.dataset_id == 501 and report.num_cases == 4 and report.renamed == {}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(
        f"{c}_{i:04d}.nii.gz" for c in ids for i in range(4))
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{c}.nii.gz" for c in ids)
    meta = _json(out / "dataset.json")
    assert meta["channel_names"] == {"0": "flair", "1": "t1", "2": "t1ce", "3": "t2"}
    assert meta["labels"] == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    assert meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz" and meta["name"] == "BratsPhantom"
    assert meta["pdeseg"]["source_format"] == "brats" and meta["pdeseg"]["source_root"] == str(root.resolve())
    assert meta["pdeseg"]["regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert _json(out / "splits_final.json") == [{"train": ids[:2], "val": ids[2:3]}]
    assert _json(out / "pdeseg_split.json") == split
    # the phantom's int16 intensities stay integers; labels are uint8 classes
    assert nib.load(out / "imagesTr" / f"{ids[0]}_0000.nii.gz").get_data_dtype().kind in "iu"
    assert nib.load(out / "labelsTr" / f"{ids[0]}.nii.gz").get_data_dtype() == np.uint8
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind
    messages = [r.getMessage() for r in caplog.records]
    assert any("splits_final.json" in m and "nnUNet_preprocessed" in m for m in messages)
    _assert_round_trip("brats", root, report)


def test_msd_ct_phantom_keeps_channel_kind_spacing_and_integers(tmp_path):
    root = write_msd_phantom_dataset(tmp_path / "Task03_Liver", n_cases=3, kind="ct", shape=(24, 20, 16), n_test=1)
    out = tmp_path / "Dataset003_Liver"
    report = export_nnunet("msd", root, out, None, progress=False, dataset_name="liver phantom")
    meta = _json(out / "dataset.json")
    assert meta["channel_names"] == {"0": "CT"}  # nnU-Net's CT normalisation is chosen by this name
    assert meta["labels"] == {"background": 0, "liver": 1, "cancer": 2} and meta["name"] == "liver phantom"
    assert meta["numTraining"] == 3 and meta["pdeseg"]["split"] is None
    assert not (out / "splits_final.json").exists() and not (out / "pdeseg_split.json").exists()
    img = nib.load(out / "imagesTr" / "liverphantom_001_0000.nii.gz")
    assert img.get_data_dtype() == np.int16 and img.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
    assert sorted(report.cases) == ["liverphantom_001", "liverphantom_002", "liverphantom_003"]  # imagesTs left out
    _assert_round_trip("msd", root, report)


def test_msd_v1_multichannel_float_source(tmp_path):
    """An MSD v1 task with two channels of one kind in one 4D file and fractional values:
    one float32 file per channel, channel names that read back as the source's."""
    root = tmp_path / "Task99_Two"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(2):
        nib.save(nib.Nifti1Image(rng.normal(0, 1, (5, 6, 4, 2)).astype(np.float32), affine),
                 str(root / "imagesTr" / f"two_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(rng.integers(0, 2, (5, 6, 4)).astype(np.uint8), affine),
                 str(root / "labelsTr" / f"two_{i}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"name": "Two", "modality": {"0": "MRI", "1": "MRI"},
                                                   "labels": {"0": "bg", "1": "lesion"}}))
    out = tmp_path / "Dataset099_Two"
    report = export_nnunet("msd", root, out, {"train": ["two_0"], "val": ["two_1"]}, progress=False)
    meta = _json(out / "dataset.json")
    assert meta["channel_names"] == {"0": "MRI", "1": "MRI"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["pdeseg"]["class_names"] == ["bg", "lesion"] and meta["pdeseg"]["modalities"] == ["MRI_0", "MRI_1"]
    assert get_format("msd").dataset_info(out).modalities == ("MRI_0", "MRI_1")
    assert nib.load(out / "imagesTr" / "two_0_0001.nii.gz").get_data_dtype() == np.float32
    assert _json(out / "pdeseg_split.json") == {"train": ["two_0"], "val": ["two_1"], "test": []}
    _assert_round_trip("msd", root, report)


def test_livecell_phantom_2d_boundary_targets(tmp_path):
    root = write_cell_phantom(tmp_path / "cells", n_per_type=1, size=(48, 48))
    out = tmp_path / "Dataset700_Cells"
    options = {"targets": "boundary"}
    report = export_nnunet("livecell", root, out, None, format_options=options, progress=False)
    meta = _json(out / "dataset.json")
    assert meta["channel_names"] == {"0": "grey"}  # the format's default channel
    assert meta["labels"] == {"background": 0, "interior": 1, "boundary": 2}
    assert meta["pdeseg"]["format_options"] == options and meta["numTraining"] == 3
    img = nib.load(out / "imagesTr" / "CLUSTERED_0_0000.nii.gz")
    assert img.shape == (48, 48, 1) and img.get_data_dtype() == np.uint8  # one 2D image: a one-slice volume
    _assert_round_trip("livecell", root, report, options=options)


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _cell_folder(root: Path, stems) -> Path:
    rng = np.random.default_rng(5)
    for stem in stems:
        mask = np.zeros((12, 10), np.uint8)
        mask[2:6, 3:8] = 255
        _png(root / "images" / f"{stem}.png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        _png(root / "masks" / f"{stem}.png", mask)
    return root


def test_cell_folder_unsafe_ids_are_renamed_and_recorded(tmp_path):
    root = _cell_folder(tmp_path / "folder", ["a.b", "x y", "x_y"])
    out = tmp_path / "Dataset002_Folder"
    split = {"train": ["a.b", "x_y"], "val": ["x y"], "test": []}
    report = export_nnunet("cell_folder", root, out, split, modalities=["red", "green", "blue"], progress=False)
    assert report.cases == {"a.b": "a_b", "x y": "x_y_2", "x_y": "x_y"}
    meta = _json(out / "dataset.json")
    assert meta["pdeseg"]["renamed_cases"] == {"a_b": "a.b", "x_y_2": "x y"} == report.renamed
    assert meta["channel_names"] == {"0": "red", "1": "green", "2": "blue"}
    assert _json(out / "splits_final.json") == [{"train": ["a_b", "x_y"], "val": ["x_y_2"]}]
    _assert_round_trip("cell_folder", root, report, modalities=["red", "green", "blue"])


def test_refuses_bad_folder_names(tmp_path):
    root = _cell_folder(tmp_path / "folder", ["a"])
    for name in ("Dataset1_X", "Task001_X", "Dataset001_", "Dataset001_a b", "dataset001_X", "Dataset0001_X"):
        with pytest.raises(ConfigError, match=rf"{name}: an nnU-Net data set folder must be named DatasetNNN_Name"):
            export_nnunet("cell_folder", root, tmp_path / name, None, progress=False)
        assert not (tmp_path / name).exists()
    assert parse_dataset_folder("x/Dataset042_My-Set_2") == (42, "My-Set_2")
    (tmp_path / "raw" / "Dataset005_Other").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds Dataset005_Other with the id 005"):
        export_nnunet("cell_folder", root, tmp_path / "raw" / "Dataset005_Mine", None, progress=False)
    inner = _cell_folder(tmp_path / "Dataset006_In" / "src", ["a"])
    same = _cell_folder(tmp_path / "Dataset007_Same", ["a"])
    for source, out in ((inner, inner.parent), (same, same)):
        with pytest.raises(ConfigError, match="would contain the source data"):
            export_nnunet("cell_folder", source, out, None, progress=False, overwrite=True)


def test_refuses_a_non_empty_folder_and_overwrite_replaces_an_export(tmp_path):
    root = _cell_folder(tmp_path / "folder", ["a", "b", "c"])
    out = tmp_path / "Dataset010_Cells"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"Dataset010_Cells: folder exists and is not empty; pass overwrite"):
        export_nnunet("cell_folder", root, out, None, progress=False)
    (out / "dataset.json").write_text(json.dumps({"name": "someone else's"}))
    with pytest.raises(RunFolderError, match="holds a data set pdeseg did not export"):
        export_nnunet("cell_folder", root, out, None, progress=False, overwrite=True)
    (out / "dataset.json").unlink()

    split = {"train": ["a"], "val": ["b"], "test": ["c"]}
    export_nnunet("cell_folder", root, out, split, progress=False, overwrite=True)
    (out / "imagesTr" / ".a_0000.tmp-deadbeef.nii.gz").write_bytes(b"")  # a killed writer's leftover
    report = export_nnunet("cell_folder", root, out, None, progress=False, overwrite=True, case_ids=["b", "a"])
    assert report.cases == {"b": "b", "a": "a"}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["a_0000.nii.gz", "b_0000.nii.gz"]
    assert sorted(p.name for p in report.removed) == sorted([".a_0000.tmp-deadbeef.nii.gz", "c_0000.nii.gz", "c.nii.gz",
                                                             "splits_final.json", "pdeseg_split.json"])
    assert (out / "notes.txt").read_text() == "mine"  # not an export's file: left alone
    assert _json(out / "dataset.json")["numTraining"] == 2
    assert [c.case_id for c in get_format("msd").find_cases(out, None, True)] == ["a", "b"]


def test_split_and_case_id_errors(tmp_path):
    root = _cell_folder(tmp_path / "folder", ["a", "b", "c"])
    cases = [
        ({"train": ["a"], "val": ["z"]}, DataError, r"not among the exported cases: \['z'\]"),
        ({"train": ["a", "b"], "val": ["b"]}, ConfigError, "case b is in both train and val"),
        ({"train": ["a"], "val": [], "test": ["b"]}, ConfigError, "no val case"),
        ({"train": ["a"], "val": ["b"], "holdout": ["c"]}, ConfigError, "unknown part"),
    ]
    for i, (split, error, match) in enumerate(cases):
        out = tmp_path / f"Dataset{20 + i:03d}_S"
        with pytest.raises(error, match=match):
            export_nnunet("cell_folder", root, out, split, progress=False)
        assert not (out / "dataset.json").exists()
    with pytest.raises(ConfigError, match=r"case ids \['q'\] are not among the 3 cases"):
        export_nnunet("cell_folder", root, tmp_path / "Dataset030_S", None, progress=False, case_ids=["a", "q"])
    with pytest.raises(ConfigError, match="takes no option 'colour'"):
        export_nnunet("cell_folder", root, tmp_path / "Dataset031_S", None, format_options={"colour": 1},
                      progress=False)


def test_unreadable_case_is_named(tmp_path):
    root = _cell_folder(tmp_path / "folder", ["good", "bad"])
    (root / "images" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "Dataset040_X"
    with pytest.raises(DataError, match=r"case bad: .*bad\.png"):
        export_nnunet("cell_folder", root, out, None, progress=False)
    assert not (out / "dataset.json").exists()  # an interrupted export never passes for a complete one


def test_case_names_labels_and_dtypes():
    assert nnunet_case_names(["BraTS19_2013_10_1", "case_0001"]) == {"BraTS19_2013_10_1": "BraTS19_2013_10_1",
                                                                     "case_0001": "case_0001"}
    assert nnunet_case_names([".hidden", "é", "a/b", "A_b"]) == {".hidden": "hidden", "é": "case", "a/b": "a_b_2",
                                                                 "A_b": "A_b"}
    with pytest.raises(DataError, match="duplicate case ids"):
        nnunet_case_names(["a", "a"])
    assert nnunet_label_names(["bg", "ignore", "x", "x", "background"]) == [
        "background", "ignore_class", "x", "x_3", "background_class"]
    assert storage_dtype(np.array([0, 255], np.float32)) == np.uint8
    assert storage_dtype(np.array([-1024, 3071], np.float32)) == np.int16
    assert storage_dtype(np.array([0, 60000], np.float32)) == np.uint16
    assert storage_dtype(np.array([-1, 70000], np.float32)) == np.int32
    assert storage_dtype(np.array([0.5, 1], np.float32)) == np.float32
    assert storage_dtype(np.array([3e9], np.float32)) == np.float32


@pytest.mark.shared_data
def test_real_hippocampus_five_cases_round_trip(tmp_path):
    root = shared_data("msd_hippocampus/Task04_Hippocampus")
    ids = [c.case_id for c in get_format("msd").find_cases(root, None, True)][:5]
    split = {"train": ids[:3], "val": ids[3:4], "test": ids[4:]}
    out = tmp_path / "Dataset004_Hippocampus"
    report = export_nnunet("msd", root, out, split, progress=False, case_ids=ids)
    meta = _json(out / "dataset.json")
    assert meta["channel_names"] == {"0": "MRI"} and meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert meta["numTraining"] == 5 and _json(out / "splits_final.json") == [{"train": ids[:3], "val": ids[3:4]}]
    msd = get_format("msd")
    back = {c.case_id: c for c in msd.find_cases(out, None, True)}
    assert sorted(back) == sorted(ids) == sorted(report.cases)
    source = {c.case_id: c for c in msd.find_cases(root, None, True)}
    for cid in ids:
        a, b = source[cid].load(["MRI"]), back[cid].load(["MRI"])
        np.testing.assert_array_equal(b.image, a.image)
        np.testing.assert_array_equal(b.label, a.label)
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
