"""One front door for prediction (issue 34): :func:`pdeseg.data.detect.route_input` sends each
input to its reader by the formats' own markers, for ``pdeseg predict``, ``predict_folder``
and :class:`pdeseg.Segmenter`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pdeseg.config import TaskSpec
from pdeseg.data.detect import Route, route_input
from pdeseg.data.phantoms.brats import write_phantom_dataset
from pdeseg.data.phantoms.cells import make_cell_image
from pdeseg.errors import DataError


def _ome_tiff(path: Path, grey: np.ndarray, px_um: float = 0.65) -> Path:
    md = {"axes": "CYX", "PhysicalSizeX": px_um, "PhysicalSizeY": px_um, "PhysicalSizeXUnit": "µm",
          "PhysicalSizeYUnit": "µm", "Channel": {"Name": ["DAPI"]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(grey[None], tile=(64, 64), metadata=md)
    return path


def test_a_nifti_folder_goes_to_its_layout_or_to_the_model_s_format(tmp_path):
    write_phantom_dataset(tmp_path / "brats", n_cases=1, seed=0, shape=(16, 16, 16))
    assert route_input(tmp_path / "brats") == Route("brats", "folder")
    assert route_input(tmp_path / "brats", "msd") == ("msd", "folder")  # the model's own format reads it
    nifti = next((tmp_path / "brats").rglob("*_flair.nii*"))
    assert route_input(nifti, "brats") == ("brats", "file")
    with pytest.raises(DataError, match="no such file or folder"):
        route_input(tmp_path / "missing")


def test_a_dicom_series_folder_goes_to_the_dicom_reader_for_any_model(tmp_path):
    from dicom_writer import write_series

    write_series(np.arange(4 * 5 * 3, dtype=float).reshape(4, 5, 3), np.diag([1.0, 1.0, 2.0, 1.0]),
                 tmp_path / "study" / "t1", "T1", "1.2.3", "1.2.3.4")
    assert route_input(tmp_path / "study", "brats") == ("dicom", "folder")
    assert route_input(tmp_path / "study") == ("dicom", "folder")
    assert route_input(next((tmp_path / "study" / "t1").iterdir()), "msd") == ("dicom", "file")


def test_an_ome_tiff_file_and_a_folder_of_them_go_to_tiled_prediction(tmp_path):
    grey = (make_cell_image("round", np.random.default_rng(0), (96, 128))[0]).astype(np.uint16)
    image = _ome_tiff(tmp_path / "in" / "img.ome.tif", grey)
    assert route_input(image, "cell_folder") == ("ome", "image")
    assert route_input(tmp_path / "in") == ("ome", "folder")


def test_a_png_folder_goes_to_the_microscopy_folder_reader(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (tmp_path / "cells" / sub).mkdir(parents=True)
    image, instances = make_cell_image("round", rng, (64, 64))[:2]
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(tmp_path / "cells" / "images" / "a.png")
    Image.fromarray(((instances > 0) * 255).astype(np.uint8)).save(tmp_path / "cells" / "masks" / "a.png")
    assert route_input(tmp_path / "cells") == ("cell_folder", "folder")
    assert route_input(tmp_path / "cells" / "images" / "a.png", "cell_folder") == ("cell_folder", "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("no known layout")
    assert route_input(tmp_path / "other") == (None, "folder")  # no model format given, and the layout names none


class _Pointwise(torch.nn.Module):
    """A 'network' whose output at a pixel depends on that pixel alone."""

    def forward(self, x):
        v = x[:, :1]
        return torch.cat([-v * 8, 4 - (v - 1.2).abs() * 8, 4 - (v - 0.25).abs() * 16], 1)


def test_segmenter_reads_an_ome_tiff_file_as_it_reads_the_same_pixels_in_memory(tmp_path):
    from pdeseg.api import Segmenter
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    spec = TaskSpec(format="cell_folder", modalities=["grey"], class_names=["background", "interior", "boundary"],
                    num_classes=3, normalization="zscore_all", mode="slices", spatial_dims=2, spatial_size=[64, 64])
    seg = Segmenter(Predictor(_Pointwise(), spec, torch.device("cpu"), InferenceOptions(device="cpu", precision="32")))
    grey = (make_cell_image("round", np.random.default_rng(2), (96, 128))[0]).astype(np.uint16)
    path = _ome_tiff(tmp_path / "img.ome.tif", grey)
    loaded = seg.read(path)
    assert loaded.image.shape == (1, 96, 128, 1) and loaded.case.case_id == "img.ome.tif"
    from_file = seg.predict(path)
    from_array = seg.predict(grey[None].astype(np.float32))
    assert from_file.shape == (96, 128, 1) and from_file.max() > 0
    np.testing.assert_array_equal(from_file[..., 0], from_array)
    with pytest.raises(DataError, match="holds 1 OME image"):
        seg.read(tmp_path)
