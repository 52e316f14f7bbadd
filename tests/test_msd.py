"""MSD / nnU-Net raw reader: both dataset.json conventions on task folders the tests write,
every way a case can be broken, the real Hippocampus cases, and the CT phantom end to end."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import shared_data
from pdeseg.data.formats import get_format
from pdeseg.data.readers.msd import MsdDataError, find_msd_cases, read_dataset_json
from pdeseg.errors import ConfigError, DataError

SHAPE = (6, 7, 5)
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def _save(array, path: Path, dtype=np.float32, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array).astype(dtype), affine), str(path))
    return path


def _label(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, SHAPE).astype(np.uint8)


def _channels(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    return [rng.integers(0, 200, SHAPE).astype(np.float32) + 1000 * c for c in range(n)]


def write_task(root: Path, layout: str, n_cases: int = 2, n_channels: int = 2) -> Path:
    """A task with ``n_channels`` channels named T2, ADC, ... and labels 0, 1, 2."""
    names = ["T2", "ADC", "DWI"][:n_channels]
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case = f"prostate_{i:02d}"
        chans = _channels(i, n_channels)
        if layout == "msd":
            _save(np.stack(chans, axis=-1) if n_channels > 1 else chans[0], root / "imagesTr" / f"{case}.nii.gz")
        else:
            for c, arr in enumerate(chans):
                _save(arr, root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        _save(_label(i), root / "labelsTr" / f"{case}.nii.gz", np.uint8)
    classes = ["background", "PZ", "TZ"]
    if layout == "msd":
        meta = {"name": "Prostate", "modality": {str(c): n for c, n in enumerate(names)},
                "labels": {str(v): n for v, n in enumerate(classes)}}
    else:
        meta = {"name": "Prostate", "channel_names": {str(c): n for c, n in enumerate(names)},
                "labels": {n: v for v, n in enumerate(classes)}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_both_conventions_give_the_same_cases(tmp_path, layout):
    root = write_task(tmp_path / layout, layout)
    fmt = get_format("msd")
    info = fmt.dataset_info(root)
    assert info.class_names == ("background", "PZ", "TZ") and info.modalities == ("T2", "ADC")
    cases = fmt.find_cases(root, ["ADC", "T2"])
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_01"]
    loaded = cases[1].load(["ADC", "T2"])  # the requested order, not the file order
    t2, adc = _channels(1, 2)
    assert loaded.image.shape == (2, *SHAPE) and loaded.image.dtype == np.float32
    assert np.array_equal(loaded.image[0], adc) and np.array_equal(loaded.image[1], t2)
    assert np.array_equal(loaded.label, _label(1))
    assert loaded.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert loaded.header.get_data_shape() == SHAPE  # a 4D MSD header is made fit for a 3D label


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_predictions_are_written_with_the_input_geometry_and_label_values(tmp_path, layout):
    root = write_task(tmp_path / layout, layout)
    fmt = get_format("msd")
    case = fmt.find_cases(root, ["T2", "ADC"])[0]
    loaded = case.load(["T2", "ADC"], with_label=False)
    path = fmt.write_prediction(_label(7), loaded, tmp_path / "out")
    assert path == tmp_path / "out" / "prostate_00.nii.gz" and fmt.output_paths(case, tmp_path / "out") == [path]
    img = nib.load(str(path))
    assert img.shape == SHAPE and np.allclose(img.affine, AFFINE) and img.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
    assert img.get_data_dtype() == np.uint8 and np.array_equal(np.asarray(img.dataobj), _label(7))


def test_missing_channel_file_is_named_or_skipped(tmp_path):
    root = write_task(tmp_path, "nnunet")
    (root / "imagesTr" / "prostate_01_0001.nii.gz").unlink()
    with pytest.raises(MsdDataError, match="prostate_01 has no channel file.*prostate_01_0001"):
        find_msd_cases(root, ["T2", "ADC"])
    skipped: dict = {}
    assert [c.case_id for c in find_msd_cases(root, ["T2", "ADC"], skipped=skipped)] == ["prostate_00"]
    assert "prostate_01" in skipped


def test_missing_label_is_named_unless_labels_are_not_needed(tmp_path):
    root = write_task(tmp_path, "msd")
    (root / "labelsTr" / "prostate_00.nii.gz").unlink()
    with pytest.raises(MsdDataError, match=r"no label file .*labelsTr/prostate_00\.nii\.gz"):
        find_msd_cases(root, ["T2"])
    assert len(find_msd_cases(root, ["T2"], require_label=False)) == 2


def test_label_values_outside_dataset_json_are_refused(tmp_path):
    root = write_task(tmp_path, "msd")
    label = _label(0)
    label[0, 0, 0] = 5
    _save(label, root / "labelsTr" / "prostate_00.nii.gz", np.uint8)
    case = find_msd_cases(root, ["T2"])[0]
    with pytest.raises(MsdDataError, match=r"prostate_00\.nii\.gz: label values \[5\] are not in dataset\.json"):
        case.load(["T2"])
    assert case.load(["T2"], with_label=False).label is None  # prediction never needs the label


def test_real_world_dtype_quirks_are_absorbed(tmp_path):
    """uint8 images with float32 labels and the reverse (as in MSD Hippocampus), and macOS
    resource-fork files from the MSD archives."""
    root = write_task(tmp_path, "msd", n_channels=1)
    t2 = _channels(0, 1)[0]
    _save(np.clip(t2, 0, 255), root / "imagesTr" / "prostate_00.nii.gz", np.uint8)
    _save(_label(0), root / "labelsTr" / "prostate_00.nii.gz", np.float32)
    (root / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    cases = find_msd_cases(root, ["T2"])
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_01"]
    loaded = cases[0].load(["T2"])
    assert loaded.image.dtype == np.float32 and np.array_equal(loaded.image[0], np.clip(t2, 0, 255))
    assert loaded.label.dtype == np.uint8 and np.array_equal(loaded.label, _label(0))


@pytest.mark.parametrize("breakage, message", [
    ("fractional_label", "non-integer or NaN"),
    ("nan_image", "NaN/inf voxels"),
    ("corrupt_image", "cannot read NIfTI"),
    ("label_shape", r"shape \(6, 7, 4\) differs"),
    ("channel_count", "holds 3 channel.*dataset.json lists 2"),
])
def test_broken_cases_name_the_file(tmp_path, breakage, message):
    root = write_task(tmp_path, "msd")
    image, label = root / "imagesTr" / "prostate_00.nii.gz", root / "labelsTr" / "prostate_00.nii.gz"
    if breakage == "fractional_label":
        _save(_label(0) + 0.5, label)
    elif breakage == "nan_image":
        arr = np.stack(_channels(0, 2), axis=-1)
        arr[1, 1, 1, 1] = np.nan
        _save(arr, image)
    elif breakage == "corrupt_image":
        image.write_bytes(image.read_bytes()[:200])
    elif breakage == "label_shape":
        _save(_label(0)[..., :4], label, np.uint8)
    else:
        _save(np.stack(_channels(0, 3), axis=-1), image)
    case = find_msd_cases(root, ["T2", "ADC"])[0]
    with pytest.raises(MsdDataError, match=message) as err:
        case.load(["T2", "ADC"])
    assert "prostate_00" in str(err.value)


def test_channels_on_different_grids_are_refused(tmp_path):
    root = write_task(tmp_path, "nnunet")
    _save(_channels(0, 2)[1], root / "imagesTr" / "prostate_00_0001.nii.gz", affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MsdDataError, match="prostate_00_0001.nii.gz: affine differs"):
        find_msd_cases(root, ["T2", "ADC"])[0].load(["T2", "ADC"])


@pytest.mark.parametrize("edit, message", [
    (None, "no dataset.json"),
    ("{not json", "not valid JSON"),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": [1, 2]}}, "region-based"),
    ({"modality": {"0": "CT"}, "labels": {"0": "background", "2": "tumour"}}, "indices of 'labels' must be 0..1"),
    ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 2}}, r"label values must be 0..1"),
    ({"labels": {"0": "background"}}, "neither 'modality'"),
])
def test_bad_dataset_json_is_explained(tmp_path, edit, message):
    root = write_task(tmp_path, "msd")
    if edit is None:
        (root / "dataset.json").unlink()
    else:
        (root / "dataset.json").write_text(edit if isinstance(edit, str) else json.dumps(edit))
    with pytest.raises(MsdDataError, match=message):
        read_dataset_json(root)


def test_unknown_channel_and_missing_root_are_config_level_errors(tmp_path):
    root = write_task(tmp_path, "msd")
    with pytest.raises(DataError, match=r"no channel \['FLAIR'\].*T2, ADC"):
        find_msd_cases(root, ["FLAIR"])
    with pytest.raises(ConfigError, match="dataset.json"):
        get_format("msd").dataset_info(None)


def test_every_shared_hippocampus_case_reads():
    root = shared_data("msd_hippocampus/Task04_Hippocampus")
    fmt = get_format("msd")
    info = fmt.dataset_info(root)
    assert info.class_names == ("background", "Anterior", "Posterior") and info.modalities == ("MRI",)
    cases = fmt.find_cases(root, ["MRI"])
    assert len(cases) == 200
    dtypes = set()
    for case in cases:
        dtypes.add(nib.load(str(case.images[0])).get_data_dtype().name)
        loaded = case.load(["MRI"])
        assert loaded.image.shape[0] == 1 and loaded.image.shape[1:] == loaded.label.shape
        assert all(24 <= s <= 64 for s in loaded.label.shape)
        assert set(np.unique(loaded.label)) == {0, 1, 2}, case.case_id
    assert dtypes == {"uint8", "float32"}  # the quirk the reader absorbs


def test_ct_phantom_statistics_follow_the_training_foreground(tmp_path):
    """nnU-Net's CT rule: the window comes from the labelled voxels (liver ~60 HU, lesions ~15 HU),
    not from air (-1000) or bone (+700); one affine map for every case."""
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset
    from pdeseg.data.pipeline.prepare import training_ct_statistics
    from pdeseg.data.pipeline.preprocess import normalize

    root = write_msd_phantom_dataset(tmp_path / "ct", n_cases=3, kind="ct", shape=(48, 48, 16), n_test=0)
    cases = find_msd_cases(root, ["CT"])
    window, stats = training_ct_statistics(cases, ["CT"], tmp_path / "cache", progress=False)
    assert -60 < window[0] < 15 and 60 < window[1] < 120 and 25 < stats[0] < 65 and 5 < stats[1] < 40
    assert list(tmp_path.joinpath("cache").glob("ct-statistics-*.json"))  # remembered for a resumed run
    loaded = cases[0].load(["CT"])
    out = normalize(loaded.image, "ct", window, stats)
    assert out.min() == pytest.approx((window[0] - stats[0]) / stats[1], rel=1e-4)  # air clipped to the window
    assert out.max() == pytest.approx((window[1] - stats[0]) / stats[1], rel=1e-4)


def test_ct_phantom_train_resume_predict_round_trip(tmp_path):
    """A CT task end to end: statistics from the training cases into the checkpoint, resampling
    to a target spacing, patches on an anisotropic grid, resume, and NIfTI predictions back on
    the input grid with its header."""
    from pdeseg.checkpoint import load_checkpoint
    from pdeseg.config import config_from_dict
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset
    from pdeseg.inference.folder import predict_folder
    from pdeseg.training.run import train_model

    root = write_msd_phantom_dataset(tmp_path / "ct", n_cases=4, kind="ct", shape=(40, 40, 16), n_test=1)
    cfg = config_from_dict({
        "name": "ct", "output_dir": str(tmp_path),
        "data": {"root": str(root), "format": "msd", "cache_dir": str(tmp_path / "cache"), "mode": "patches",
                 "normalization": "ct", "spatial_size": [20, 20, 16], "samples_per_case": 1,
                 "target_spacing": [1.6, 1.6, 2.5],
                 "split": {"fractions": None, "counts": [2, 1, 1], "seed": 0}},
        "models": [{"name": "unet", "kwargs": {"features": [4, 8, 8, 8, 8], "norm": "instance"}}],
        "train": {"epochs": 2, "batch_size": 2, "precision": "32", "val_batch_size": 2},
    })
    train_model(cfg, cfg.models[0], tmp_path / "run", progress=False, stop_after=1)
    result = train_model(cfg, cfg.models[0], tmp_path / "run", resume=True, progress=False)
    assert len(result.history) == 2
    spec = load_checkpoint(tmp_path / "run" / "last.pt")["preprocessing"]
    assert spec["normalization"] == "ct" and len(spec["ct_window"]) == 2 and len(spec["ct_stats"]) == 2
    assert spec["target_spacing"] == [1.6, 1.6, 2.5]
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    assert metas and all(m["shape"] == [20, 20, 16] and m["source_shape"] == [40, 40, 16] for m in metas)
    written = predict_folder(tmp_path / "run" / "best.pt", root / "imagesTs", tmp_path / "pred", progress=False).written
    from_task = predict_folder(tmp_path / "run" / "best.pt", root, tmp_path / "pred_task", progress=False).written
    assert [p.name for p in from_task] == ["liverphantom_005.nii.gz"]  # a task folder predicts its imagesTs
    ref = nib.load(str(root / "imagesTs" / "liverphantom_005.nii.gz"))
    seg = nib.load(str(written[0]))
    assert written[0].name == "liverphantom_005.nii.gz"
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert seg.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


def test_resampling_keeps_the_field_of_view_and_label_values():
    from pdeseg.data.pipeline.preprocess import Preprocessing, resample, resampled_shape

    assert resampled_shape((40, 40, 16), (0.8, 0.8, 2.5), (1.6, 1.6, 2.5)) == (20, 20, 16)
    label = np.zeros((40, 40, 16), np.uint8)
    label[10:30, 10:30, 4:12] = 2
    small = resample(label, (20, 20, 16), "label")
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 2}
    assert small[5:15, 5:15, 4:12].all() and not small[:5].any() and not small[15:].any()  # same box in mm
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], (40, 40, 16))[None]
    coarse = resample(ramp, (20, 20, 16))
    assert coarse[0, :, 0, 0] == pytest.approx(np.arange(20) * 2 + 0.5)  # cell centres, not corners
    image, lab, mask = Preprocessing(("CT",), "zscore_all", target_spacing=(1.6, 1.6, 2.5)).apply(ramp, (0.8, 0.8, 2.5), label)
    assert image.shape == (1, 20, 20, 16) and lab.shape == mask.shape == (20, 20, 16)


def test_cli_writes_msd_phantoms_in_both_layouts_and_refuses_msd_options_elsewhere(tmp_path, capsys):
    from pdeseg.cli import main

    assert main(["phantom", "--format", "msd", "--kind", "ct", "--layout", "nnunet", "--cases", "2",
                 "--shape", "32", "32", "16", "--out", str(tmp_path / "ct")]) == 0
    ds = read_dataset_json(tmp_path / "ct")
    assert ds.layout == "nnunet" and ds.is_ct and ds.class_names == ("background", "liver", "cancer")
    assert sorted(p.name for p in (tmp_path / "ct" / "imagesTr").iterdir()) == ["liverphantom_001_0000.nii.gz",
                                                                               "liverphantom_002_0000.nii.gz"]
    img = nib.load(str(tmp_path / "ct" / "imagesTr" / "liverphantom_001_0000.nii.gz"))
    assert img.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5)) and img.get_data_dtype() == np.int16
    assert main(["phantom", "--format", "brats", "--kind", "ct", "--out", str(tmp_path / "b")]) == 2
    assert main(["phantom", "--format", "msd", "--shape", "8", "8", "8", "--out", str(tmp_path / "s")]) == 2
