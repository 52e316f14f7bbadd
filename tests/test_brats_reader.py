import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import shared_data
from pdeseg.data.readers.brats import (
    BratsDataError,
    classes_to_labels,
    find_cases,
    labels_to_classes,
    load_case,
)

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_case(root: Path, case_id: str, names=("flair", "t1", "t1ce", "t2"), label_values=(0, 1, 2, 4),
               shape=(12, 10, 8), sep="_", ext=".nii.gz", label_name=None):
    folder = root / case_id
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        data = rng.integers(1, 100, shape).astype(np.int16)
        nib.save(nib.Nifti1Image(data, AFFINE), str(folder / f"{case_id}{sep}{name}{ext}"))
    if label_values is not None:
        lab = np.zeros(shape, np.int16)
        for i, v in enumerate(label_values):
            lab[i, 0, 0] = v
        nib.save(nib.Nifti1Image(lab, AFFINE), str(folder / (label_name or f"{case_id}{sep}seg{ext}")))
    return folder


def test_reads_2018_naming_and_maps_labels(tmp_path):
    write_case(tmp_path, "Brats18_X_1")
    (case,) = find_cases(tmp_path)
    loaded = load_case(case)
    assert loaded.image.shape == (4, 12, 10, 8) and loaded.image.dtype == np.float32
    assert loaded.convention == "brats2020"
    assert set(np.unique(loaded.label)) == {0, 1, 2, 3}


def test_kaggle_case_355_label_name_and_uncompressed_nii(tmp_path):
    write_case(tmp_path, "BraTS20_Training_355", ext=".nii", label_name="W39_1998.09.19_Segm.nii")
    (case,) = find_cases(tmp_path)
    assert case.label.name == "W39_1998.09.19_Segm.nii"
    assert load_case(case).convention == "brats2020"


@pytest.mark.parametrize("names,sep", [(("flair", "t1", "t1ce", "t2"), "_"), (("t2f", "t1n", "t1c", "t2w"), "-")])
def test_2023_naming_and_et3_convention(tmp_path, names, sep):
    write_case(tmp_path, "BraTS-GLI-00001-000", names=names, sep=sep, label_values=(0, 1, 2, 3))
    (case,) = find_cases(tmp_path)
    loaded = load_case(case)
    assert loaded.convention == "brats2023"
    assert set(np.unique(loaded.label)) == {0, 1, 2, 3}


def test_2023_case_without_et_keeps_2023_convention_from_naming(tmp_path):
    write_case(tmp_path, "BraTS-GLI-00002-000", label_values=(0, 1, 2))
    assert load_case(find_cases(tmp_path)[0]).convention == "brats2023"


