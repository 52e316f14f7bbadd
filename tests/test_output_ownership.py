"""Probes of issue 32: pdeseg never destroys what it did not write.

* ``predict --labels-name`` on an OME-Zarr input is one plain name: an empty name, ``.``,
  ``..``, ``../0`` or ``x/manual`` is refused in one line, with or without ``--overwrite``;
* ``--overwrite`` replaces only a label layer pdeseg wrote (its marker), never someone else's;
* ``fingerprint --json`` and ``plan --out`` refuse an existing file without ``--overwrite``, and
  never write into the data set (its own ``dataset.json`` survives every combination);
* a scratch folder left by a killed tiled run is reclaimed by the next run, and a run's
  scratch never lands beside the input image.

Each refusal: exit 2, one error line naming the option or file, every input file's checksum
unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from pdeseg.cli import main


def checksums(folder: Path) -> dict[str, str]:
    """Every path below ``folder`` -> the SHA-256 of its bytes ("dir" for folders)."""
    return {str(p.relative_to(folder)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))}


def run(argv, caplog) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main([str(a) for a in argv])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def refused_unchanged(argv, caplog, watch: Path, *names: str) -> str:
    """Exit 2, one error line naming ``names``, and ``watch`` byte for byte as before."""
    before = checksums(watch)
    code, errors = run(argv, caplog)
    assert code == 2, (code, errors)
    assert len(errors) == 1, errors
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert checksums(watch) == before
    return errors[0]


def _zarr_with_manual_labels(path: Path) -> Path:
    """A one-channel OME-Zarr image with someone else's label layer ``labels/manual``."""
    from ome_zarr.writer import write_image, write_labels

    from pdeseg.data.phantoms.cells import make_cell_image

    grey = make_cell_image("round", np.random.default_rng(3), (96, 96))[0].astype(np.uint16)
    root = zarr.open_group(str(path), mode="w")
    write_image(grey[None], root, axes="cyx", scale_factors=(), storage_options={"chunks": (1, 48, 48)},
                omero={"channels": [{"label": "DAPI", "color": "FFFFFF", "active": True,
                                     "window": {"start": 0, "end": 65535, "min": 0, "max": 65535}}]})
    write_labels((grey > grey.mean()).astype(np.uint8), root, name="manual", axes="yx", scale_factors=())
    assert (path / "labels" / "manual").is_dir() and (path / "s0").is_dir()
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    return _zarr_with_manual_labels(tmp_path / "data" / "img.ome.zarr")


def _predict(ckpt: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "--checkpoint", ckpt, "--input", image, "--output", out, "--no-progress", "--no-postprocess",
            "--tile", "64", "--halo", "32", *extra]


