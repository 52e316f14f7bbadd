"""Tests for the synthetic BraTS-like phantom (pdeseg.data.phantoms.brats)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pdeseg.data.phantoms.brats import (
    MODALITIES,
    _make_phantom_case_with_tissue,
    make_phantom_case,
    phantom_case_seed,
    write_phantom_dataset,
)

SHAPE = (48, 48, 24)
BG, CSF, GM, WM, OEDEMA, ENHANCING, NECROSIS = range(7)


@pytest.fixture(scope="module")
def cases():
    """A few small cases with their tissue maps: list of (images, label, tissue)."""
    return [_make_phantom_case_with_tissue(SHAPE, seed=s) for s in range(4)]


def test_shapes_and_dtypes(cases):
    for images, label, tissue in cases:
        assert set(images) == set(MODALITIES)
        for arr in images.values():
            assert arr.shape == SHAPE and arr.dtype == np.float32
            assert np.isfinite(arr).all() and (arr >= 0).all()
        assert label.shape == SHAPE and label.dtype == np.int16
        assert tissue.shape == SHAPE


def test_deterministic_by_seed():
    a_img, a_lab = make_phantom_case(SHAPE, seed=7)
    b_img, b_lab = make_phantom_case(SHAPE, seed=7)
    assert a_lab.tobytes() == b_lab.tobytes()
    for m in MODALITIES:
        assert a_img[m].tobytes() == b_img[m].tobytes()
    c_img, c_lab = make_phantom_case(SHAPE, seed=8)
    assert not np.array_equal(a_lab, c_lab)
    assert not np.array_equal(a_img["flair"], c_img["flair"])


def test_label_values(cases):
    seen = set()
    for _, label, _ in cases:
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 4}
        assert {2, 4} <= values, "every case has oedema and an enhancing tumour"
        seen |= values
    assert seen == {0, 1, 2, 4}


def test_label_matches_tissue_and_nesting(cases):
    for _, label, tissue in cases:
        assert np.array_equal(label == 1, tissue == NECROSIS)
        assert np.array_equal(label == 2, tissue == OEDEMA)
        assert np.array_equal(label == 4, tissue == ENHANCING)
        assert not (label[tissue == BG]).any(), "tumour only inside the brain"
        # the tumour does not fill the volume: some axial slices have no tumour
        per_slice = (label > 0).any(axis=(0, 1))
        assert per_slice.any() and not per_slice.all()


def test_zero_outside_brain(cases):
    for images, _, tissue in cases:
        outside = tissue == BG
        assert outside.any() and (~outside).any()
        for m in MODALITIES:
            assert (images[m][outside] == 0).all()
            assert (images[m][~outside] > 0).mean() > 0.99


def _interior(mask, min_voxels=10):
    """The mask eroded by one voxel (less partial volume), or None when too little is left."""
    core = ndimage.binary_erosion(mask)
    return core if core.sum() >= min_voxels else None


def test_tissue_contrasts():
    for seed in range(3):
        images, _, tissue = _make_phantom_case_with_tissue((64, 64, 32), seed=seed)
        # normalise each modality by its mean in the brain to remove the global scale
        m = {k: v / v[tissue != BG].mean() for k, v in images.items()}
        inner = {t: _interior(tissue == t) for t in range(1, 7)}
        inner[ENHANCING] = tissue == ENHANCING  # a thin rim: erosion would remove it

        def mean(mod, t):
            return float(m[mod][inner[t]].mean())

        for t in (CSF, GM, WM, OEDEMA, ENHANCING):
            assert inner[t] is not None, f"tissue {t} too small in seed {seed}"
        # T1: WM > GM > CSF, tumour and oedema hypo-intense to WM
        assert mean("t1", WM) > mean("t1", GM) > mean("t1", CSF)
        assert mean("t1", OEDEMA) < mean("t1", WM)
        assert mean("t1", ENHANCING) < mean("t1", WM)
        # T1ce: the enhancing rim is brighter than WM and than necrosis
        assert mean("t1ce", ENHANCING) > 1.2 * mean("t1ce", WM)
        if inner[NECROSIS] is not None:
            assert mean("t1ce", ENHANCING) > 1.2 * mean("t1ce", NECROSIS)
            assert mean("t2", NECROSIS) > mean("t2", WM)
        # T2: CSF brightest, oedema bright, GM > WM
        assert mean("t2", CSF) > mean("t2", GM) > mean("t2", WM)
        assert mean("t2", OEDEMA) > mean("t2", GM)
        # FLAIR: CSF suppressed, oedema brighter than normal brain, GM >= WM
        normal_flair = float(m["flair"][(tissue == GM) | (tissue == WM)].mean())
        assert mean("flair", OEDEMA) > 1.3 * normal_flair
        assert mean("flair", CSF) < mean("flair", WM)
        assert mean("flair", GM) >= mean("flair", WM)


def test_write_dataset_layout(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="pdeseg.data.phantoms.brats"):
        paths = write_phantom_dataset(tmp_path / "ds", n_cases=2, seed=3, shape=SHAPE)
    assert capsys.readouterr().out == "", "library code must not print"
    assert any("phantom case" in r.getMessage() for r in caplog.records)
    assert paths == sorted(paths)
    assert [p.name for p in paths] == ["Phantom_001", "Phantom_002"]
    expected_affine = np.array(
        [[-1, 0, 0, 0], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    for i, case in enumerate(paths, start=1):
        ref_img, ref_lab = make_phantom_case(SHAPE, seed=phantom_case_seed(3, i))
        for key in (*MODALITIES, "seg"):
            f = case / f"{case.name}_{key}.nii.gz"
            assert f.is_file()
            img = nib.load(f)
            assert img.shape == SHAPE
            assert img.get_data_dtype() == np.int16
            np.testing.assert_allclose(img.affine, expected_affine)
            assert img.header.get_xyzt_units()[0] == "mm"
            data = np.asarray(img.dataobj)
            assert data.dtype == np.int16
            if key == "seg":
                assert np.array_equal(data, ref_lab)
            else:
                assert np.abs(data - ref_img[key]).max() <= 0.5 + 1e-3
    # a custom prefix, and re-writing gives the same files' content
    again = write_phantom_dataset(
        tmp_path / "ds2", n_cases=1, seed=3, shape=SHAPE, prefix="BraTS20_Training"
    )
    assert again[0].name == "BraTS20_Training_001"
    a = np.asarray(nib.load(paths[0] / "Phantom_001_t1ce.nii.gz").dataobj)
    b = np.asarray(nib.load(again[0] / "BraTS20_Training_001_t1ce.nii.gz").dataobj)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("n_cases", [0, -1])
def test_bad_n_cases(tmp_path, n_cases):
    with pytest.raises(ValueError, match="n_cases"):
        write_phantom_dataset(tmp_path, n_cases=n_cases, shape=SHAPE)


@pytest.mark.parametrize("shape", [(15, 48, 24), (48, 48, 8), (48, 48), (48, 48, 24, 2)])
def test_bad_shape(tmp_path, shape):
    with pytest.raises(ValueError, match="shape"):
        make_phantom_case(shape)
    with pytest.raises(ValueError, match="shape"):
        write_phantom_dataset(tmp_path, n_cases=1, shape=shape)


def test_bad_prefix(tmp_path):
    with pytest.raises(ValueError, match="prefix"):
        write_phantom_dataset(tmp_path, n_cases=1, shape=SHAPE, prefix="a/b")
