"""DICOM in (pydicom), DICOM-SEG out (highdicom): the reader against dicom2nifti's reference
NIfTI files, the malformed series, gantry-tilt resampling, series-to-channel rules, and
BraTS / Hippocampus cases written as DICOM series, segmented through ``predict`` and read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import shared_data
from dicom_writer import read_seg_masks, write_series
from pdeseg.data.readers.dicom import find_dicom_cases
from pdeseg.data.readers.dicom_scan import scan_series
from pdeseg.data.readers.dicom_series import DicomSeriesError
from pdeseg.errors import ConfigError, DataError

pydicom = pytest.importorskip("pydicom")
highdicom = pytest.importorskip("highdicom")

# every series with a reference beside it that is not under failing/
READABLE = ["anatomical/001", "ge/anatomical/001", "ge/anatomical/001_implicit", "ge/anatomical/001_single_slice",
            "siemens/anatomical/001", "siemens/anatomical/001_implicit", "hitachi/anatomical/001",
            "hitachi/anatomical/001_implicit", "siemens_multiframe/anatomical/001", "generic/compressed_jpeg/001"]
# dicom2nifti's GE ground truth runs the stack the other way than its generic converter does for
# the very same geometry (anatomical/001 holds the same positions and orientation): no rule that
# depends on geometry alone can match both, so there the reference is compared with its slice
# axis reversed and its affine moved with it (the same voxels at the same world positions).
REVERSED_REFERENCE = {"ge/anatomical/001", "ge/anatomical/001_implicit"}


def _reverse_slices(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` with its third axis reversed: voxel k -> n - 1 - k, affine @ [[1, 0, 0, 0],
    [0, 1, 0, 0], [0, 0, -1, n - 1], [0, 0, 0, 1]] (nibabel's ``slicer[:, :, ::-1]`` turns the
    axis but leaves the origin at the old first slice)."""
    n = img.shape[2]
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, n - 1
    return nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, ::-1], img.affine @ flip, img.header)


@pytest.mark.shared_data
@pytest.mark.parametrize("sub", READABLE)
def test_reader_volume_equals_reference_nifti(sub):
    root = shared_data("dicom_series")
    ref = nib.load(root / f"{sub}_ground_truth.nii.gz")
    if sub in REVERSED_REFERENCE:
        ref = _reverse_slices(ref)
    cases = find_dicom_cases(root / sub, ["image"])
    assert len(cases) == 1
    loaded = cases[0].load()
    assert loaded.image.shape == (1, *ref.shape)
    assert np.array_equal(loaded.image[0], np.asanyarray(ref.dataobj).astype(np.float32))
    assert np.abs(loaded.affine - ref.affine).max() < 1e-4  # the reference stores its affine in float32
    assert np.allclose(loaded.spacing, ref.header.get_zooms()[:3], atol=1e-4)


FAILING = {
    "failing/gantrytilting/001": ["gantry tilt", "14.00 degrees", "gantry_tilt=resample"],
    "failing/notavolume/001": ["not a volume", "4 of its 4 images lie at the same position"],
    "failing/slicecount/001": ["too few slices: 2"],
    "failing/sliceincrement/002": ["1 slice(s) missing at [-130.744, -316.096, -50.358]", "IM-0001-0003.dcm",
                                   "IM-0001-0005.dcm", "1.499 mm", "0.750 mm"],
    "failing/sliceorientation/001": ["mixed orientations", "2 different ImageOrientationPatient"],
}


@pytest.mark.shared_data
@pytest.mark.parametrize("sub", sorted(FAILING))
def test_failing_series_give_one_line_naming_the_series(sub):
    root = shared_data("dicom_series")
    skipped: dict[str, str] = {}
    assert find_dicom_cases(root / sub, ["image"], skipped=skipped) == []
    (reason,) = skipped.values()
    assert "\n" not in reason and "SeriesInstanceUID" in reason and str(root / sub) in reason
    for fragment in FAILING[sub]:
        assert fragment in reason
    with pytest.raises(DicomSeriesError):  # without a skipped dict: raised
        find_dicom_cases(root / sub, ["image"])


def _tiny_checkpoint(path: Path, name: str, dims: int, spec: dict, in_channels: int, seed: int = 0) -> Path:
    from pdeseg.checkpoint import plain_state_dict, save_checkpoint
    from pdeseg.config import TaskSpec
    from pdeseg.nn.models import build_model

    torch.manual_seed(seed)
    kwargs = {"spatial_dims": dims, "in_channels": in_channels, "out_channels": spec["num_classes"], "features": [4, 8, 16, 32, 64]}
    model = build_model(name, **kwargs).eval()
    head = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
    with torch.no_grad():  # spread the random model's logits, so that it predicts every class somewhere
        head.weight.mul_(50.0)
    spec = TaskSpec(**spec)
    save_checkpoint({"model": {"name": name, "kwargs": kwargs}, "preprocessing": spec.model_dump(mode="json"),
                     "state_dict": plain_state_dict(model)}, path)
    return path


