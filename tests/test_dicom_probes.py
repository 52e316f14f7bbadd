"""Probes of issue 32 on real DICOM series (``../shared/data/dicom_series``, skipped where
absent), through the real command line and the Python API:

* case identity: two patients (or two series of one study) with the same ``SeriesNumber`` in
  one flat export give distinct, readable outputs, and the log's count matches the files;
* a rescale that makes values NaN, infinite or beyond float32 is refused, not segmented;
* ``PixelSpacing`` 0 or negative, a file cut short, undecodable pixel data and bad ``series``
  rules are one line naming the file or key (exit 2), with pydicom's own records kept off the
  console (debug level);
* ``--series`` rules add to the built-in BraTS rules (the README's example).

Every refusal leaves the input tree byte for byte as it was.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from conftest import shared_data
from pdeseg.cli import main
from pdeseg.errors import ConfigError, DataError
from test_dicom import _study, _tiny_checkpoint
from test_output_ownership import checksums

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

SERIES = "siemens/anatomical/001"


def copy_series(dest: Path, prefix: str = "", **tags) -> Path:
    """The real series ``SERIES`` copied into ``dest`` (files prefixed ``prefix``) with ``tags``
    set in every file; new Study/Series/SOP Instance UIDs unless given."""
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True, exist_ok=True)
    tags = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), **tags}
    for f in sorted((shared_data("dicom_series") / SERIES).iterdir()):
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dest / f"{prefix}{f.name}")
    return dest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A random one-channel 2D slice model (MR, 2 classes); no training."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", "unet", 2, dict(
        format="msd", modalities=["MRI"], normalization="zscore", mode="slices", spatial_dims=2, num_classes=2,
        class_names=["background", "tissue"]), 1)


def predict(ckpt: Path, src: Path, out: Path, caplog, *extra: str) -> tuple[int, list[str], list[logging.LogRecord]]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--device", "cpu",
                     "--no-progress", "--output-format", "nifti", *extra])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR], list(caplog.records)


@pytest.mark.shared_data
def test_two_patients_with_series_7_in_one_export_give_two_outputs(ckpt, tmp_path, caplog, capsys):
    export = tmp_path / "export"
    copy_series(export, "a_", PatientID="PAT-A", SeriesNumber=7)
    copy_series(export, "b_", PatientID="PAT-B", SeriesNumber=7)
    before = checksums(export)
    code, errors, _ = predict(ckpt, export, tmp_path / "out", caplog)
    assert code == 0, errors
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["export_s7_pPAT-A_seg.nii.gz", "export_s7_pPAT-B_seg.nii.gz"], files
    assert f"wrote {len(files)} segmentation(s)" in capsys.readouterr().out
    assert checksums(export) == before


@pytest.mark.shared_data
def test_two_series_of_one_study_with_one_number_get_distinct_stable_names(tmp_path):
    from pdeseg.data.readers.dicom import find_dicom_cases

    export = tmp_path / "export"
    copy_series(export, "a_", PatientID="P", StudyInstanceUID="1.2.826.0.1.77", SeriesNumber=7)
    copy_series(export, "b_", PatientID="P", StudyInstanceUID="1.2.826.0.1.77", SeriesNumber=7)
    ids = [c.case_id for c in find_dicom_cases(export, ["MRI"])]
    assert len(set(ids)) == 2 and all(i.startswith("export_s7_u") for i in ids), ids
    assert [c.case_id for c in find_dicom_cases(export, ["MRI"])] == ids  # the same names on every read


@pytest.mark.shared_data
@pytest.mark.parametrize("slope,intercept", [("NaN", "0"), ("1e300", "0"), ("1", "1e300"), ("inf", "0")])
def test_rescale_to_values_float32_cannot_hold_is_refused(slope, intercept, ckpt, tmp_path, caplog):
    import pdeseg

    src = copy_series(tmp_path / "in" / "s1")
    first = sorted(src.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(first)
    before = checksums(tmp_path / "in")
    code, errors, _ = predict(ckpt, tmp_path / "in", tmp_path / "out", caplog)
    assert code == 2 and len(errors) == 1, errors
    assert first.name in errors[0] and "RescaleSlope" in errors[0], errors[0]
    assert not (tmp_path / "out").exists() and checksums(tmp_path / "in") == before
    with pytest.raises(DataError, match=f"{first.name}: RescaleSlope .* NaN, infinite or beyond float32"):
        pdeseg.read_dicom(src)


@pytest.mark.shared_data
@pytest.mark.parametrize("spacing", [["0", "0"], ["-0.5", "-0.5"], ["0.5", "nan"]])
def test_pixel_spacing_that_is_not_a_size_is_named(spacing, ckpt, tmp_path, caplog):
    import pdeseg

    src = copy_series(tmp_path / "in" / "s1")
    for f in src.iterdir():
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = spacing
        ds.save_as(f)
    before = checksums(tmp_path / "in")
    code, errors, _ = predict(ckpt, tmp_path / "in", tmp_path / "out", caplog)
    assert code == 2 and len(errors) == 1, errors
    assert "PixelSpacing" in errors[0] and "gantry" not in errors[0] and "Traceback" not in errors[0], errors[0]
    assert checksums(tmp_path / "in") == before
    with pytest.raises(DataError, match="PixelSpacing .* must be two sizes > 0 mm"):
        pdeseg.read_dicom(src)


@pytest.mark.shared_data
def test_a_file_cut_short_is_named_as_such(tmp_path):
    import pdeseg

    src = tmp_path / "cut"
    src.mkdir()
    real = sorted((shared_data("dicom_series") / SERIES).iterdir())[0]
    (src / real.name).write_bytes(real.read_bytes()[:200])  # the file meta only
    with pytest.raises(DataError, match=f"{real.name}: its header has no SOPClassUID \\(the file is cut short"):
        pdeseg.read_dicom(src)


@pytest.mark.shared_data
def test_undecodable_pixel_data_is_one_line_without_pydicoms_records(ckpt, tmp_path, caplog):
    pytest.importorskip("pylibjpeg")
    src = tmp_path / "in" / "jpeg"
    shutil.copytree(shared_data("dicom_series") / "generic/compressed_jpeg/001", src)
    first = sorted(src.iterdir())[0]
    n = len(pydicom.dcmread(first).PixelData)
    data = bytearray(first.read_bytes())
    start = len(data) - n + 16
    data[start:-10] = bytes(len(data) - 10 - start)  # the JPEG stream zeroed: no decoder can read it
    first.write_bytes(bytes(data))
    code, errors, records = predict(ckpt, tmp_path / "in", tmp_path / "out", caplog)
    assert code == 2 and len(errors) == 1 and first.name in errors[0], errors
    assert not [r for r in records if not r.name.startswith("pdeseg") and r.levelno >= logging.INFO], \
        [(r.name, r.getMessage()[:80]) for r in records if not r.name.startswith("pdeseg")]


def test_series_rules_that_are_not_rules_are_a_config_error(tmp_path):
    import pdeseg

    root = _study(tmp_path, ["FLAIR", "T1"])
    with pytest.raises(ConfigError, match="series rules must be a mapping .* got int 42"):
        pdeseg.read_dicom(root, ["flair", "t1"], series=42)


def test_series_rules_add_to_the_built_in_ones_as_in_the_readme(tmp_path):
    """README: ``--series flair='*FLAIR*' --series t1ce='*T1*post*,*T1*Gd*'`` on a BraTS model;
    t1 and t2 come from the built-in rules."""
    from pdeseg.data.readers.dicom import find_dicom_cases

    root = _study(tmp_path, ["Dark Fluid FLAIR", "T1 SE", "T1 Gd", "T2 TSE"])
    (case,) = find_dicom_cases(root, ["flair", "t1", "t1ce", "t2"], series=["flair=*FLAIR*", "t1ce=*T1*post*,*T1*Gd*"])
    assert {m: s.description for m, s in case.channels.items()} == {
        "flair": "Dark Fluid FLAIR", "t1": "T1 SE", "t1ce": "T1 Gd", "t2": "T2 TSE"}
    # a user rule comes first: a description the built-in rules would give t2 goes to the user's channel
    (case,) = find_dicom_cases(_study(tmp_path / "b", ["AX T2 dark fluid", "T1 SE", "T1 post", "T2 TSE"]),
                               ["flair", "t1", "t1ce", "t2"], series=["flair=*dark fluid*"])
    assert case.channels["flair"].description == "AX T2 dark fluid"
