"""Probes of issue 32: inputs that gave a traceback (or an internal message) now give one line
that names the option or file, exit 2, and leave the inputs unchanged; a tile larger than the
image is cut to the image instead of allocating memory for its full size."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import pdeseg
from pdeseg.errors import ConfigError
from test_output_ownership import _predict, _zarr_with_manual_labels, checksums, refused_unchanged, run


@pytest.fixture
def image(tmp_path) -> Path:
    return _zarr_with_manual_labels(tmp_path / "data" / "img.ome.zarr")


def test_create_model_with_negative_channels_is_a_config_error():
    with pytest.raises(ConfigError, match="in_channels must be a whole number >= 1, got -1"):
        pdeseg.create_model("unet", in_channels=-1)


@pytest.mark.parametrize("extra,names", [(["--halo", "0"], ["--halo", "at least 16"]),
                                         (["--dask-scheduler", "not an address"], ["--dask-scheduler", "not an address"])])
def test_tiled_options_are_one_line(extra, names, cell_checkpoint, image, tmp_path, caplog):
    argv = _predict(cell_checkpoint, image, tmp_path / "out", "--labels-name", "p")
    argv = [a for a in argv if a not in ("--halo", "32")] + extra
    refused_unchanged(argv, caplog, image.parent, *names)


def _address_space(limit: int):
    def set_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return set_limit


def test_a_tile_larger_than_the_image_is_cut_to_it(cell_checkpoint, image, tmp_path):
    """Run in a child process held to 6 GiB of address space, so that a regression (a 37 GiB
    tile) fails here with a MemoryError instead of taking a shared machine's memory."""
    argv = [a if a != "64" else "100000" for a in _predict(cell_checkpoint, image, tmp_path / "out", "--labels-name", "p")]
    child = subprocess.run([sys.executable, "-m", "pdeseg", *map(str, argv)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_address_space(6 << 30))
    assert child.returncode == 0, child.stderr[-2000:]
    assert "tiles of 96 instead" in child.stderr


def _cut_short_ome_tiff(tmp_path: Path) -> Path:
    from pdeseg.data.phantoms.cells import make_cell_image

    grey = make_cell_image("round", np.random.default_rng(3), (256, 256))[0].astype(np.uint16)
    src = tmp_path / "in" / "cut.ome.tif"
    src.parent.mkdir()
    tifffile.imwrite(src, grey, tile=(64, 64), ome=True, metadata={"axes": "YX"}, compression="zlib")
    src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return src


def test_a_cut_short_ome_tiff_is_named(cell_checkpoint, tmp_path, caplog):
    src = _cut_short_ome_tiff(tmp_path)
    before = checksums(src.parent)
    code, errors = run(["predict", "--checkpoint", cell_checkpoint, "--input", src, "--output", tmp_path / "out",
                        "--no-progress", "--no-postprocess", "--tile", "64", "--halo", "32"], caplog)
    ours = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("pdeseg")]
    assert code == 2 and len(ours) == 1 and "cut.ome.tif" in ours[0] and "cut short" in ours[0], errors
    assert checksums(src.parent) == before and not list(tmp_path.rglob(".pdeseg-tiles-*"))


def test_a_cut_short_ome_tiff_gives_only_pdeseg_lines_on_the_console(cell_checkpoint, tmp_path):
    """tifffile's own ERROR records of the broken tag (logged while the tiles are opened) stay off
    the console: stderr holds pdeseg's records only, and one error line, naming the file."""
    src = _cut_short_ome_tiff(tmp_path)
    child = subprocess.run([sys.executable, "-m", "pdeseg", "predict", "--checkpoint", str(cell_checkpoint), "--input",
                            str(src), "--output", str(tmp_path / "out"), "--no-progress", "--no-postprocess", "--tile",
                            "64", "--halo", "32"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = child.stderr.strip().splitlines()
    assert child.returncode == 2, child.stderr
    assert all(re.match(r"\d\d:\d\d:\d\d [A-Z]+ pdeseg[.:]", line) for line in lines), child.stderr
    assert "tifffile" not in child.stderr and "Traceback" not in child.stderr, child.stderr
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1 and "cut.ome.tif" in errors[0] and "cut short" in errors[0], child.stderr


def test_export_takes_a_run_folder_as_predict_does(cell_checkpoint, tmp_path, caplog):
    run_dir = Path(cell_checkpoint).parent
    code, errors = run(["export", "--checkpoint", run_dir, "--format", "torchscript", "--out", tmp_path / "exp"], caplog)
    assert code == 0 and (tmp_path / "exp" / "model.pt").is_file(), errors
    (tmp_path / "empty").mkdir()
    refused_unchanged(["export", "--checkpoint", tmp_path / "empty", "--format", "torchscript", "--out",
                       tmp_path / "exp2"], caplog, tmp_path, "empty", "best.pt")


def test_library_logs_at_debug_gives_a_logger_back_only_when_the_last_block_ends():
    """Tiled reads run blocks in several threads at once: A enters, B enters, A ends, B ends."""
    from pdeseg.logs import library_logs_at_debug

    logger, own = logging.getLogger("pdeseg_test_lib"), logging.NullHandler()
    logger.addHandler(own)
    a, b = library_logs_at_debug("pdeseg_test_lib"), library_logs_at_debug("pdeseg_test_lib")
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert own not in logger.handlers and not logger.propagate  # B still runs
    b.__exit__(None, None, None)
    assert logger.handlers == [own] and logger.propagate
    logger.removeHandler(own)


def test_a_refused_dask_scheduler_leaves_dask_usable_in_the_process():
    """A distributed Client that failed to connect stayed dask's default scheduler, so every later
    dask compute in the process (here the next test's OME-Zarr writing) waited forever."""
    import threading

    import dask.array as da

    from pdeseg.inference.tiling import DaskRunner

    with pytest.raises(ConfigError, match="--dask-scheduler not an address"):
        DaskRunner(address="not an address")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(int(da.ones(10, chunks=5).sum().compute())), daemon=True)
    worker.start()
    worker.join(60)
    assert result == [10], "a dask compute after the refused scheduler did not finish within 60 s"


def test_a_refused_dask_scheduler_is_one_line_and_no_traceback_at_exit(cell_checkpoint, image, tmp_path):
    argv = _predict(cell_checkpoint, image, tmp_path / "out", "--labels-name", "p", "--dask-scheduler", "not an address")
    child = subprocess.run([sys.executable, "-m", "pdeseg", *map(str, argv)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == 2, child.stderr
    errors = [line for line in child.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "--dask-scheduler" in errors[0], child.stderr
    assert "Traceback" not in child.stderr and "Exception ignored" not in child.stderr, child.stderr
