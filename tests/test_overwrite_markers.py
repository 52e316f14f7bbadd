"""Probes of issue 32, second pass: ``predict --overwrite`` on folder outputs replaces only
what pdeseg wrote.

* every predict output carries pdeseg's marker in its own metadata (NIfTI ``descrip``, PNG
  ``tEXt`` Software, TIFF Software tag, DICOM-SEG Manufacturer);
* ``--overwrite`` replaces pdeseg's own earlier output, and refuses (exit 2, one line naming
  the file) a user's own file of the same kind at an output path, and pdeseg's output corrected
  by hand and saved with its metadata (marker) kept: every file of the output folder keeps its
  checksum;
* a user's file saved at an output path while the run is going is not replaced either;
* two cases that would write one file (names that differ only in case included) are refused
  before anything is written, naming both cases;
* ``--input`` at the root of the DSB test layout (``stage1_test/<id>/images/<id>.png``) is read
  as that layout; a root with several stage folders names them.

Checkpoints are random tiny networks (no training): only the files matter here.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from pdeseg.cli import main
from pdeseg.data.outputs import written_by_pdeseg
from test_dicom import _tiny_checkpoint
from test_output_ownership import checksums

NOT_OURS = "was not written by pdeseg"


def _spec(fmt: str, modalities: list[str], class_names: list[str], normalization: str = "zscore") -> dict:
    return dict(format=fmt, modalities=modalities, normalization=normalization, mode="slices", spatial_dims=2,
                num_classes=len(class_names), class_names=class_names)


def _dsb_image(stage: Path, image_id: str, seed: int = 0) -> None:
    folder = stage / image_id / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(folder / f"{image_id}.png")


def _case(kind: str, tmp: Path, phantom_root: Path) -> tuple[Path, Path, list[str]]:
    """``(checkpoint, input, extra predict options)`` of one output kind."""
    ckpt = tmp / "m.pt"
    if kind == "brats-nifti":
        case = sorted(phantom_root.iterdir())[0]
        data = Path(shutil.copytree(case, tmp / "data" / case.name))
        spec = _spec("brats", ["flair", "t1", "t1ce", "t2"], ["background", "NCR", "ED", "ET"])
        return _tiny_checkpoint(ckpt, "unet", 2, spec, 4), data, []
    if kind == "msd-nifti":
        from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

        task = write_msd_phantom_dataset(tmp / "Task", n_cases=2, seed=0, shape=(16, 16, 16), n_test=1)
        spec = _spec("msd", ["MRI"], ["background", "Anterior", "Posterior"])
        return _tiny_checkpoint(ckpt, "unet", 2, spec, 1), task, []
    if kind.startswith("lgg-"):
        from pdeseg.data.phantoms.brats import write_lgg_phantom_dataset

        write_lgg_phantom_dataset(tmp / "lgg", n_cases=1, seed=1, shape=(32, 32, 16))
        spec = _spec("lgg", ["pre", "flair", "post"], ["background", "tumour"], "scale255")
        return _tiny_checkpoint(ckpt, "unet", 2, spec, 3), tmp / "lgg" / "kaggle_3m", ["--mask-format", kind[4:]]
    if kind == "dsb-png-tif":
        _dsb_image(tmp / "dsb" / "stage1_test", "a1")
        spec = _spec("dsb2018", ["grey"], ["background", "cell"], "zscore_all")
        return _tiny_checkpoint(ckpt, "unet", 2, spec, 1), tmp / "dsb" / "stage1_test", []
    assert kind == "dicom-seg"
    pytest.importorskip("highdicom")
    from test_dicom import _study

    spec = _spec("msd", ["MRI"], ["background", "tissue"])
    return _tiny_checkpoint(ckpt, "unet", 2, spec, 1), _study(tmp, ["T2 TSE"]), ["--output-format", "both"]


def _users_file(path: Path) -> None:
    """A file of the same kind as ``path``, made by hand (another tool), at ``path``."""
    name = path.name
    path.unlink()
    if name.endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), np.eye(4)), str(path))
    elif name.endswith(".png"):
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(path)
    elif name.endswith(".tif"):
        tifffile.imwrite(path, np.ones((8, 8), np.uint16))
    else:
        raise AssertionError(name)


def _corrected_copy(ours: Path, path: Path) -> None:
    """pdeseg's output ``ours`` corrected by hand (one pixel changed) and saved at ``path`` by a tool
    that keeps the file's metadata, pdeseg's marker included."""
    path.unlink()
    if path.name.endswith(".nii.gz"):
        img = nib.load(ours)
        data = np.asanyarray(img.dataobj).copy()
        data.flat[0] ^= 1
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
        assert bytes(nib.load(path).header["descrip"]).startswith(b"pdeseg")
    elif path.name.endswith(".png"):
        from PIL.PngImagePlugin import PngInfo

        with Image.open(ours) as img:
            data, info = np.asarray(img).copy(), PngInfo()
            info.add_text("Software", img.text["Software"])
        data.flat[0] ^= 1
        Image.fromarray(data).save(path, pnginfo=info)
    else:
        with tifffile.TiffFile(ours) as tif:
            data, software = tif.asarray().copy(), tif.pages.first.software
        data.flat[0] ^= 1
        tifffile.imwrite(path, data, software=software)
        assert software.startswith("pdeseg")


def _corrected_seg(ours: Path, path: Path) -> None:
    """A radiologist's corrected copy of pdeseg's SEG ``ours``, saved by another tool at ``path``."""
    import pydicom

    ds = pydicom.dcmread(ours)
    ds.Manufacturer, ds.ContentCreatorName, ds.SoftwareVersions = "3D Slicer", "Doe^Jane", "5.6"
    path.unlink()
    ds.save_as(path)


def _predict(ckpt, src, out, caplog, *extra) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out), "--device", "cpu",
                     "--no-progress", "--no-postprocess", *extra])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


KINDS = ["brats-nifti", "msd-nifti", "lgg-png", "lgg-tif", "dsb-png-tif", "dicom-seg"]


@pytest.mark.parametrize("kind", KINDS)
def test_overwrite_replaces_pdeseg_outputs_and_never_a_users_file(kind, phantom_root, tmp_path, caplog):
    ckpt, src, extra = _case(kind, tmp_path, phantom_root)
    out = tmp_path / "out"
    assert _predict(ckpt, src, out, caplog, *extra)[0] == 0
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files and all(written_by_pdeseg(f) for f in files), [f for f in files if not written_by_pdeseg(f)]

    inodes = {f: f.stat().st_ino for f in files}  # pdeseg's own outputs are replaced (renamed over)
    assert _predict(ckpt, src, out, caplog, "--overwrite", *extra)[0] == 0
    assert all(f.stat().st_ino != inodes[f] for f in files)

    kinds = {"".join(f.suffixes[-2:]) if f.name.endswith(".nii.gz") else f.suffix: f for f in files}
    for target in kinds.values():  # one file of each kind: someone's own, or pdeseg's corrected by hand
        ours = tmp_path / "ours" / target.name
        ours.parent.mkdir(exist_ok=True)
        shutil.copy2(target, ours)
        makers = [_corrected_seg] if target.name.endswith(".dcm") else [lambda _, t: _users_file(t), _corrected_copy]
        for make in makers:
            make(ours, target)
            assert not written_by_pdeseg(target)
            before = checksums(out)
            code, errors = _predict(ckpt, src, out, caplog, "--overwrite", *extra)
            assert code == 2, (target, make, errors)
            assert len(errors) == 1 and str(target) in errors[0] and NOT_OURS in errors[0], errors
            assert checksums(out) == before  # the user's file and every other output untouched
            shutil.copy2(ours, target)  # back to pdeseg's own
    assert _predict(ckpt, src, out, caplog, "--overwrite", *extra)[0] == 0


def test_two_cases_writing_one_file_are_refused_before_anything_is_written(tmp_path, caplog):
    for image_id, seed in (("Nucleus7", 0), ("nucleus7", 1)):  # one file on macOS, Windows, SMB shares
        _dsb_image(tmp_path / "dsb" / "stage1_test", image_id, seed)
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet", 2, _spec("dsb2018", ["grey"], ["background", "cell"], "zscore_all"), 1)
    code, errors = _predict(ckpt, tmp_path / "dsb" / "stage1_test", tmp_path / "out", caplog)
    assert code == 2 and len(errors) == 1, errors
    assert "Nucleus7" in errors[0] and "nucleus7" in errors[0] and "two cases" in errors[0], errors[0]
    assert not (tmp_path / "out").exists()


def test_check_distinct_names_both_cases(tmp_path):
    from pdeseg.data.outputs import check_distinct
    from pdeseg.errors import RunFolderError

    check_distinct({"a": [tmp_path / "a.png"], "b": [tmp_path / "b.png"]})
    with pytest.raises(RunFolderError, match=r"written for two cases, a and b"):
        check_distinct({"a": [tmp_path / "x.png"], "b": [tmp_path / "sub" / ".." / "x.png"]})


def test_the_root_of_the_dsb_test_layout_is_read_as_that_layout(tmp_path, caplog):
    root = tmp_path / "dsb2018"
    _dsb_image(root / "stage1_test", "0a7d30b2")
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet", 2, _spec("dsb2018", ["grey"], ["background", "cell"], "zscore_all"), 1)
    assert _predict(ckpt, root, tmp_path / "out", caplog) == (0, [])
    assert (tmp_path / "out" / "0a7d30b2_mask.png").is_file()

    _dsb_image(root / "stage2_test_final", "1b2c")  # several stages, none of them stage1_train: which one?
    before = checksums(root)
    code, errors = _predict(ckpt, root, tmp_path / "out2", caplog)
    assert code == 2 and len(errors) == 1, errors
    assert "stage1_test, stage2_test_final" in errors[0] and "pass the one to read" in errors[0], errors[0]
    assert checksums(root) == before and not (tmp_path / "out2").exists()


def test_a_folder_of_dsb_image_folders_below_the_input_is_named(tmp_path, caplog):
    root = tmp_path / "download"
    _dsb_image(root / "test", "0a7d30b2")  # one level too high: download/test/<id>/images
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet", 2, _spec("dsb2018", ["grey"], ["background", "cell"], "zscore_all"), 1)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code = main(["predict", "--checkpoint", str(ckpt), "--input", str(root), "--output", str(tmp_path / "out"),
                     "--device", "cpu", "--no-progress"])
    assert code == 2
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{root / 'test'} is a folder of DSB image folders" in text and "pass" in text, text
    assert "missing images/ folder" not in text


def test_a_users_file_saved_at_an_output_path_during_the_run_survives(tmp_path, caplog, monkeypatch):
    from pdeseg.inference.predict import Predictor

    _dsb_image(tmp_path / "dsb" / "stage1_test", "a1")
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet", 2, _spec("dsb2018", ["grey"], ["background", "cell"], "zscore_all"), 1)
    target = tmp_path / "out" / "a1_mask.png"
    segment = Predictor.predict_case

    def meanwhile(self, case, *args, **kwargs):  # after the outputs were checked, before they are written
        result = segment(self, case, *args, **kwargs)
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(target)
        return result

    monkeypatch.setattr(Predictor, "predict_case", meanwhile)
    code, errors = _predict(ckpt, tmp_path / "dsb" / "stage1_test", tmp_path / "out", caplog)
    assert code == 2 and len(errors) == 1 and str(target) in errors[0] and NOT_OURS in errors[0], errors
    assert np.array_equal(np.asarray(Image.open(target)), np.full((8, 8), 255, np.uint8))


def test_two_ome_images_writing_one_file_are_refused_naming_both(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("slide1.ome.tif", "Slide1.ome.tif"):  # one output name on a file system that ignores case
        tifffile.imwrite(images / name, rng.integers(0, 255, (64, 64), dtype=np.uint8), ome=True, metadata={"axes": "YX"})
    ckpt = _tiny_checkpoint(tmp_path / "m.pt", "unet", 2, _spec("livecell", ["grey"], ["background", "cell"], "zscore_all"), 1)
    before = checksums(images)
    code, errors = _predict(ckpt, images, tmp_path / "out", caplog, "--tile", "64", "--halo", "32")
    assert code == 2 and len(errors) == 1, errors
    assert "slide1.ome.tif" in errors[0] and "Slide1.ome.tif" in errors[0] and "two images" in errors[0], errors[0]
    assert checksums(images) == before and not (tmp_path / "out").exists()