@pytest.mark.shared_data
def test_gantry_tilt_refused_by_default_and_resampled_on_request_through_the_cli(tmp_path):
    from pdeseg.cli import main

    root = shared_data("dicom_series")
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet3d", 3, dict(
        format="msd", modalities=["CT"], normalization="zscore", mode="whole", spatial_dims=3, num_classes=2,
        class_names=["background", "tissue"]), 1)
    src = root / "failing/gantrytilting/001"
    args = ["predict", "--checkpoint", str(ckpt), "--input", str(src), "--device", "cpu", "--no-progress",
            "--output-format", "nifti"]
    assert main([*args, "--output", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--output", str(tmp_path / "out"), "--gantry-tilt", "resample"]) == 0
    img = nib.load(tmp_path / "out" / "001_seg.nii.gz")
    a = img.affine[:3, :3] / np.array(img.header.get_zooms()[:3])
    assert np.allclose(a.T @ a, np.eye(3), atol=1e-6)  # the resampled grid is orthogonal
    assert img.shape == (512, 512, 4) and np.isclose(img.header.get_zooms()[2], 5 * np.cos(np.radians(14)), atol=1e-3)


def test_gantry_tilt_resampling_puts_each_voxel_where_its_affine_says(tmp_path):
    """A tilted stack of a linear function of world position: after resampling, every interior
    voxel holds the function at the world point the (orthogonal) affine gives it."""
    tilt = np.radians(20)
    r, c = np.array([1.0, 0, 0]), np.array([0, np.cos(tilt), -np.sin(tilt)])
    nx, ny, nz, dz = 40, 36, 6, 3.0
    p0 = np.array([-20.0, -15.0, 10.0])
    positions = np.array([p0 + [0, 0, k * dz] for k in range(nz)])
    f = lambda lps: 2.0 * lps[..., 0] - 3.0 * lps[..., 1] + 5.0 * lps[..., 2]  # noqa: E731
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    vol = np.stack([f(positions[k] + ii[..., None] * r + jj[..., None] * c) for k in range(nz)], -1)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = np.diag([-1, -1, 1]) @ r, np.diag([-1, -1, 1]) @ c
    write_series(vol, affine, tmp_path / "tilted", "tilted CT", "1.2.3", "1.2.3.4", positions=positions, slope=0.01,
                 intercept=0.0)
    with pytest.raises(DicomSeriesError, match="gantry tilt"):
        find_dicom_cases(tmp_path / "tilted", ["CT"])
    (case,) = find_dicom_cases(tmp_path / "tilted", ["CT"], gantry_tilt="resample")
    loaded = case.load()
    A = loaded.affine
    assert abs(A[:3, 0] @ A[:3, 2]) < 1e-9 and abs(A[:3, 1] @ A[:3, 2]) < 1e-9  # orthogonal grid
    i, j, k = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    world = (A @ np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1))[:3].T
    expected = f(world * [-1, -1, 1]).reshape(nx, ny, nz)
    shift = np.ceil(np.abs(case.reference.inplane_shifts()).max()).astype(int) + 1
    inner = (slice(None), slice(shift, ny - shift), slice(None))
    assert np.abs(loaded.image[0][inner] - expected[inner]).max() < 0.02  # stored at 0.01 steps
    assert np.abs(loaded.image[0] - expected).max() > 1  # the border really left the acquired slices


def _study(tmp_path: Path, descriptions: list[str], shape=(12, 10, 5), shifted: int | None = None) -> Path:
    root = tmp_path / "study"
    rng = np.random.default_rng(0)
    for n, desc in enumerate(descriptions):
        affine = np.diag([-1.0, -1.0, 2.0, 1.0])
        if shifted == n:
            affine[2, 3] = 7.0
        write_series(rng.integers(0, 500, shape).astype(float), affine, root / f"s{n}", desc, "1.2.826.1", "1.2.826.1.1", n + 1)
    return root


def test_series_rules_map_a_studys_series_to_the_models_channels(tmp_path):
    root = _study(tmp_path, ["AX T2 FLAIR", "T1 SE", "T1 post Gd", "T2 TSE", "localizer"])
    (case,) = find_dicom_cases(root, ["flair", "t1", "t1ce", "t2"])
    assert {m: s.description for m, s in case.channels.items()} == {
        "flair": "AX T2 FLAIR", "t1": "T1 SE", "t1ce": "T1 post Gd", "t2": "T2 TSE"}
    loaded = case.load(["flair", "t1", "t1ce", "t2"])
    assert loaded.image.shape == (4, 12, 10, 5) and loaded.modalities == ("flair", "t1", "t1ce", "t2")
    (case,) = find_dicom_cases(root, ["a", "b"], series=["a=*flair*", "b=t1 se,xyz"])
    assert [s.description for s in case.channels.values()] == ["AX T2 FLAIR", "T1 SE"]
    skipped: dict[str, str] = {}
    assert find_dicom_cases(root, ["a", "b"], series="a=*tse*;b=nothing*", skipped=skipped) == []
    assert "no series matches channel b" in next(iter(skipped.values()))
    with pytest.raises(DataError, match="3 series match channel a"):
        find_dicom_cases(root, ["a", "b"], series=["a=t*", "b=*flair*"])  # 'T1 SE', 'T1 post Gd', 'T2 TSE'... three match
    with pytest.raises(ConfigError, match="no series rule for channel"):
        find_dicom_cases(root, ["flair", "adc"])
    with pytest.raises(ConfigError, match="channel=PATTERN"):
        find_dicom_cases(root, ["a"], series=["a*flair*"])


def test_channels_must_share_one_grid(tmp_path):
    root = _study(tmp_path, ["FLAIR", "T1", "T1 post Gd", "T2"], shifted=2)
    (case,) = find_dicom_cases(root, ["flair", "t1", "t1ce", "t2"])
    with pytest.raises(DicomSeriesError, match="channel t1ce is not on the grid of channel flair"):
        case.load()


def test_non_image_files_and_mixed_sizes(tmp_path):
    root = _study(tmp_path, ["T1"])
    (root / "notes.txt").write_text("not DICOM")
    series, others = scan_series(root)
    assert len(series) == 1 and [p.name for p in others] == ["notes.txt"]
    first = sorted((root / "s0").glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.Rows, ds.PixelData = 8, ds.PixelData[: 8 * 12 * 2]
    ds.save_as(first)
    with pytest.raises(DicomSeriesError, match=r"mixed image sizes \(rows x columns\): 8x12, 10x12"):
        find_dicom_cases(root, ["T1"])
    sr = pydicom.Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = "1.2.3.9"
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SeriesInstanceUID, sr.StudyInstanceUID, sr.Modality = "1.2.3.99", "1.2.826.1", "SR"
    (tmp_path / "sr").mkdir()
    sr.save_as(tmp_path / "sr" / "report.dcm", enforce_file_format=True)
    with pytest.raises(DicomSeriesError, match="is not an image storage class"):
        find_dicom_cases(tmp_path / "sr", ["image"])


def _run_predict(args: list[str]) -> int:
    from pdeseg.cli import main

    return main([*args, "--device", "cpu", "--precision", "32", "--no-progress"])


@pytest.mark.shared_data
def test_brats_case_as_dicom_series_gives_the_nifti_paths_labels_as_dicom_seg(tmp_path):
    from pdeseg.data.readers.brats import CONVENTIONS

    src = shared_data("brats2018") / "Brats18_2013_11_1"
    case_dir = tmp_path / "nifti" / src.name
    case_dir.mkdir(parents=True)
    for m in ("flair", "t1", "t1ce", "t2"):  # the 40 slices through the tumour's middle (z 60-99), to keep the test fast
        img = nib.load(src / f"{src.name}_{m}.nii.gz")
        nib.save(img.slicer[:, :, 60:100], case_dir / f"{src.name}_{m}.nii.gz")
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet", 2, dict(
        format="brats", modalities=["flair", "t1", "t1ce", "t2"], normalization="zscore", mode="slices", spatial_dims=2,
        num_classes=4, class_names=["background", "NCR", "ED", "ET"], regions={"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}), 4)
    dicom = tmp_path / "dicom"
    sop_to_k = {}
    for n, (m, desc) in enumerate({"flair": "Ax FLAIR", "t1": "Ax T1 SE", "t1ce": "Ax T1 post-Gd", "t2": "Ax T2 FSE"}.items()):
        img = nib.load(case_dir / f"{src.name}_{m}.nii.gz")
        uids = write_series(np.asanyarray(img.dataobj).astype(float), img.affine, dicom / m, desc, "1.2.826.0.1.5",
                            "1.2.826.0.1.5.1", n + 1)
        if m == "flair":
            sop_to_k, flair_series = uids, pydicom.dcmread(next((dicom / m).glob("*.dcm"))).SeriesInstanceUID
    assert _run_predict(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "nifti"), "--output",
                         str(tmp_path / "out_nifti")]) == 0
    assert _run_predict(["predict", "--checkpoint", str(ckpt), "--input", str(dicom), "--output",
                         str(tmp_path / "out_dicom"), "--output-format", "both"]) == 0
    values = np.asanyarray(nib.load(tmp_path / "out_nifti" / f"{src.name}_seg.nii.gz").dataobj)
    classes = np.searchsorted(CONVENTIONS["brats2020"], values)  # label values 0, 1, 2, 4 -> classes 0..3
    (seg_path,) = (tmp_path / "out_dicom").glob("*.seg.dcm")
    seg, masks = read_seg_masks(seg_path, sop_to_k, values.shape)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["NCR", "ED", "ET"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence] == ["Necrosis", "Edema", "Neoplasm"]
    present = 0
    for s in range(3):
        assert np.array_equal(masks[s] > 0, classes == s + 1)
        present += bool((classes == s + 1).any())
    assert present >= 2  # the random model does predict tumour classes: the comparison is not of empty masks
    assert seg.StudyInstanceUID == "1.2.826.0.1.5" and seg.FrameOfReferenceUID == "1.2.826.0.1.5.1"
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == flair_series
    assert {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence} == set(sop_to_k)
    nifti = nib.load(next((tmp_path / "out_dicom").glob("*_seg.nii.gz")))
    assert np.array_equal(np.asanyarray(nifti.dataobj), classes) and np.allclose(nifti.affine, nib.load(case_dir / f"{src.name}_flair.nii.gz").affine, atol=1e-4)


@pytest.mark.shared_data
def test_hippocampus_case_as_dicom_series_binary_and_fractional_seg(tmp_path):
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    task = shared_data("msd_hippocampus") / "Task04_Hippocampus"
    (tmp_path / "task" / "imagesTs").mkdir(parents=True)
    shutil.copy(task / "dataset.json", tmp_path / "task")
    shutil.copy(task / "imagesTr" / "hippocampus_001.nii.gz", tmp_path / "task" / "imagesTs")
    names = json.loads((task / "dataset.json").read_text())["labels"]
    class_names = [names[str(k)] for k in range(len(names))]
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet3d", 3, dict(
        format="msd", modalities=["MRI"], normalization="zscore", mode="patches", spatial_size=[24, 24, 24], spatial_dims=3,
        num_classes=3, class_names=class_names), 1, seed=1)
    img = nib.load(tmp_path / "task" / "imagesTs" / "hippocampus_001.nii.gz")
    sop_to_k = write_series(np.asanyarray(img.dataobj).astype(float), img.affine, tmp_path / "dicom" / "hippo", "T1 MPRAGE",
                            "1.2.826.0.1.6", "1.2.826.0.1.6.1")
    assert _run_predict(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "task" / "imagesTs"),
                         "--output", str(tmp_path / "out_nifti")]) == 0
    classes = np.asanyarray(nib.load(tmp_path / "out_nifti" / "hippocampus_001.nii.gz").dataobj)
    assert len(np.unique(classes)) == 3
    assert _run_predict(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "dicom"), "--output",
                         str(tmp_path / "out_bin")]) == 0
    seg, masks = read_seg_masks(tmp_path / "out_bin" / "hippo.seg.dcm", sop_to_k, classes.shape)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == class_names[1:]
    for s in range(2):
        assert np.array_equal(masks[s] > 0, classes == s + 1)
    assert _run_predict(["predict", "--checkpoint", str(ckpt), "--input", str(tmp_path / "dicom"), "--output",
                         str(tmp_path / "out_frac"), "--seg-type", "fractional"]) == 0
    seg, fractions = read_seg_masks(tmp_path / "out_frac" / "hippo.seg.dcm", sop_to_k, classes.shape)
    assert seg.SegmentationType == "FRACTIONAL"
    predictor = Predictor.from_checkpoint(ckpt, InferenceOptions(device="cpu", precision="32", backend="auto"))  # predict's
    (case,) = find_dicom_cases(tmp_path / "dicom", ["MRI"])
    probs = predictor.predict_case(case, with_probabilities=True)[1].probabilities
    assert np.abs(fractions - probs[1:]).max() <= 0.5 / 255 + 1e-6  # stored as round(255 p)
    assert fractions.max() > 0.5


@pytest.mark.shared_data
def test_python_api_reads_dicom_series():
    import pdeseg

    root = shared_data("dicom_series")
    (loaded,) = pdeseg.read_dicom(root / "siemens_multiframe" / "anatomical" / "001")
    ref = nib.load(root / "siemens_multiframe" / "anatomical" / "001_ground_truth.nii.gz")
    assert loaded.image.shape == (1, 256, 256, 8) and np.abs(loaded.affine - ref.affine).max() < 1e-4
    with pytest.raises(DataError, match="too few slices"):
        pdeseg.read_dicom(root / "failing" / "slicecount" / "001")
