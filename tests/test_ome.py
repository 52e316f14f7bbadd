"""OME-TIFF / OME-Zarr in and out (pdeseg.data.readers.ome), predictions written as OME-TIFF and
as a labels group inside the input OME-Zarr (read back by ome-zarr), predict --shard i/n, and
the one-line refusals (exit 2): a channel the image lacks, no suitable pyramid level, a shard
index out of range."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from pdeseg.cli import main
from pdeseg.data.readers.ome import open_ome
from pdeseg.errors import DataError

PX = 0.65  # um


def _image(seed=0, shape=(3, 200, 300)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 60000, size=shape).astype(np.uint16)


def _write_tiff(path: Path, data: np.ndarray) -> Path:
    md = {"axes": "CYX", "PhysicalSizeX": PX, "PhysicalSizeY": PX, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm",
          "Channel": {"Name": ["DAPI", "GFP", "RFP"]}}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, tile=(64, 64), metadata=md, subifds=1)
        tw.write(data[:, ::2, ::2], tile=(64, 64), subfiletype=1)
    return path


def _write_zarr(path: Path, data: np.ndarray) -> Path:
    from ome_zarr.writer import write_image

    window = {"start": 0, "end": 65535, "min": 0, "max": 65535}
    root = zarr.open_group(str(path), mode="w")
    write_image(data, root, axes="cyx", scale_factors=(2,), scale={"c": 1.0, "y": PX, "x": PX},
                axes_units={"y": "micrometer", "x": "micrometer"}, storage_options={"chunks": (1, 64, 64)},
                omero={"channels": [{"label": n, "color": "FFFFFF", "window": window, "active": True}
                                    for n in ("DAPI", "GFP", "RFP")]})
    return path


@pytest.mark.parametrize("kind", ["tiff", "zarr"])
def test_round_trip_pixel_size_channels_and_levels(tmp_path, kind):
    data = _image()
    path = _write_tiff(tmp_path / "a.ome.tif", data) if kind == "tiff" else _write_zarr(tmp_path / "a.ome.zarr", data)
    ome = open_ome(path)
    assert ome.channel_names == ("DAPI", "GFP", "RFP") and ome.spatial_axes == "yx"
    assert len(ome.levels) == 2 and ome.levels[1].shape == (100, 150)
    np.testing.assert_allclose(ome.levels[0].pixel_size, (PX / 1000, PX / 1000))  # mm, like every pdeseg spacing
    np.testing.assert_allclose(ome.levels[1].pixel_size, (2 * PX / 1000, 2 * PX / 1000))
    chans = ome.channel_indices(["grey"], ["gfp"])  # by name, any case
    assert chans == [(1,)]
    np.testing.assert_array_equal(ome.read(0, chans, (slice(10, 70), slice(100, 190)))[0], data[1, 10:70, 100:190])
    level1 = ome.read(1, [(2,)])[0]
    assert level1.shape == (100, 150)
    if kind == "tiff":  # the writer here subsamples; ome-zarr's resizes with interpolation
        np.testing.assert_array_equal(level1, data[2, ::2, ::2])
    # the coarsest level as fine as the wanted pixel size (5% slack), never an upsampled one
    assert ome.choose_level(pixel_size=2 * PX / 1000) == 1
    assert ome.choose_level(pixel_size=1.9 * PX / 1000) == 0
    assert ome.choose_level(level=1) == 1
    with pytest.raises(DataError, match="no pyramid level is as fine"):
        ome.choose_level(pixel_size=0.5 * PX / 1000)
    with pytest.raises(DataError, match="no pyramid level 2; it has 2 level"):
        ome.choose_level(level=2)
    with pytest.raises(DataError, match="has no channel 'Cy5'; its channels are DAPI, GFP, RFP"):
        ome.channel_indices(["grey"], ["Cy5"])
    with pytest.raises(DataError, match="name the file channel"):
        ome.channel_indices(["grey"])


def _cells_image(seed: int, size=(256, 384)) -> np.ndarray:
    from pdeseg.data.phantoms.cells import make_cell_image

    return make_cell_image("round", np.random.default_rng(seed), size)[0]


def test_predictions_as_ome_tiff_and_as_labels_inside_the_ome_zarr(cell_checkpoint, tmp_path):
    """The same image as OME-TIFF and as OME-Zarr gives the same cells; the OME-Zarr gets a
    labels/pdeseg group with the image's pixel size that ome-zarr reads back as labels."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    grey = _cells_image(1)
    data = np.stack([grey, grey // 2, grey // 3]).astype(np.uint16)
    _write_tiff(tmp_path / "in" / "img.ome.tif", data) if (tmp_path / "in").mkdir() is None else None
    zpath = _write_zarr(tmp_path / "img.ome.zarr", data)
    common = ["predict", "--checkpoint", str(cell_checkpoint), "--no-progress", "--no-postprocess", "--channel", "DAPI",
              "--tile", "128", "--halo", "64"]
    assert main(common + ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "img_instances.ome.tif"
    tif = open_ome(out)
    np.testing.assert_allclose(tif.levels[0].pixel_size, (PX / 1000, PX / 1000))
    labels_tif = tifffile.imread(out)
    assert labels_tif.shape == grey.shape and labels_tif.max() > 5
    assert main(common + ["--input", str(zpath), "--output", str(tmp_path / "unused")]) == 0
    nodes = list(Reader(parse_url(str(zpath / "labels" / "pdeseg")))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    np.testing.assert_array_equal(np.asarray(label.data[0]), labels_tif)
    scale = label.metadata["coordinateTransformations"][0][0]["scale"]
    np.testing.assert_allclose(scale, [PX, PX])
    assert zarr.open_group(str(zpath / "labels")).attrs.asdict()["ome"]["labels"] == ["pdeseg"]
    # a second run refuses to replace it, in one line
    assert main(common + ["--input", str(zpath), "--output", str(tmp_path / "unused")]) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdeseg", *args], capture_output=True, text=True, timeout=300)


def test_bad_ome_input_and_shard_are_one_line_and_exit_2(cell_checkpoint, tmp_path):
    zpath = _write_zarr(tmp_path / "img.ome.zarr", _image(shape=(3, 96, 96)))
    base = ["predict", "--checkpoint", str(cell_checkpoint), "--input", str(zpath), "--output", str(tmp_path / "o"),
            "--no-progress", "--no-postprocess"]
    cases = {("--channel", "Cy5"): "has no channel 'Cy5'; its channels are DAPI, GFP, RFP",
             ("--channel", "DAPI", "--level", "4"): "no pyramid level 4; it has 2 level(s)",
             ("--shard", "4/4"): "shard index 4 is out of range for 4 shard(s); use 0..3"}
    for extra, message in cases.items():
        run = _cli(*base, *extra)
        errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
        assert run.returncode == 2 and len(errors) == 1 and message in errors[0], run.stderr[-2000:]
        assert "Traceback" not in run.stderr


def test_shards_together_write_what_one_run_writes(cell_checkpoint, tmp_path, caplog):
    """predict --shard i/n over n = 1, 2, 4 on a folder of 5 images: every file written once,
    the union equal (byte for byte) to the single run's outputs."""
    from PIL import Image

    folder = tmp_path / "cells"
    (folder / "images").mkdir(parents=True)
    for k in range(5):
        Image.fromarray(_cells_image(10 + k, (96, 96))).save(folder / "images" / f"img{k}.png")
    single = tmp_path / "single"
    opts = ["--checkpoint", str(cell_checkpoint), "--no-progress"]
    caplog.set_level(logging.WARNING)
    assert main(["predict", *opts, "--input", str(folder), "--output", str(single)]) == 0
    expected = {p.name: p.read_bytes() for p in single.iterdir()}
    assert len(expected) == 10  # a mask and an instance image per image
    for n in (1, 2, 4):
        seen: dict[str, bytes] = {}
        for i in range(n):
            out = tmp_path / f"n{n}_s{i}"
            assert main(["predict", *opts, "--input", str(folder), "--output", str(out), "--shard", f"{i}/{n}"]) == 0
            files = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else {}
            assert not set(files) & set(seen)  # no file written by two shards
            seen.update(files)
        assert seen == expected


def test_napari_reader_opens_pdeseg_outputs_with_their_scale(tmp_path):
    """The plugin's reader (no napari needed to call it): an instance OME-TIFF with its pixel
    size in um, a NIfTI prediction with its voxel size in mm; other files are declined."""
    import nibabel as nib

    from pdeseg.data.readers.ome import write_ome_tiff
    from pdeseg.napari_plugin._reader import get_reader

    labels = np.zeros((40, 50), np.uint32)
    labels[5:15, 5:20] = 7
    path = write_ome_tiff(tmp_path / "x_instances.ome.tif", iter([np.pad(labels, ((0, 8), (0, 14)))]), labels.shape,
                          labels.dtype, 64, pixel_size=(0.0005, 0.00025))
    [(data, meta, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels" and meta["scale"] == pytest.approx((0.5, 0.25))
    np.testing.assert_array_equal(data, labels)
    vol = np.zeros((6, 7, 8), np.uint8)
    vol[2:4, 2:4, 2:4] = 2
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.9, 2.5, 1.0])), tmp_path / "case_seg.nii.gz")
    [(data, meta, kind)] = get_reader(str(tmp_path / "case_seg.nii.gz"))(str(tmp_path / "case_seg.nii.gz"))
    assert meta["scale"] == pytest.approx((0.8, 0.9, 2.5)) and (data == vol).all()
    assert get_reader(str(tmp_path / "image.tif")) is None