@pytest.mark.parametrize("name", ["", ".", "..", "../s0", "x/manual", "labels/../..", ".hidden", "a\\b"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_labels_names_that_are_paths_are_refused(name, overwrite, cell_checkpoint, image, tmp_path, caplog):
    argv = _predict(cell_checkpoint, image, tmp_path / "out", "--labels-name", name, *(["--overwrite"] if overwrite else []))
    err = refused_unchanged(argv, caplog, image.parent, "--labels-name")
    assert not (tmp_path / "out").exists(), err


def test_overwrite_replaces_only_pdeseg_layers(cell_checkpoint, image, tmp_path, caplog):
    """Someone else's ``labels/manual`` survives every attempt; pdeseg's own layer is replaced
    with --overwrite, refused without it; no scratch folder is left anywhere."""
    refused_unchanged(_predict(cell_checkpoint, image, tmp_path / "o", "--labels-name", "manual"), caplog, image.parent,
                      "manual", "--overwrite")
    refused_unchanged(_predict(cell_checkpoint, image, tmp_path / "o", "--labels-name", "manual", "--overwrite"), caplog,
                      image.parent, "manual", "not written by pdeseg")
    manual = checksums(image / "labels" / "manual")
    assert run(_predict(cell_checkpoint, image, tmp_path / "o", "--labels-name", "mine"), caplog)[0] == 0
    assert zarr.open_group(str(image / "labels" / "mine")).attrs["pdeseg"]["written_by"].startswith("pdeseg")
    refused_unchanged(_predict(cell_checkpoint, image, tmp_path / "o", "--labels-name", "mine"), caplog, image.parent,
                      "mine", "--overwrite")
    assert run(_predict(cell_checkpoint, image, tmp_path / "o", "--labels-name", "mine", "--overwrite"), caplog)[0] == 0
    assert checksums(image / "labels" / "manual") == manual
    assert sorted(zarr.open_group(str(image / "labels")).attrs.asdict()["ome"]["labels"]) == ["manual", "mine"]
    leftovers = [p for p in tmp_path.rglob(".pdeseg-tiles-*")]
    assert not leftovers, leftovers


def test_ome_tiff_overwrite_refuses_a_file_pdeseg_did_not_write(cell_checkpoint, image, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "img_instances.ome.tif").write_bytes(b"someone else's results")
    argv = _predict(cell_checkpoint, image, out, "--ome-output", "tiff", "--overwrite")
    refused_unchanged(argv, caplog, tmp_path, "img_instances.ome.tif", "not written by pdeseg")
    (out / "img_instances.ome.tif").unlink()
    assert run(argv, caplog)[0] == 0
    assert run(argv, caplog)[0] == 0  # its own file: replaced with --overwrite


def test_tiff_output_inside_the_input_zarr_is_refused(cell_checkpoint, image, tmp_path, caplog):
    refused_unchanged(_predict(cell_checkpoint, image, image / "labels", "--ome-output", "tiff"), caplog, image.parent,
                      "--output", "inside the input")


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

    return write_msd_phantom_dataset(tmp_path_factory.mktemp("msd") / "Task", n_cases=4, seed=0, shape=(16, 16, 16))


@pytest.mark.parametrize("command,option", [("fingerprint", "--json"), ("plan", "--out")])
@pytest.mark.parametrize("target", ["dataset.json", "imagesTr", "new.json"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_fingerprint_and_plan_never_write_into_the_data_set(command, option, target, overwrite, msd, tmp_path, caplog):
    argv = [command, "--data", msd, option, msd / target, "--cache-dir", tmp_path / "cache", "--no-progress",
            *(["--overwrite"] if overwrite else [])]
    refused_unchanged(argv, caplog, msd, option, "inside the input")


@pytest.mark.parametrize("command,option,name", [("fingerprint", "--json", "fp.json"), ("plan", "--out", "plan.yaml")])
def test_fingerprint_and_plan_replace_only_their_own_file_and_only_with_overwrite(command, option, name, msd, tmp_path,
                                                                                caplog):
    out = tmp_path / name
    out.write_text("notes: someone else's\n")
    base = [command, "--data", msd, option, out, "--cache-dir", tmp_path / "cache", "--no-progress"]
    if command == "plan":
        base += ["--device", "cpu", "--time-budget", "1m"]
    refused_unchanged(base, caplog, tmp_path, str(out), "--overwrite")
    refused_unchanged(base + ["--overwrite"], caplog, tmp_path, str(out), "not written by pdeseg")
    out.unlink()
    assert run(base, caplog)[0] == 0
    refused_unchanged(base, caplog, tmp_path, str(out), "--overwrite")
    assert run(base + ["--overwrite"], caplog)[0] == 0


def test_a_killed_tiled_run_leaves_scratch_that_the_next_run_reclaims(tmp_path):
    """A scratch folder whose owner process is gone (here: a child that exited) is removed by
    the next run's :func:`make_scratch`; one of a live process is kept."""
    from pdeseg.inference.tiling.scratch import make_scratch

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / ".pdeseg-tiles-dead"
    dead.mkdir()
    (dead / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": int(child.stdout)}))
    live = make_scratch(tmp_path)
    assert not dead.exists() and live.is_dir()
    again = make_scratch(tmp_path)
    assert live.is_dir() and again.is_dir()  # this process is alive: its folders stay