def test_single_case_folder_is_accepted(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    assert [c.case_id for c in find_cases(folder)] == ["Brats18_X_1"]


def test_label_round_trip():
    raw = np.array([0, 1, 2, 4, 4, 0])
    assert np.array_equal(classes_to_labels(labels_to_classes(raw, "brats2020"), "brats2020"), raw)
    assert np.array_equal(classes_to_labels(labels_to_classes(raw, "brats2020"), "brats2023"), [0, 1, 2, 3, 3, 0])


def test_error_missing_modality_names_folder_and_modality(tmp_path):
    write_case(tmp_path, "Brats18_X_1", names=("flair", "t1", "t2"))
    with pytest.raises(BratsDataError, match=r"Brats18_X_1.*missing modality 't1ce'"):
        find_cases(tmp_path)


def test_missing_label_is_an_error_only_when_required(tmp_path):
    write_case(tmp_path, "Brats18_X_1", label_values=None)
    with pytest.raises(BratsDataError, match="no label file"):
        find_cases(tmp_path)
    assert find_cases(tmp_path, require_label=False)[0].label is None


def test_error_empty_folder(tmp_path):
    with pytest.raises(BratsDataError, match="no BraTS cases"):
        find_cases(tmp_path)
    with pytest.raises(BratsDataError, match="not found"):
        find_cases(tmp_path / "nope")


def test_error_shape_mismatch_names_file(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    nib.save(nib.Nifti1Image(np.ones((12, 10, 9), np.int16), AFFINE), str(folder / "Brats18_X_1_t2.nii.gz"))
    with pytest.raises(BratsDataError, match=r"Brats18_X_1_t2\.nii\.gz: shape \(12, 10, 9\) differs"):
        load_case(find_cases(tmp_path)[0])


def test_error_affine_mismatch(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    moved = AFFINE.copy()
    moved[0, 3] = 5.0
    nib.save(nib.Nifti1Image(np.ones((12, 10, 8), np.int16), moved), str(folder / "Brats18_X_1_t1.nii.gz"))
    with pytest.raises(BratsDataError, match=r"Brats18_X_1_t1\.nii\.gz: affine differs"):
        load_case(find_cases(tmp_path)[0])


def test_error_nan_voxels(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    data = np.ones((12, 10, 8), np.float32)
    data[0, 0, :3] = np.nan
    nib.save(nib.Nifti1Image(data, AFFINE), str(folder / "Brats18_X_1_flair.nii.gz"))
    with pytest.raises(BratsDataError, match=r"flair\.nii\.gz: 3 NaN/inf voxels"):
        load_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("values,match", [((0, 1, 5), r"unexpected label values \[5\]"), ((0, 3, 4), "holds label 3, which brats2020")])
def test_error_unexpected_label_values(tmp_path, values, match):
    write_case(tmp_path, "Brats18_X_1", label_values=values)
    with pytest.raises(BratsDataError, match=match):
        load_case(find_cases(tmp_path)[0])


def test_error_non_integer_labels(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    nib.save(nib.Nifti1Image(np.full((12, 10, 8), 0.5, np.float32), AFFINE), str(folder / "Brats18_X_1_seg.nii.gz"))
    with pytest.raises(BratsDataError, match="non-integer"):
        load_case(find_cases(tmp_path)[0])


def test_error_corrupt_file(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    path = folder / "Brats18_X_1_t1ce.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti file at all" * 20))
    with pytest.raises(BratsDataError, match=r"t1ce\.nii\.gz: cannot read NIfTI"):
        load_case(find_cases(tmp_path)[0])


def test_error_truncated_file(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    path = folder / "Brats18_X_1_t2.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BratsDataError, match=r"t2\.nii\.gz: cannot read NIfTI"):
        load_case(find_cases(tmp_path)[0])


def test_error_duplicate_modality_files(tmp_path):
    folder = write_case(tmp_path, "Brats18_X_1")
    (folder / "Brats18_X_1_t1.nii").write_bytes(b"")
    with pytest.raises(BratsDataError, match="several files for modality 't1'"):
        find_cases(tmp_path)


@pytest.mark.shared_data
def test_every_real_brats2018_case_reads():
    root = shared_data("brats2018")
    cases = find_cases(root)
    assert len(cases) == 16
    for case in cases:
        loaded = load_case(case)
        assert loaded.image.shape == (4, 240, 240, 155)
        assert loaded.convention == "brats2020"
        assert loaded.spacing == (1.0, 1.0, 1.0)
        assert set(np.unique(loaded.label)) <= {0, 1, 2, 3}
        assert (loaded.label > 0).sum() > 1000, f"{case.case_id}: expected a tumour"


@pytest.mark.shared_data
def test_real_brats2023_case_reads_with_et3():
    (case,) = find_cases(shared_data("brats2023"))
    loaded = load_case(case)
    assert loaded.image.shape == (4, 182, 218, 182)
    assert loaded.convention == "brats2023"
    assert (loaded.label == 3).any()


def test_label_convention_is_decided_per_data_set_and_a_disagreeing_case_is_named(tmp_path):
    """A 2018-named case whose seg has 3 and no 4 is not silently read as BraTS 2023."""
    write_case(tmp_path / "a", "Brats18_X_1")
    write_case(tmp_path / "a", "Brats18_X_2", label_values=(0, 1, 2, 3))
    good, odd = find_cases(tmp_path / "a")
    assert good.convention == odd.convention == "brats2020"
    with pytest.raises(BratsDataError, match=r"Brats18_X_2_seg.*holds label 3.*brats2020.*label_convention: brats2023"):
        load_case(odd)
    assert load_case(find_cases(tmp_path / "a", label_convention="brats2023")[1]).convention == "brats2023"
    with pytest.raises(BratsDataError, match="holds label 4"):  # and the stated convention is checked too
        load_case(find_cases(tmp_path / "a", label_convention="brats2023")[0])


def test_mixed_case_naming_needs_a_stated_convention(tmp_path):
    write_case(tmp_path, "Brats18_X_1")
    write_case(tmp_path, "BraTS-GLI-00001-000", label_values=(0, 1, 2, 3))
    with pytest.raises(BratsDataError, match="mix BraTS 2018-2021 .*Brats18_X_1.* and 2023 .*BraTS-GLI-00001-000"):
        find_cases(tmp_path)
    assert {c.convention for c in find_cases(tmp_path, label_convention="brats2023")} == {"brats2023"}


def test_format_options_are_checked_against_the_format(tmp_path):
    from pdeseg.build import resolve
    from pdeseg.config import config_from_dict
    from pdeseg.errors import ConfigError

    assert resolve(config_from_dict({"data": {"format_options": {"label_convention": "brats2023"}}}))
    with pytest.raises(ConfigError, match="label_convention must be one of brats2020, brats2023"):
        resolve(config_from_dict({"data": {"format_options": {"label_convention": "2023"}}}))
    with pytest.raises(ConfigError, match="lgg takes no option 'label_convention'"):
        resolve(config_from_dict({"data": {"format": "lgg", "format_options": {"label_convention": "brats2023"}}}))
