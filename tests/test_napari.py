"""The napari plugin, headless (QT_QPA_PLATFORM=offscreen): the widget's Labels layer on a real
DSB image holds the same cells as ``pdeseg predict`` writes; a broken checkpoint and a layer of
the wrong dimensionality end in one napari error notification, not an exception.

Needs ``pip install "pdeseg[napari]"`` (napari, PyQt5, pytest-qt) and an X display with OpenGL
for napari's canvas (Xvfb is started here when it is installed and no display is set); skipped,
with the reason, where any of that is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari is not installed (pip install 'pdeseg[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install 'pdeseg[napari]')")

from conftest import shared_data  # noqa: E402

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_GL_PROBE = """
import numpy as np, napari
v = napari.Viewer(show=False)
v.add_image(np.zeros((8, 8)))
v.close()
"""


@pytest.fixture(scope="module", autouse=True)
def display():
    """An X display with OpenGL for napari's canvas: the one set, or an Xvfb started here."""
    proc = None
    if not os.environ.get("DISPLAY") and shutil.which("Xvfb"):
        number = 90 + os.getpid() % 100
        proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ["DISPLAY"] = f":{number}"
        time.sleep(1.0)
    probe = subprocess.run([sys.executable, "-c", _GL_PROBE], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        if proc is not None:
            proc.terminate()
        pytest.skip("napari's canvas needs OpenGL: no X display with GLX here (install Xvfb, or run under xvfb-run): "
                    + (probe.stderr.strip().splitlines() or ["?"])[-1])
    yield
    if proc is not None:
        # The Qt application made in this process stays connected to the display until the
        # process exits: stopping Xvfb now makes Xlib abort the interpreter at exit (exit code
        # 1 after every test passed). A detached watcher stops it once this process is gone.
        subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 0.2; done; kill {proc.pid}"],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        del os.environ["DISPLAY"]


@pytest.fixture
def errors():
    """Error notifications shown while the test runs."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen: list[str] = []

    def keep(notification):
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(notification.message)

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def _widget(viewer):
    from pdeseg.napari_plugin._widget import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="pdeseg")
    return widget


def _run_and_wait(widget, qtbot, timeout_ms=120_000):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=timeout_ms)  # re-enabled when done or failed
    qtbot.wait(50)


@pytest.mark.shared_data
def test_widget_gives_the_cells_pdeseg_predict_writes(make_napari_viewer, qtbot, cell_checkpoint, tmp_path, errors):
    import tifffile
    from PIL import Image

    from pdeseg.cli import main

    root = shared_data("dsb2018")
    image_id = next(line.split("\t")[0] for line in (root / "domains.tsv").read_text().splitlines()[1:]
                    if line.split("\t")[1] == "fluorescence")
    png = root / "stage1_train" / image_id / "images" / f"{image_id}.png"
    folder = tmp_path / "in" / "images"
    folder.mkdir(parents=True)
    shutil.copy(png, folder / png.name)
    assert main(["predict", "--checkpoint", str(cell_checkpoint), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    expected = tifffile.imread(tmp_path / "out" / f"{image_id}_instances.tif")

    viewer = make_napari_viewer()
    pixels = np.asarray(Image.open(png))
    viewer.add_image(pixels, name="dsb", rgb=True)
    widget = _widget(viewer)
    widget.checkpoint.setText(str(cell_checkpoint))
    widget.layer.setCurrentText("dsb")
    widget.probabilities.setChecked(True)
    _run_and_wait(widget, qtbot)
    assert not errors
    labels = viewer.layers["dsb cells"]
    assert labels.data.shape == expected.shape and expected.max() > 0
    np.testing.assert_array_equal(labels.data, expected)
    assert {"dsb P(interior)", "dsb P(boundary)"} <= {layer.name for layer in viewer.layers}
    assert widget.progress.value() == 100


def test_broken_checkpoint_and_wrong_layer_are_notifications(make_napari_viewer, qtbot, cell_checkpoint, tmp_path,
                                                              errors):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="plane")
    viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="hyper")
    widget = _widget(viewer)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    widget.checkpoint.setText(str(broken))
    widget.layer.setCurrentText("plane")
    _run_and_wait(widget, qtbot)
    assert len(errors) == 1 and errors[0].startswith("pdeseg: ") and "broken.pt" in errors[0] and "\n" not in errors[0]
    widget.checkpoint.setText(str(cell_checkpoint))
    widget.layer.setCurrentText("hyper")
    _run_and_wait(widget, qtbot)
    assert len(errors) == 2 and "layer 'hyper' is 4D" in errors[1] and "takes a 2D image" in errors[1]
    assert widget.run_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["plane", "hyper"]  # nothing added
