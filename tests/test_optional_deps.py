"""Optional dependencies (issue 34 item 7): the packages only one surface uses are extras
(``ome``, ``distributed``, ``deploy``); the base surfaces never import them, and a missing one
is reported in one line naming ``pip install 'pdeseg[<extra>]'`` (exit code 2 at the CLI).

A missing package is simulated with ``sys.modules[name] = None``, which makes ``import name``
fail as it does where the package is not installed."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pdeseg._optional import EXTRAS, MissingExtraError, require
from pdeseg.errors import PdesegError

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("zarr", "ome_zarr", "dask", "distributed", "onnx", "onnxruntime", "napari")


def _block(monkeypatch, *names: str) -> None:
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line(exc: BaseException, extra: str) -> str:
    text = str(exc)
    assert "\n" not in text and f"pip install 'pdeseg[{extra}]'" in text, text
    return text


def test_require_returns_the_module_and_names_the_extra_when_it_is_missing(monkeypatch):
    import json

    assert require("json", extra="ome", feature="x") is json
    _block(monkeypatch, "ome_zarr")
    with pytest.raises(MissingExtraError) as err:
        require("zarr", "ome_zarr.io", extra="ome", feature="reading OME-Zarr")
    assert str(err.value) == "reading OME-Zarr needs ome-zarr, which is not installed: pip install 'pdeseg[ome]'"
    assert isinstance(err.value, PdesegError) and isinstance(err.value, ImportError)
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", extra="nope", feature="x")


def test_a_package_that_is_there_but_broken_is_named_with_its_reason(monkeypatch, tmp_path):
    (tmp_path / "pdeseg_broken_pkg.py").write_text("import pdeseg_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError) as err:
        require("pdeseg_broken_pkg", extra="ome", feature="reading OME-Zarr")
    assert "cannot be imported (ModuleNotFoundError" in _one_line(err.value, "ome")


def test_the_extras_in_pyproject_match_the_helper_and_test_installs_them_all():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(meta["dependencies"])
    extras = meta["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        for package in packages:
            assert any(r.startswith(package) for r in extras[extra]), (extra, package)
            assert package.split("[")[0] not in base.split(), f"{package} is both in the base and in [{extra}]"
    assert {"ome", "distributed", "deploy"} <= set(extras["test"][1].split("[")[1].rstrip("]").split(","))
    assert {"ome", "distributed", "deploy", "napari"} <= set(extras["all"][0].split("[")[1].rstrip("]").split(","))


def test_the_base_surfaces_import_none_of_the_extras():
    """``import pdeseg`` and the modules behind train / predict / evaluate / demo / export import
    no optional package (they are imported inside the functions that need them), and the CLI's
    help runs with all of them blocked."""
    blocked = ", ".join(repr(m) for m in HEAVY)
    code = (
        f"import sys\nfor m in ({blocked},): sys.modules[m] = None\n"
        "import pdeseg, pdeseg.cli, pdeseg.api, pdeseg.inference.predict, pdeseg.inference.evaluate, "
        "pdeseg.inference.export, pdeseg.inference.tiling, pdeseg.inference.ome_predict, pdeseg.data.readers.ome, "
        "pdeseg.data.phantoms.mosaic, pdeseg.training.trainer\n"
        "from pdeseg.cli import main\n"
        "for argv in (['--help'], ['demo', '--help'], ['predict', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
        "print('BASE-OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and "BASE-OK" in out.stdout, out.stderr[-3000:]


def _ome_tiff(path: Path) -> Path:
    import tifffile

    tifffile.imwrite(path, np.zeros((4, 32, 32), np.uint16), ome=True, metadata={"axes": "CYX"})
    return path


def test_reading_and_writing_ome_without_the_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    from pdeseg.data.readers.ome import open_ome, write_ome_zarr_labels

    image = _ome_tiff(tmp_path / "a.ome.tif")
    folder = tmp_path / "b.ome.zarr"
    folder.mkdir()
    (folder / "zarr.json").write_text("{}")
    _block(monkeypatch, "zarr", "ome_zarr", "dask")
    with pytest.raises(MissingExtraError) as err:  # not a DataError saying the file is broken
        open_ome(image)
    assert _one_line(err.value, "ome").startswith("reading OME-TIFF needs zarr")
    with pytest.raises(MissingExtraError, match=r"reading OME-Zarr needs zarr"):
        open_ome(folder)
    with pytest.raises(MissingExtraError, match=r"writing OME-Zarr needs zarr.*pdeseg\[ome\]"):
        write_ome_zarr_labels(folder, "cells", np.zeros((32, 32), np.uint8), None)


def test_predict_on_ome_without_the_extra_exits_2_with_one_line(monkeypatch, tmp_path, caplog):
    from pdeseg.cli import main

    image = _ome_tiff(tmp_path / "a.ome.tif")
    _block(monkeypatch, "zarr", "ome_zarr", "dask")
    with caplog.at_level(logging.ERROR):
        code = main(["predict", "--checkpoint", str(tmp_path / "best.pt"), "--input", str(image), "--output", str(tmp_path / "out")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 2 and len(errors) == 1, errors
    assert "predicting on OME-TIFF needs zarr" in _one_line(errors[0], "ome")
    assert not (tmp_path / "out").exists()


def test_dask_without_distributed_names_its_extra(monkeypatch):
    from pdeseg.inference.tiling import DaskRunner

    _block(monkeypatch, "distributed")
    with pytest.raises(MissingExtraError) as err:
        DaskRunner(1)
    assert "--dask-workers" in _one_line(err.value, "distributed")


def test_tiled_prediction_without_zarr_names_the_ome_extra(monkeypatch, tmp_path):
    from test_export import _checkpoint

    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor
    from pdeseg.inference.tiling import predict_tiled

    predictor = Predictor.from_checkpoint(_checkpoint(tmp_path / "best.pt"), InferenceOptions(device="cpu", backend="torch"))
    _block(monkeypatch, "zarr")
    with pytest.raises(MissingExtraError) as err:
        predict_tiled(None, np.zeros((4, 64, 64), np.float32), predictor=predictor, scratch_dir=tmp_path / "scratch", progress=False)
    assert "tiled prediction" in _one_line(err.value, "ome")
    assert not (tmp_path / "scratch").exists() or not any((tmp_path / "scratch").iterdir())


def test_backend_auto_without_onnxruntime_keeps_pytorch_and_says_why(monkeypatch, tmp_path, caplog):
    from test_export import _checkpoint

    from pdeseg.inference import backend as backend_module
    from pdeseg.inference.export import OnnxRuntimeModel
    from pdeseg.inference.options import InferenceOptions
    from pdeseg.inference.predict import Predictor

    checkpoint = _checkpoint(tmp_path / "best.pt")
    monkeypatch.setattr(backend_module, "_LOGGED", set())
    _block(monkeypatch, "onnx", "onnxruntime")
    with caplog.at_level(logging.INFO, logger="pdeseg.inference.backend"):
        predictor = Predictor.from_checkpoint(checkpoint, InferenceOptions(device="cpu", precision="32", backend="auto"))
    assert not isinstance(predictor.model, OnnxRuntimeModel)
    said = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    assert len(said) == 1 and "not installed (pip install 'pdeseg[deploy]')" in said[0], said
